#!/usr/bin/env python
"""Run the maintained benchmarks in order, each in its own process (each writes its own results file).

    .venv/bin/python benchmarks/run_all.py            # `make bench`: the core three (~3-6 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run of the core three (about a minute)
    .venv/bin/python benchmarks/run_all.py --all      # every maintained benchmark (about an hour on 2 idle cores)
    .venv/bin/python benchmarks/run_all.py --only collect_ideal,collect_peers [--quick]

The core three (the former contents of this script; their last combined run is
``docs/results/benchmarks/results.md`` and ``results.json``):

1. collection_overhead.py  K-FAC collection against a plain forward+backward pass
2. selection_speed.py      select_pairs / select_per_side at m=11008, n=4096
3. edit_per_module.py      eigh apart from selection + projection, up to (11008, 4096); its
                           float64 (11008, 4096) run must fit what is left of --budget-s

``--all`` adds the others of benchmarks/README.md in its order, except bsn_speed.py (it needs a
trained testbed). With ``--quick`` every benchmark writes its ``-quick`` results files and those
without a smoke mode (plan_scale.py, dry_run_accuracy.py) are skipped, so a smoke run never
overwrites full results. Results files: ``docs/results/benchmarks/`` (see each script's
docstring). Progress goes to stderr; a failed benchmark is reported and the next one runs; the
exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, full-run arguments, quick-run arguments or None when it has no smoke mode, in the core three)
BENCHMARKS = (
    ("collection_overhead", [], ["--quick"], True),
    ("selection_speed", [], ["--quick"], True),
    ("edit_per_module", [], ["--quick"], True),
    ("selection_under_load", [], ["--quick"], False),
    ("collect_ideal", [], ["--quick"], False),
    ("collect_peers", [], ["--quick"], False),
    ("collect_slice", [], ["--quick"], False),
    ("collect_gloo", [], ["--quick"], False),
    ("decompose_cache", [], ["--quick"], False),
    ("plan_scale", [], None, False),
    ("dry_run_accuracy", [], None, False),
    ("analysis_readouts", ["--big"], [], False),
)
ALIASES = {"collect": "collection_overhead", "select": "selection_speed", "edit": "edit_per_module"}  # the old --only names


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: every benchmark's quick mode (-quick results files)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every maintained benchmark, not only the core three")
    which.add_argument("--only", default=None,
                       help="comma-separated benchmarks to run, in the order above (script names without .py; "
                            "collect, select, edit name the core three)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="total runtime of the core three that the float64 (11008, 4096) edit must fit in (auto mode)")
    parser.add_argument("--big-float64", choices=("auto", "yes", "no"), default="auto",
                        help="edit_per_module.py: measure the (11008, 4096) edit in float64 too: auto = only if estimated "
                             "<= 180 s and within --budget-s")
    args = parser.parse_args(argv)
    names = [name for name, *_ in BENCHMARKS]
    if args.only is not None:
        wanted = {ALIASES.get(s.strip(), s.strip().removesuffix(".py")) for s in args.only.split(",") if s.strip()}
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    else:
        wanted = {name for name, _, _, core in BENCHMARKS if core or args.all}

    started = time.perf_counter()
    failed = []
    for name, full, quick, _ in BENCHMARKS:
        if name not in wanted:
            continue
        extra = quick if args.quick else full
        if extra is None:
            log(f"== {name}: skipped (no smoke mode; a quick run never overwrites its full results)")
            continue
        if name == "edit_per_module":  # the budget counts from the start of the whole run, as before the split
            extra = extra + ["--budget-s", f"{args.budget_s - (time.perf_counter() - started):.0f}", "--big-float64", args.big_float64]
        log(f"== {name}")
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra]).returncode
        log(f"== {name}: {'ok' if code == 0 else f'FAILED (exit status {code})'} in {time.perf_counter() - start:.0f} s")
        if code != 0:
            failed.append(name)
    log(f"all: {time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
