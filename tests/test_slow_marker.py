"""The ``slow`` marker: skipped by default with a reason that says how to run it, run with UNMEMORIZE_SLOW=1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def marked_suite(pytester):
    """A copy of our conftest and pytest settings, and one slow and one quick test."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    pytester.makeini("[pytest]\nmarkers =\n" + "".join(f"    {marker}\n" for marker in markers))
    pytester.makepyfile(test_pair="""
        import pytest

        @pytest.mark.slow
        def test_long():
            pass

        def test_short():
            pass
    """)
    return pytester


@pytest.mark.parametrize("value", [None, "0"])
def test_slow_tests_are_skipped_by_default_and_say_how_to_run_them(marked_suite, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("UNMEMORIZE_SLOW", raising=False)
    else:
        monkeypatch.setenv("UNMEMORIZE_SLOW", value)
    result = marked_suite.runpytest_subprocess("-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*test_pair.py:*: slow test: run it with UNMEMORIZE_SLOW=1 (make test-all)*"])


def test_slow_tests_run_with_unmemorize_slow(marked_suite, monkeypatch):
    monkeypatch.setenv("UNMEMORIZE_SLOW", "1")
    result = marked_suite.runpytest_subprocess("--strict-markers")  # strict: the marker must be registered
    result.assert_outcomes(passed=2)
