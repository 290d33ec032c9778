"""MkDocs hooks: the pages that are generated from the code at build time, so they never drift.

    index.md           README.md, with its links into docs/ made relative to the site
    reference/cli.md   ``unmemorize --help`` and every command's ``--help``, from the argparse parser
    reference/api.md   one mkdocstrings block per name in ``unmemorize.__all__``
    guides/architectures.md   the supported-architecture table (the zoo) and the OLMoE plan (results-plan.json)

Each generated page holds a marker comment that is replaced here; the build fails if a marker
is missing (a page renamed or edited by hand).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = "100"  # argparse wraps help at $COLUMNS: fixed so that the page does not depend on the terminal


def _import_unmemorize():
    source = str(ROOT / "src")
    if source not in sys.path:
        sys.path.insert(0, source)
    import unmemorize
    import unmemorize.cli

    return unmemorize, unmemorize.cli


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help().rstrip()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def cli_reference() -> str:
    """Markdown: the top-level help, then one section per command (and per sub-command)."""
    _, cli = _import_unmemorize()
    parser = cli.build_parser()
    parts = ["```text", _help(parser), "```", ""]
    for name, command in _subcommands(parser).items():
        parts += [f"## unmemorize {name}", "", f"Source: `src/unmemorize/commands/{name}.py`", "", "```text", _help(command), "```", ""]
        for sub_name, sub in _subcommands(command).items():
            parts += [f"### unmemorize {name} {sub_name}", "", "```text", _help(sub), "```", ""]
    return "\n".join(parts)


def api_reference() -> str:
    """Markdown: one ``::: unmemorize.NAME`` block per public name, in ``__all__`` order (``__version__`` as text)."""
    unmemorize, _ = _import_unmemorize()
    parts = []
    for name in sorted(unmemorize.__all__, key=str.lower):
        if name == "__version__":
            parts += ['<h2 id="unmemorize.__version__"><code>__version__</code></h2>', "", f"The package version, `{unmemorize.__version__}` (`unmemorize --version`).", ""]
        else:
            parts += [f"::: unmemorize.{name}", ""]
    return "\n".join(parts)


def readme_as_index() -> str:
    """README.md with ``docs/`` stripped from its relative links (the site's root is docs/)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


def architectures() -> str:
    """Markdown: the supported-architecture table: README's, which ``tests/test_docs.py`` checks is the zoo's
    (``unmemorize.testbed.zoo.supported_table()``; read here so a build does not build 28 models)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- zoo-table:[^\n]*-->\n(.*?)<!-- /zoo-table -->", readme, flags=re.S)
    if match is None:
        raise ValueError("README.md has no <!-- zoo-table --> block for docs/guides/architectures.md")
    return match.group(1).strip()


def olmoe_plan() -> str:
    """Markdown: the OLMoE-1B-7B rows of the committed plan benchmark (docs/results/benchmarks/results-plan.json)."""
    import json

    record = json.loads((ROOT / "docs" / "results" / "benchmarks" / "results-plan.json").read_text(encoding="utf-8"))
    rows = ["| targets | matrices | passes | factor files GiB | of which experts' GiB | accumulators GiB (largest pass) |",
            "|---|---|---|---|---|---|"]
    for key, entry in record["results"].items() if "results" in record else record.items():
        if key.startswith("OLMoE"):
            rows.append(f"| {key.split(' / ', 1)[1]} | {entry['modules']} | {entry['passes']} | {entry['factor_files_GiB']:.1f} | "
                        f"{entry['expert_factor_GiB']:.1f} | {entry['accumulators_GiB']:.1f} |")
    if len(rows) == 2:
        raise ValueError("docs/results/benchmarks/results-plan.json has no OLMoE rows: run benchmarks/plan_scale.py")
    return "\n".join(rows)


GENERATED = {
    "index.md": ("<!-- The home page is README.md", readme_as_index),
    "guides/architectures.md": ("<!-- architectures -->", architectures),
    "reference/cli.md": ("<!-- cli-reference -->", cli_reference),
    "reference/api.md": ("<!-- api-reference -->", api_reference),
}


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs hook signature
    entry = GENERATED.get(page.file.src_uri)
    if entry is None:
        return markdown
    marker, build = entry
    if marker not in markdown:
        raise ValueError(f"docs/{page.file.src_uri}: the marker {marker!r} that docs/hooks.py replaces is missing")
    if page.file.src_uri == "index.md":
        return build()
    if page.file.src_uri == "guides/architectures.md":
        markdown = markdown.replace("<!-- olmoe-plan -->", olmoe_plan())
    return markdown.replace(marker, build())
