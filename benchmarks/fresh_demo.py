"""A fresh clone's `make demo`, timed, and its numbers compared digit for digit with the committed seed-0 report.

    python benchmarks/fresh_demo.py [--reference docs/results/demo] [--out docs/results/benchmarks/results-fresh-demo.md]

Clones this repository into a temporary folder and runs the README's first command there (`make demo`: the venv, the
installs, the shipped testbed materialized into an empty cache -- UNMEMORIZE_CACHE points into the temporary folder --
and `unmemorize demo`), timing the whole. Then compares the clone's runs/demo with the reference folder:

* results.json: every value, recursively, must be equal (floats compared exactly, as JSON stores them), except wall
  times, provenance, and paths that name the clone (``IGNORED``);
* report.md: every number outside the wall-time table, in order.

Writes a Markdown summary with the timings, the comparison and the machine. Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

IGNORED = {"wall_seconds", "eval_seconds", "seconds", "train_seconds", "provenance", "out", "testbed", "source", "folder"}


def differences(a, b, path: str = "") -> list[str]:
    """Every place where two JSON values differ (keys in IGNORED skipped at any depth)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'the reference' if key in a else 'the fresh run'}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} vs {b!r}"]


def leaves(value) -> int:
    if isinstance(value, dict):
        return sum(leaves(v) for k, v in value.items() if k not in IGNORED)
    if isinstance(value, list):
        return sum(leaves(v) for v in value)
    return 1


def report_numbers(text: str) -> list[str]:
    """Every number of report.md before its wall-time table, as printed."""
    text = text.split("## Wall times")[0]
    return re.findall(r"-?\d+(?:\.\d+)?", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=str(ROOT / "docs" / "results" / "demo"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "benchmarks" / "results-fresh-demo.md"))
    args = parser.parse_args()
    from unmemorize.provenance import provenance

    reference = Path(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "UNMEMORIZE_CACHE": str(Path(tmp) / "cache")}
        env.pop("VIRTUAL_ENV", None)
        start = time.perf_counter()
        run = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"make demo failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        fresh = json.loads((clone / "runs" / "demo" / "results.json").read_text())
        fresh_report = (clone / "runs" / "demo" / "report.md").read_text()
    expected = json.loads((reference / "results.json").read_text())
    found = differences(expected, fresh)
    numbers, fresh_numbers = report_numbers((reference / "report.md").read_text()), report_numbers(fresh_report)
    report_diff = [f"#{i}: {a} vs {b}" for i, (a, b) in enumerate(zip(numbers, fresh_numbers)) if a != b]
    if len(numbers) != len(fresh_numbers):
        report_diff.append(f"{len(numbers)} vs {len(fresh_numbers)} numbers")
    walls = fresh.get("wall_seconds", {})
    record = provenance()
    lines = ["# A fresh clone's `make demo`", "",
             f"Command: `python benchmarks/fresh_demo.py --reference {reference.relative_to(ROOT) if reference.is_relative_to(ROOT) else reference}`"
             f" at commit {record['commit'][:12]} ({record['date']}); machine: {record['machine']['cpu']}, "
             f"{record['machine']['logical_cpus']} logical CPUs, torch threads {record['machine']['torch_threads']}. The clone starts "
             "with no .venv and an empty testbed cache; pip's download cache of this machine is warm (the wheels are not "
             "downloaded again), torch comes from local disk as on every machine here.", "",
             f"- `make demo` from the fresh clone, set-up included: **{seconds:.0f} s ({seconds / 60:.1f} min)**",
             f"- of which `unmemorize demo` stages: {sum(walls.values()):.0f} s "
             f"({', '.join(f'{k} {v:.1f}' for k, v in walls.items())})",
             f"- results.json against {reference.name}/results.json: {leaves(expected)} values compared, "
             f"**{len(found)} differ**" + (": " + "; ".join(found[:20]) if found else " (wall times, provenance and paths skipped)"),
             f"- report.md numbers before the wall-time table: {len(numbers)} compared, **{len(report_diff)} differ**"
             + (": " + "; ".join(report_diff[:20]) if report_diff else ""), ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(1 if found or report_diff else 0)


if __name__ == "__main__":
    main()
