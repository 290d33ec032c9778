#!/usr/bin/env python
"""How long does pair selection take at Llama-7B's MLP shape, and does it keep what a brute-force sort keeps?

    .venv/bin/python benchmarks/selection_speed.py            # full run (~20 s on 2 cores)
    .venv/bin/python benchmarks/selection_speed.py --quick    # smoke run (~10 s, no brute force)

Writes ``docs/results/benchmarks/results-selection-speed.md`` and ``.json``
(``results-selection-speed-quick.*`` with ``--quick``); the Markdown is printed on stdout too,
progress goes to stderr. Part 2 of the former ``benchmarks/run_all.py`` (its last combined run:
``docs/results/benchmarks/results.md``, "Selection").

``select_pairs`` / ``select_per_side`` at m=11008, n=4096 (45M pairs; Llama-7B's MLP) on decaying
spectra, rho in {0.6, 0.9, 0.99}, median of several runs; in the full run also a brute-force
reference (products, full argsort, cumsum) timed once per spectrum, and its kept count.
(benchmarks/selection_under_load.py asks the same at both 7B orientations with the CPUs busy.)

torch's thread count is left at its default.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from _common import fmt_s, log, median_time, parser_for, run_benchmark, table  # noqa: E402

from unmemorize.edit import select_pairs, select_per_side  # noqa: E402

STEM = "results-selection-speed"
BIG_SHAPE = (11008, 4096)
SELECT_RHOS = (0.6, 0.9, 0.99)


def spectra(m: int, n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "uniform^4 x uniform^6": (np.sort(rng.random(m) ** 4)[::-1].copy(), np.sort(rng.random(n) ** 6)[::-1].copy()),
        "power law i^-1.2 x j^-1.5": (np.arange(1, m + 1, dtype=np.float64) ** -1.2, np.arange(1, n + 1, dtype=np.float64) ** -1.5),
    }


def brute_force(lam: np.ndarray, mu: np.ndarray, rhos) -> tuple[float, dict[float, int]]:
    """Reference: all m*n products, full argsort (descending), cumsum; kept count per rho."""
    start = time.perf_counter()
    products = np.multiply.outer(lam, mu).ravel()
    order = np.argsort(products)[::-1]
    cumulative = np.cumsum(products[order])
    total = float(lam.sum() * mu.sum())
    counts = {rho: int(np.searchsorted(cumulative, rho * total, side="left")) + 1 for rho in rhos}
    seconds = time.perf_counter() - start
    del products, order, cumulative
    gc.collect()
    return seconds, counts


def bench_selection(quick: bool) -> dict:
    m, n = BIG_SHAPE
    repeats = 3 if quick else 5
    rows = []
    references = []
    for spectrum, (lam, mu) in spectra(m, n).items():
        log(f"selection: {spectrum}, m={m}, n={n}")
        select_pairs(lam, mu, 0.9)  # warm-up
        for rho in SELECT_RHOS:
            for mode, fn in (("pairs", select_pairs), ("per-side", select_per_side)):
                med, times, sel = median_time(lambda: fn(lam, mu, rho), repeats)
                rows.append({
                    "spectrum": spectrum, "mode": mode, "rho": rho, "median_s": med, "times_s": times,
                    "kept_pairs": sel.kept_pairs, "kept_fraction": sel.kept_fraction,
                    "kept_mass_fraction": sel.kept_mass_fraction,
                })
        if not quick:
            log(f"  brute force (45M-product argsort) for {spectrum}")
            seconds, counts = brute_force(lam, mu, SELECT_RHOS)
            pairs = {r["rho"]: r for r in rows if r["spectrum"] == spectrum and r["mode"] == "pairs"}
            references.append({
                "spectrum": spectrum,
                "seconds": seconds,
                "what": "outer product + np.argsort + cumsum + searchsorted for all rhos (timed once)",
                "kept_pairs": {str(r): c for r, c in counts.items()},
                "kept_pairs_difference_vs_select_pairs": {str(r): c - pairs[r]["kept_pairs"] for r, c in counts.items()},
                "speedup_vs_select_pairs_median": {str(r): seconds / pairs[r]["median_s"] for r in SELECT_RHOS},
            })
    return {"m": m, "n": n, "pairs": m * n, "repeats": repeats, "rows": rows, "brute_force": references}


def markdown(s: dict) -> list[str]:
    out = []
    out.append(f"## Selection at m={s['m']}, n={s['n']} ({s['pairs'] / 1e6:.0f}M pairs)\n\nMedian of {s['repeats']} runs.\n")
    out.append(table(["spectrum", "mode", "rho", "median", "kept pairs", "kept fraction", "kept mass"],
                     [[r["spectrum"], r["mode"], r["rho"], fmt_s(r["median_s"]), f"{r['kept_pairs']:,}",
                       f"{r['kept_fraction']:.3g}", f"{r['kept_mass_fraction']:.4f}"] for r in s["rows"]]))
    if s["brute_force"]:
        out.append("\nBrute-force reference (outer product, full argsort, cumsum; timed once):\n")
        out.append(table(["spectrum", "seconds", "speed-up of select_pairs (rho 0.6/0.9/0.99)", "kept-count diff"],
                         [[b["spectrum"], f"{b['seconds']:.2f}",
                           " / ".join(f"{v:,.0f}x" for v in b["speedup_vs_select_pairs_median"].values()),
                           " / ".join(str(v) for v in b["kept_pairs_difference_vs_select_pairs"].values())]
                          for b in s["brute_force"]]))
    out.append("")
    return out


def main(argv=None) -> int:
    args = parser_for(__doc__, STEM).parse_args(argv)
    return run_benchmark("selection", lambda started: bench_selection(args.quick), quick=args.quick, out=args.out, stem=STEM,
                         title="unmemorize benchmarks: selection", section_markdown=markdown)


if __name__ == "__main__":
    raise SystemExit(main())
