"""The package's shape is a claim too: no import circles, one home per command, stages in folders.

The import graph is read from the source with ``ast`` (every ``import`` and ``from ... import``,
inside functions too: a lazy import that dodges a cycle at run time still ties two modules
together). An edge goes to the module named (``from .edit.apply import X`` -> ``edit.apply``; ``from . import
sub`` -> the submodule ``sub``; ``from .. import __version__`` -> the package); the implicit import
of a parent package's ``__init__`` is not an edge, as in import-linter and pydeps.
"""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

import pytest

import unmemorize
from unmemorize.cli import build_parser
from unmemorize.commands import COMMANDS

PACKAGE = Path(unmemorize.__file__).parent


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is_package)} for every .py under ``root`` (a package folder)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: modules of the same package it imports}, from the source alone."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                # a submodule imported by name is the edge; any other name ties to the module it comes from
                named = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in named if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and graph["unmemorize.cli"]  # the walk saw the package
    assert cycles(graph) == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_cycle_check_finds_a_lazy_import_cycle(tmp_path):
    """Negative control: a cycle hidden in a function body (it would import fine at run time) is found."""
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import helper\n",
        "pkg/b.py": "def helper():\n    from .c import thing\n    return thing\n",
        "pkg/c.py": "def thing():\n    from . import a\n",
        "pkg/d.py": "from .a import helper\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from ..d import helper\n",
    })
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.sub.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_every_command_lives_in_commands_by_one_rule():
    """``unmemorize NAME`` is ``unmemorize.commands.NAME`` with ``add_parser`` and ``run``, for every
    subcommand the parser has (read from the parser, not from a list)."""
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = list(actions[0].choices)
    assert names == list(COMMANDS) and len(names) >= 11
    for name in names:
        module = importlib.import_module(f"unmemorize.commands.{name}")
        assert callable(module.add_parser) and callable(module.run), name
        probe = argparse.ArgumentParser().add_subparsers()
        assert module.add_parser(probe) is probe.choices[name]  # it registers exactly its own name


def test_no_command_is_registered_outside_commands():
    """No module outside ``commands/`` and ``cli.py`` builds subcommands or a parser of its own."""
    offenders = []
    for name, (path, _) in module_files(PACKAGE).items():
        if name.startswith("unmemorize.commands") or name == "unmemorize.cli":
            continue
        text = path.read_text(encoding="utf-8")
        if "add_subparsers(" in text or ".add_parser(" in text or "ArgumentParser(" in text:
            offenders.append(name)
    assert offenders == []


def test_the_stages_are_folders_and_the_root_holds_only_cross_cutting_modules():
    stages = {"curvature", "basis", "edit", "evaluate", "analysis", "baselines", "testbed", "vision", "commands"}
    assert stages <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    root_modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert root_modules == {"__init__", "__main__", "_atomic", "_timing", "_version", "cli", "corpus", "data", "errors", "jsonio", "matrices",
                            "models", "paths", "provenance", "targets", "tiny"}


@pytest.mark.parametrize("name", sorted(unmemorize.__all__))
def test_every_public_name_is_importable_from_the_package(name):
    assert getattr(unmemorize, name) is not None
