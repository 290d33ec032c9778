#!/usr/bin/env python
"""How long does exact pair selection take at 7B shapes, on an idle CPU and with both cores busy, before and after the fix?

    .venv/bin/python benchmarks/selection_under_load.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/selection_under_load.py --quick    # ~30 s, no brute-force oracle

Before: ``select_pairs`` as of ``--before-rev`` (default 66bd855, the last commit whose
``_Staircase.mass`` reduced with ``np.dot``), loaded from ``git show`` into a temporary module.
After: the working tree's ``unmemorize.edit.selection`` (``np.add.reduce``: numpy's pairwise sum).

Load: a child process running a 1024 x 1024 float32 matmul loop in torch with 2 threads (both
cores), started before and stopped after the loaded timings. Spectra: m x n = 11008 x 4096
(G x A of gate/up_proj of a 7B Llama) and 4096 x 11008 (down_proj), two decays each, rho in
{0.6, 0.9, 0.99}; median of ``--repeats`` calls. Also checked: before and after keep the same
pairs, and (full run) both equal a brute-force stable argsort of all 45M products.

Writes the ``selection`` section of docs/results/benchmarks/results-collect.md and key ``selection``
of docs/results/benchmarks/results-collect.json (``results-collect-quick.*`` with ``--quick``),
starting with the command that produced it. (benchmarks/selection_speed.py times the same
functions on an idle CPU against a brute-force reference.)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from _report import command_line, foreign_load, log, machine, percent, update  # noqa: E402
from unmemorize.edit import selection as after_module  # noqa: E402

SHAPES = ((11008, 4096), (4096, 11008))
RHOS = (0.6, 0.9, 0.99)
LOAD_SCRIPT = """
import torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def load_before(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:src/unmemorize/edit/selection.py"], cwd=HERE.parent,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "selection_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("selection_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["selection_before"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def spectra(m: int, n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "uniform^4 x uniform^6": (np.sort(rng.random(m) ** 4)[::-1].copy(), np.sort(rng.random(n) ** 6)[::-1].copy()),
        "power law i^-1.2 x j^-1.5": (np.arange(1, m + 1, dtype=np.float64) ** -1.2, np.arange(1, n + 1, dtype=np.float64) ** -1.5),
    }


def median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def brute_force_counts(lam: np.ndarray, mu: np.ndarray, rhos) -> dict[float, np.ndarray]:
    """Row counts of the test oracle: stable descending argsort of all products (row-major ties), cumsum."""
    products = np.multiply.outer(lam, mu).ravel()
    order = np.argsort(-products, kind="stable")
    cumulative = np.cumsum(products[order])
    total = lam.sum() * mu.sum()
    out = {}
    for rho in rhos:
        count = min(int(np.searchsorted(cumulative, rho * total, side="left")) + 1, products.size)
        out[rho] = np.bincount(order[:count] // len(mu), minlength=len(lam))
    return out


def blas_threads() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, rho 0.9 only, no brute-force oracle")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before-rev", default="66bd855")
    args = parser.parse_args()
    rhos = (0.9,) if args.quick else RHOS
    repeats = 3 if args.quick else args.repeats
    before = load_before(args.before_rev)
    versions = {"before (np.dot)": before.select_pairs, "after (np.add.reduce)": after_module.select_pairs}
    idle = foreign_load()
    log(f"foreign load before start: {idle:.0%}" if idle is not None else "foreign load unknown")

    cases = [(shape, name, lam, mu) for shape in SHAPES for name, (lam, mu) in spectra(*shape).items()]
    rows, agreement = [], []
    for condition in ("idle", "loaded"):
        load = None
        if condition == "loaded":
            load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT])
            time.sleep(3.0)  # let the load reach its matmul loop
        try:
            for shape, name, lam, mu in cases:
                for version, select in versions.items():
                    select(lam, mu, 0.5)  # warm-up
                    for rho in rhos:
                        median, times = median_seconds(lambda: select(lam, mu, rho), repeats)
                        rows.append({"condition": condition, "shape": list(shape), "spectrum": name, "version": version,
                                     "rho": rho, "median_s": median, "times_s": times})
                        log(f"{condition} {shape} {name} {version} rho={rho}: {median * 1e3:.1f} ms")
        finally:
            if load is not None:
                load.terminate()
                load.wait()

    log("agreement: before vs after" + ("" if args.quick else " vs brute force (45M-product argsort)"))
    for shape, name, lam, mu in cases:
        oracle = {} if args.quick else brute_force_counts(lam, mu, rhos)
        for rho in rhos:
            old, new = before.select_pairs(lam, mu, rho), after_module.select_pairs(lam, mu, rho)
            entry = {"shape": list(shape), "spectrum": name, "rho": rho, "kept_pairs": new.kept_pairs,
                     "same_pairs_before_after": bool(np.array_equal(old.row_counts, new.row_counts)),
                     "kept_mass_relative_difference": abs(old.kept_mass - new.kept_mass) / new.kept_mass}
            if oracle:
                entry["equal_to_brute_force"] = bool(np.array_equal(oracle[rho], new.row_counts))
            agreement.append(entry)

    data = {"command": command_line(), "machine": machine(), "blas": blas_threads(), "foreign_load_at_start": idle,
            "repeats": repeats, "load": "child process: torch 2 threads, 1024x1024 float32 matmul + tanh loop",
            "before_rev": args.before_rev, "rows": rows, "agreement": agreement}
    update("selection", markdown(data, rhos), data, args.quick)


def markdown(data: dict, rhos) -> str:
    blas = ", ".join("{internal_api} {version} ({num_threads} threads)".format(**b) for b in data["blas"])
    lines = ["## Pair selection under load (`select_pairs`, 7B shapes)", "", f"Command: `{data['command']}`", "",
             f"Median of {data['repeats']} calls per cell, in ms. Load: {data['load']}. "
             f"Before = `select_pairs` at {data['before_rev']} (`np.dot` in the threshold search); "
             "after = `np.add.reduce` (numpy's single-threaded pairwise sum). "
             f"BLAS: {blas or 'unknown'}.",
             "", "| shape (m x n) | spectrum | rho | before, idle | before, loaded | after, idle | after, loaded |", "|---|---|---|---|---|---|---|"]
    cell = {(tuple(r["shape"]), r["spectrum"], r["rho"], r["version"].split()[0], r["condition"]): r["median_s"] for r in data["rows"]}
    keys = []
    for r in data["rows"]:
        key = (tuple(r["shape"]), r["spectrum"], r["rho"])
        if key not in keys:
            keys.append(key)
    for shape, spectrum, rho in keys:
        values = [cell.get((shape, spectrum, rho, v, c)) for v in ("before", "after") for c in ("idle", "loaded")]
        lines.append(f"| {shape[0]} x {shape[1]} | {spectrum} | {rho} | " + " | ".join(f"{v * 1e3:.1f}" for v in values) + " |")
    worst = {(v, c): max(r["median_s"] for r in data["rows"] if r["version"].startswith(v) and r["condition"] == c)
             for v in ("before", "after") for c in ("idle", "loaded")}
    lines += ["", "Worst median: " + ", ".join(f"{v} {c} {s * 1e3:.1f} ms" for (v, c), s in worst.items()) + ".", ""]
    same = sum(a["same_pairs_before_after"] for a in data["agreement"])
    mass = max(a["kept_mass_relative_difference"] for a in data["agreement"])
    lines.append(f"Same kept pairs before and after: {same} of {len(data['agreement'])} cases; "
                 f"largest relative kept-mass difference {mass:.1e}.")
    if any("equal_to_brute_force" in a for a in data["agreement"]):
        exact = sum(a.get("equal_to_brute_force", False) for a in data["agreement"])
        lines.append(f"Equal to the brute-force oracle (stable argsort of all m*n products, cumsum; row-major ties): "
                     f"{exact} of {len(data['agreement'])} cases.")
    load = data["foreign_load_at_start"]
    lines.append(f"Other processes' CPU use at start: {percent(load)} (should be ~0).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
