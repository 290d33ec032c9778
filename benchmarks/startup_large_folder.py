#!/usr/bin/env python
"""Does collection start-up grow with the corpus folder or with the tokens used? (issue 24)

    .venv/bin/python benchmarks/startup_large_folder.py                         # this checkout
    .venv/bin/python benchmarks/startup_large_folder.py --compare-source OLD/src  # and an older source tree

A folder holds 300 short documents (a.txt) and an 8 GiB sparse file after them (z-huge.txt, no disk
used); ``unmemorize collect --max-tokens 500`` on a tiny model needs only a.txt. The wall time of
the whole command (process start included) is measured once per source tree, one after the other.
Writes docs/results/benchmarks/results-startup.md and .json (a few seconds per run, plus the older
tree's hashing of the 8 GiB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from _report import RESULTS, command_line, machine, write_results  # noqa: E402


def timed_collect(source: Path, work: Path, label: str) -> dict:
    out = work / f"factors-{label}"
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "unmemorize", "collect", "--model", str(work / "llama"), "--data", str(work / "corpus"),
                             "--out", str(out), "--seq-len", "32", "--max-tokens", "500", "--no-progress"],
                            env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{label}: collect failed: {result.stderr[-1500:]}")
    return {"source": str(source), "seconds": round(seconds, 2)}


def _commit(source: Path) -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    return result.stdout.strip() or None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-source", help="Another source tree (its src/ folder) to time the same way, e.g. an older commit's.")
    args = parser.parse_args(argv)
    from unmemorize.tiny import save_tiny_lm, write_corpus

    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        work = Path(tmp)
        save_tiny_lm(work / "llama", "llama")
        write_corpus(work / "corpus" / "a.txt", documents=300)
        with open(work / "corpus" / "z-huge.txt", "wb") as huge:
            huge.truncate(8 << 30)
        runs = {"this checkout": timed_collect(ROOT / "src", work, "this")}
        if args.compare_source:
            runs["compared source"] = timed_collect(Path(args.compare_source).resolve(), work, "compared")
    lines = ["# Collection start-up with a large corpus folder", "", f"Command: `{command_line()}`", "",
             "A folder of 300 short documents plus an 8 GiB sparse file; `collect --max-tokens 500` on a tiny model needs only "
             "the documents. Wall time of the whole command, process start included:", "",
             "| source | seconds |", "|---|---|"]
    lines += [f"| {name} (`{run['source']}`) | {run['seconds']} |" for name, run in runs.items()]
    commits = {name: _commit(Path(run["source"])) for name, run in runs.items()}
    lines += ["", "Commits: " + ", ".join(f"{name} {commit}" for name, commit in commits.items())]
    write_results("results-startup", lines, {"command": command_line(), "machine": machine(), "runs": runs, "commits": commits})
    print(f"wrote {RESULTS / 'results-startup.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
