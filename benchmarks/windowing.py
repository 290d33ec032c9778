#!/usr/bin/env python
"""Does cutting a long document into windows grow with its length, or with its square? (issue 23)

    .venv/bin/python benchmarks/windowing.py                          # this checkout
    .venv/bin/python benchmarks/windowing.py --compare-source OLD/src  # and an older source tree, in a child process

One document of 250k, 500k and 1M tokens (a book stored as one row; the word-level tokenizer of
``unmemorize.tiny`` gives one token per word), cut into 128-token windows by ``data.iter_windows``
with no budget. Time of the whole read (tokenizing included), best of 2. Linear: doubling the length
doubles the time. Writes docs/results/benchmarks/results-windowing.md and .json (a few seconds; the
older tree's quadratic cut takes longer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from _report import write_results  # noqa: E402

LENGTHS = (250_000, 500_000, 1_000_000)
MEASURE = """
import json, sys, time
from pathlib import Path
from unmemorize.data import iter_windows
from unmemorize.tiny import make_tokenizer
tokenizer = make_tokenizer()
seconds = {}
for path in sys.argv[1:]:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        windows = sum(1 for _ in iter_windows([Path(path)], tokenizer, 128))
        best = min(best, time.perf_counter() - start)
    seconds[path] = [windows, best]
print(json.dumps(seconds))
"""


def measure(source: Path, files: list[Path]) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, *map(str, files)], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-source", type=Path, help="Another source tree (its src/ folder) to time the same way.")
    parser.add_argument("--compare-label", help="How the table names it (default: its path), e.g. 'commit 645c5f8'.")
    args = parser.parse_args()
    from unmemorize.tiny import WORDS

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for length in LENGTHS:
            path = Path(folder) / f"book-{length}.txt"
            path.write_text(" ".join(rng.choice(WORDS) for _ in range(length)) + "\n")
            files.append(path)
        trees = {"this checkout": ROOT / "src", **({args.compare_label or str(args.compare_source): args.compare_source} if args.compare_source else {})}
        timings = {name: measure(source, files) for name, source in trees.items()}
    rows, record = [], {}
    for name, seconds in timings.items():
        per_length = {length: seconds[str(Path(folder) / f"book-{length}.txt")] for length in LENGTHS}
        record[name] = {str(length): {"windows": w, "seconds": round(s, 3)} for length, (w, s) in per_length.items()}
        cells = [f"{per_length[length][1]:.2f}" for length in LENGTHS]
        growth = per_length[LENGTHS[-1]][1] / per_length[LENGTHS[0]][1]
        rows.append(f"| {name} | {' | '.join(cells)} | {growth:.1f}x |")
    lines = ["# Windowing a long document (issue 23)", "",
             "Command: see `provenance.command` in results-windowing.json. One document as one row, 128-token windows, "
             "no budget, tokenizing included; best of 2 (s). Linear growth: 4x from 250k to 1M tokens.", "",
             "| source | " + " | ".join(f"{n:,} tokens" for n in LENGTHS) + " | 1M / 250k |", "|---|---|---|---|---|", *rows, ""]
    write_results("results-windowing", lines, record)


if __name__ == "__main__":
    main()
