#!/usr/bin/env python
"""How long does one module's edit take, eigendecomposition apart from selection + projection, up to Llama-7B's MLP shape?

    .venv/bin/python benchmarks/edit_per_module.py            # full run (~2.5 min on 2 cores; ~6 with the float64 (11008, 4096) run)
    .venv/bin/python benchmarks/edit_per_module.py --quick    # smoke run (~20 s, no (11008, 4096))

Writes ``docs/results/benchmarks/results-edit-per-module.md`` and ``.json``
(``results-edit-per-module-quick.*`` with ``--quick``); the Markdown is printed on stdout too,
progress goes to stderr. Part 3 of the former ``benchmarks/run_all.py`` (its last combined run:
``docs/results/benchmarks/results.md``, "Edit per module").

``decompose_factors`` (eigh) timed apart from ``apply_edit(bases=...)`` (selection + projection)
on one nn.Linear with random symmetric PSD factors, float32 and float64, at (2048, 512) and
(4096, 1024), median of 3. The largest shape (11008, 4096) runs only in the full run: float32
always, float64 only if its time, extrapolated from the (4096, 1024) runs and the (11008, 4096)
float32 run, is under 3 min and fits the total budget (--budget-s, 6 min, counted from this
script's start; run_all.py passes what is left of it after the benchmarks before).

torch's thread count is left at its default.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _common import fmt_s, log, parser_for, random_psd, run_benchmark, table, timed  # noqa: E402
from torch import nn  # noqa: E402

from unmemorize.basis import decompose_factors  # noqa: E402
from unmemorize.curvature import KFACFactors  # noqa: E402
from unmemorize.edit import EditConfig, apply_edit  # noqa: E402

STEM = "results-edit-per-module"
BIG_SHAPE = (11008, 4096)
SMALL_SHAPES = ((2048, 512), (4096, 1024))
EDIT_RHO = 0.9
FLOAT64_BIG_LIMIT_S = 180.0


def projection_gflop(m: int, n: int) -> float:
    """U_G^T W U_A and U_G C U_A^T: 2 * 2 (m^2 n + m n^2) flops."""
    return 4.0 * (m * m * n + m * n * n) / 1e9


def edit_once(shape: tuple[int, int], dtype: str, repeats: int, seed: int = 0) -> dict:
    d_out, d_in = shape
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    linear = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        linear.weight.normal_(0.0, d_in**-0.5, generator=generator)
    model = nn.Sequential(OrderedDict(proj=linear))
    factors = KFACFactors(activation={"proj": random_psd(d_in, generator)}, gradient={"proj": random_psd(d_out, generator)},
                          num_positions=1)
    setup = time.perf_counter() - start
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    config = EditConfig(method="kfac", selection="pairs", compute_dtype=dtype, eigh_dtype=dtype)
    eigh_times, edit_times, module_times, stats = [], [], [], None
    for _ in range(repeats):
        gc.collect()
        seconds, bases = timed(decompose_factors, factors, torch_dtype)
        eigh_times.append(seconds)
        gc.collect()
        seconds, edit = timed(apply_edit, model, {"proj": EDIT_RHO}, None, config, bases)
        edit_times.append(seconds)
        stats = edit.modules["proj"]
        module_times.append(stats.seconds)
        edit.restore()
        del bases, edit
    eigh_s, edit_s = statistics.median(eigh_times), statistics.median(edit_times)
    return {
        "shape": list(shape),
        "dtype": dtype,
        "repeats": repeats,
        "eigh_s": eigh_s,
        "edit_s": edit_s,
        "total_s": eigh_s + edit_s,
        "eigh_times_s": eigh_times,
        "edit_times_s": edit_times,
        "module_edit_seconds": module_times,
        "projection_gflop": projection_gflop(*shape),
        "projection_gflop_per_s": projection_gflop(*shape) / edit_s,
        "rho": EDIT_RHO,
        "kept_fraction": stats.kept_fraction,
        "kept_mass": stats.kept_mass,
        "relative_change": stats.relative_change,
        "setup_s_untimed": setup,
    }


def bench_edit(quick: bool, started: float, budget_s: float, big_float64: str,
               shapes=SMALL_SHAPES, big_shape=BIG_SHAPE, warmup_shape=(256, 128)) -> dict:
    rows, notes = [], []
    repeats = 1 if quick else 3
    log("edit: warm-up (eigh + projection in both dtypes)")
    for dtype in ("float32", "float64"):
        edit_once(warmup_shape, dtype, 1, seed=99)
    for shape in shapes:
        for dtype in ("float32", "float64"):
            log(f"edit: {shape} {dtype}")
            rows.append(edit_once(shape, dtype, repeats))
            log(f"  eigh {rows[-1]['eigh_s']:.2f} s, apply_edit {rows[-1]['edit_s']:.2f} s")
    estimate = None
    if quick:
        notes.append(f"quick mode: {big_shape} not measured")
        return {"rho": EDIT_RHO, "selection": "pairs", "rows": rows, "float64_big_estimate_s": estimate, "notes": notes}
    base_shape = shapes[-1]
    base = {r["dtype"]: r for r in rows if tuple(r["shape"]) == tuple(base_shape)}
    m, n = big_shape
    eigh_scale = (m**3 + n**3) / (base_shape[0] ** 3 + base_shape[1] ** 3)
    proj_scale = projection_gflop(m, n) / projection_gflop(*base_shape)
    log(f"edit: {big_shape} float32")
    rows.append(big32 := edit_once(big_shape, "float32", 1))
    log(f"  eigh {big32['eigh_s']:.2f} s, apply_edit {big32['edit_s']:.2f} s")
    # float64 time of the big shape, two ways: scale the base float64 run by d^3 (eigh) and by the
    # projection flops; or scale the big float32 run by the base's float64/float32 ratios. Take the larger.
    by_size = base["float64"]["eigh_s"] * eigh_scale + base["float64"]["edit_s"] * proj_scale
    by_dtype = (big32["eigh_s"] * base["float64"]["eigh_s"] / base["float32"]["eigh_s"]
                + big32["edit_s"] * base["float64"]["edit_s"] / base["float32"]["edit_s"])
    estimate = max(by_size, by_dtype)
    elapsed = time.perf_counter() - started
    if big_float64 == "no":
        why = "--big-float64 no"
    elif big_float64 == "yes":
        why = None
    elif estimate > FLOAT64_BIG_LIMIT_S:
        why = f"estimated {estimate:.0f} s > {FLOAT64_BIG_LIMIT_S:.0f} s"
    elif elapsed + estimate > budget_s:
        why = f"elapsed {elapsed:.0f} s + estimated {estimate:.0f} s > budget {budget_s:.0f} s"
    else:
        why = None
    if why is None:
        log(f"edit: {big_shape} float64 (estimated {estimate:.0f} s)")
        rows.append(big64 := edit_once(big_shape, "float64", 1))
        log(f"  eigh {big64['eigh_s']:.2f} s, apply_edit {big64['edit_s']:.2f} s")
        notes.append(f"{big_shape} float64 was estimated at {estimate:.0f} s before running; it took {big64['total_s']:.0f} s.")
    else:
        notes.append(f"{big_shape} float64 not measured ({why}); float32 only. Estimate: max of the {base_shape} float64 run "
                     f"scaled by d^3 (eigh) and projection flops ({by_size:.0f} s), and the {big_shape} float32 run scaled by "
                     f"the {base_shape} float64/float32 ratios ({by_dtype:.0f} s).")
    return {"rho": EDIT_RHO, "selection": "pairs", "rows": rows, "float64_big_estimate_s": estimate,
            "float64_big_estimate_parts_s": {"by_size": by_size, "by_dtype": by_dtype}, "notes": notes}


def markdown(e: dict) -> list[str]:
    out = []
    out.append(f"## Edit per module (kfac, pairs, rho {e['rho']})\n\neigh = `decompose_factors` (A and G); "
               "apply_edit = selection + projection + bookkeeping, given the bases. Median of the repeats.\n")
    out.append(table(["shape (d_out, d_in)", "dtype", "eigh", "apply_edit", "total", "projection GFLOP/s", "repeats"],
                     [[f"({r['shape'][0]}, {r['shape'][1]})", r["dtype"], fmt_s(r["eigh_s"]), fmt_s(r["edit_s"]),
                       fmt_s(r["total_s"]), f"{r['projection_gflop_per_s']:.0f}", r["repeats"]] for r in e["rows"]]))
    for note in e["notes"]:
        out.append(f"\nNote: {note}")
    out.append("")
    return out


def main(argv=None) -> int:
    parser = parser_for(__doc__, STEM)
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="total runtime the float64 (11008, 4096) edit must fit in (auto mode), from this script's start")
    parser.add_argument("--big-float64", choices=("auto", "yes", "no"), default="auto",
                        help="measure the (11008, 4096) edit in float64 too: auto = only if estimated <= 180 s and within --budget-s")
    args = parser.parse_args(argv)
    return run_benchmark("edit", lambda started: bench_edit(args.quick, started, args.budget_s, args.big_float64),
                         quick=args.quick, out=args.out, stem=STEM, title="unmemorize benchmarks: edit per module",
                         section_markdown=markdown)


if __name__ == "__main__":
    raise SystemExit(main())
