"""What made a results file: the code's commit, the package versions, the machine and the command line.

``provenance()`` is recorded in every results.json the experiments write (``demo``, ``compare``,
the benchmarks), so a number can be traced to the code and machine that produced it. The commit is
read with ``git`` from the source tree the package runs from (None for an installed wheel, whose
version stands in); ``uncommitted_changes`` says whether that tree differed from the commit.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=SOURCE, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again (``unmemorize ...`` rather than a full path to the entry point)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name == "unmemorize":
        argv[0] = "unmemorize"
    return shlex.join(argv)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def provenance(command: str | None = None) -> dict:
    """commit, uncommitted_changes, versions, machine, command and date (see module docstring)."""
    import torch
    import transformers

    from ._version import __version__

    commit = _git("rev-parse", "HEAD") or None
    return {
        "commit": commit,
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", ".")) if commit else None,
        "versions": {"unmemorize": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "command": command or command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
