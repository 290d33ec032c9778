"""Writes docs/results/demo-moe/report.md from dense/results.json and moe/results.json (run from the repository root)."""
from pathlib import Path
from unmemorize.testbed.report import write_side_by_side_report
root = Path("docs/results/demo-moe")
command = ("`unmemorize demo --out dense` (commit 74aa871) and `unmemorize demo --experts 4 --out moe` (commit 645c5f8), "
           "seed 0, each training its testbed from scratch on this 2-core Intel Xeon (torch 2.13.0+cpu, transformers 5.25.0; "
           "dense 1,397 s in all, of which 1,271 s training; MoE 1,655 s, of which 1,499 s training), then "
           "`.venv/bin/python docs/results/demo-moe/make_report.py`")
write_side_by_side_report({"dense": root / "dense", "MoE (4 experts, top-2)": root / "moe"}, root, command)
