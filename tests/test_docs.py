"""The documentation site builds with ``mkdocs build --strict`` (broken links, broken anchors, pages
missing from the nav fail), its API page renders every public name, its CLI page is the parser's
own help, and the README stays a front door whose every dropped section is one click away."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import unmemorize
from unmemorize.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")
pytestmark = pytest.mark.skipif(not MKDOCS.is_file(), reason="mkdocs is not installed (pip install '.[docs]'; make setup does)")


def build(source: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(source / "mkdocs.yml"), "--site-dir", str(out)],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT, out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_the_site_builds_strictly_and_renders_every_public_name(site):
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in unmemorize.__all__ if f'id="unmemorize.{name}"' not in api]
    assert missing == []
    assert len(unmemorize.__all__) >= 20


def test_the_cli_page_is_the_parsers_help(site):
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, command in commands.items():
        assert f"unmemorize {name}" in page
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in page, (name, flag)


def test_a_broken_link_fails_the_build(tmp_path):
    """Negative control: the same site with one link pointing nowhere does not build."""
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    shutil.copytree(ROOT / "docs", copy / "docs")
    (copy / "src").symlink_to(ROOT / "src")
    guide = copy / "docs" / "guides" / "layout.md"
    guide.write_text(guide.read_text() + "\nSee [a page that does not exist](nowhere.md).\n")
    result = build(copy, tmp_path / "broken")
    assert result.returncode != 0 and "nowhere.md" in result.stderr


def test_the_readme_is_a_front_door_and_every_guide_is_one_click_away():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    first = readme.splitlines()[:6]  # the title, a blank line, then the two commands in one block
    assert first[2] == "```bash" and first[3].startswith("make demo ") and first[4].startswith("make test ") and first[5] == "```"
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    guides = {f"docs/guides/{p.name}" for p in (ROOT / "docs" / "guides").glob("*.md")}
    assert guides <= linked, sorted(guides - linked)
    assert {"docs/reference/cli.md", "docs/reference/api.md"} <= linked
    for target in linked:
        assert (ROOT / target).is_file(), target


def test_the_readme_architecture_table_is_the_zoos():
    """The README's table is generated from the zoo (the list the zoo test runs); regenerate it with
    ``python -c "from unmemorize.testbed.zoo import supported_table; print(supported_table())"``."""
    from unmemorize.testbed.zoo import FAMILIES, supported_table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- zoo-table:[^\n]*-->\n(.*?)<!-- /zoo-table -->", readme, flags=re.S).group(1).strip()
    assert table == supported_table()
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == list(FAMILIES)
