"""Rewrites the combined report.md and results.json of multi-seed demo folders (language, quotes world or vision) from their
seed-<k>/results.json (no model runs; the per-seed files are untouched), so that their cross-seed cells follow the
current statistics (``intervals.over_seeds``: the mean over seeds, its 95% t interval, each seed's value; paired t
tests over seeds). From the repository root:

    .venv/bin/python docs/results/remake_seed_reports.py docs/results/demo-v5-3seeds docs/results/demo-v5-3seeds-general \\
        docs/results/demo-vision docs/results/demo-vision-fashion

Each rewritten results.json of a language demo records this command in its provenance.
"""

import sys
from dataclasses import fields
from pathlib import Path

from unmemorize.jsonio import strict_loads


def config_of(cls, saved: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: (",".join(map(str, v)) if k == "seeds" and isinstance(v, list) else v) for k, v in saved.items() if k in names})


for folder in map(Path, sys.argv[1:]):
    combined = strict_loads((folder / "results.json").read_text())
    per_seed = {int(p.name.split("-")[1]): strict_loads((p / "results.json").read_text()) for p in sorted(folder.glob("seed-*"))}
    if "counts" in combined.get("summary", {}):  # a quotes-world demo
        from unmemorize.testbed.quotes.demo import QuotesDemoConfig
        from unmemorize.testbed.quotes.report import write_seeds_report as write_quotes_seeds_report

        write_quotes_seeds_report(per_seed, folder, config_of(QuotesDemoConfig, combined["config"]))
    elif "aggregate" in combined:  # a vision demo
        from unmemorize.vision.demo import VisionDemoConfig
        from unmemorize.vision.report import write_combined_report

        write_combined_report(config_of(VisionDemoConfig, combined["config"]), per_seed, folder)
    else:
        from unmemorize.testbed.demo import DemoConfig
        from unmemorize.testbed.report import write_seeds_report

        write_seeds_report(per_seed, folder, config_of(DemoConfig, combined["config"]))
