"""A package users can install: ``python -m build`` makes a wheel that installs into a clean venv and
runs ``unmemorize --version``, ``--help`` and the quick demo from outside the source tree.

The quick test builds the wheel from a copy of the sources (the checkout is never written to),
installs it with ``--no-deps`` into a new venv that sees the test venv's dependencies through a
``.pth`` line (so torch is not installed twice), and runs everything from an empty folder; the
package must be the installed one, never ``src/``. ``make test-all`` adds the slow variant: the
same wheel into a venv with nothing but what pip installs for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import unmemorize

ROOT = Path(__file__).resolve().parents[1]


def run(argv, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**clean_env, "OMP_NUM_THREADS": "2", **(env or {})})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the 'build' package is not installed (make setup installs it)")
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    result = run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, source], cwd=source)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("unmemorize-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_holds_every_module_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "unmemorize").rglob("*.py")}
    assert sources and sources <= names, sorted(sources - names)
    shipped = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "unmemorize" / "testbed" / "shipped").rglob("*")
               if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)  # the reported testbeds travel with the package
    assert wheel.name.startswith(f"unmemorize-{unmemorize.__version__}-")


def clean_venv(root: Path, wheel: Path, share_dependencies: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, timeout=120)
    python = root / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    if share_dependencies:  # torch & co. from the test venv; its editable unmemorize is not seen (nested .pth files are not read)
        (site / "test-venv-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel]
    else:
        import torch

        torch_pin = f"torch=={torch.__version__.split('+')[0]}"
        install = [sys.executable, "-m", "pip", "--python", python, "install", "-q", str(wheel), torch_pin]
    result = run(install, cwd=root, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "bin"


def check_installed_package(bin_dir: Path, work: Path, cache: Path | None = None) -> None:
    """The installed copy runs from outside the source tree; its quick demo trains the testbed into ``cache``
    (default: a fresh one) or reuses the session's (the installed code and the source have one cache key)."""
    located = run([bin_dir / "python", "-c", "import unmemorize; print(unmemorize.__file__)"], cwd=work)
    assert located.returncode == 0, located.stderr[-2000:]
    assert Path(located.stdout.strip()).is_relative_to(bin_dir.parent), located.stdout  # the wheel's copy, not src/

    version = run([bin_dir / "unmemorize", "--version"], cwd=work)
    assert (version.returncode, version.stdout.strip()) == (0, f"unmemorize {unmemorize.__version__}")
    top = run([bin_dir / "unmemorize", "--help"], cwd=work)
    assert top.returncode == 0 and "collect" in top.stdout and "decompose" in top.stdout

    cache = cache or work / "cache"
    demo = run([bin_dir / "unmemorize", "demo", "--quick", "--out", work / "demo"], cwd=work, env={"UNMEMORIZE_CACHE": str(cache)})
    assert demo.returncode == 0, demo.stderr[-3000:]
    results = json.loads((work / "demo" / "results.json").read_text())
    assert {"baseline", "kfac", "svd", "random"} <= set(results["methods"])
    assert (work / "demo" / "report.md").is_file() and any(cache.iterdir())


def test_the_wheel_installs_into_a_clean_venv_and_runs_the_quick_demo_outside_the_source_tree(wheel, tmp_path, shared_testbed_cache):
    bin_dir = clean_venv(tmp_path / "venv", wheel, share_dependencies=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    check_installed_package(bin_dir, work, shared_testbed_cache)  # the slow variant below trains from scratch


@pytest.mark.slow
def test_the_wheel_installs_with_its_dependencies_from_the_package_index(wheel, tmp_path):
    bin_dir = clean_venv(tmp_path / "venv", wheel, share_dependencies=False)
    work = tmp_path / "elsewhere"
    work.mkdir()
    check_installed_package(bin_dir, work)
