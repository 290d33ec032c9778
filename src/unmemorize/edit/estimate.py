"""A plan before an edit (``edit --dry-run``): memory, disk and time, from the shapes and a short measurement.

For the modules of the plan, with e the eigendecomposition bytes (8 for float64, 4 for float32)
and c the projection bytes (``--compute-dtype``):

    factors (memory)      = sum_modules 4 (d_in^2 + d_out^2)          float32, as stored
    bases (memory)        = e (sum_distinct-A d_in^2 + sum_modules d_out^2) + the eigenvalues
    working (memory)      = the largest module's 4 c d_out d_in (W, C, the mask, W' at once)
    edited folder (disk)  = the weights in the model's dtype + safetensors headers + the manifest
                            + the source folder's other files (config, tokenizer)
    time                  = sum over the matrices of t_eigh(n) + sum over modules of the two
                            projections, with t_eigh(n) = t_eigh(m) (n/m)^3 and the projections
                            2 d_out d_in (d_out + d_in) / (GEMM flop/s), both measured here at m = 768
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..matrices import model_matrices

MEASURE_SIZE = 768


def _measure(dtype: torch.dtype, device) -> tuple[float, float]:
    """(seconds of one eigh at MEASURE_SIZE, GEMM flop/s) on this machine, best of three."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(MEASURE_SIZE, MEASURE_SIZE, generator=generator, dtype=dtype).to(device)
    sym = x @ x.T
    eigh, gemm = [], []
    for _ in range(3):
        start = time.perf_counter()
        torch.linalg.eigh(sym)
        eigh.append(time.perf_counter() - start)
        start = time.perf_counter()
        x @ x
        gemm.append(time.perf_counter() - start)
    return min(eigh), 2 * MEASURE_SIZE**3 / min(gemm)


def edit_estimate(model, plan: dict[str, float], config, shared: dict[str, str] | None = None, source: str | None = None) -> dict:
    """The numbers of the module docstring for ``plan`` (module -> rho) under ``config`` (EditConfig)."""
    modules = model_matrices(model)
    shared = shared or {}
    eigh_bytes = 8 if config.eigh_dtype == "float64" else 4
    compute_bytes = 8 if config.compute_dtype == "float64" else 4
    shapes = {n: modules[n].shape for n in plan}
    distinct_a = {shared.get(n, n): shapes[n][1] for n in plan}
    matrices = [*distinct_a.values(), *(shapes[n][0] for n in plan)]
    if config.method == "svd":
        matrices = []
    factors = sum(4 * (d_in**2 + d_out**2) for d_out, d_in in shapes.values()) if config.method != "svd" else 0
    bases = sum(eigh_bytes * (n * n + n) for n in matrices)
    working = max(4 * compute_bytes * d_out * d_in for d_out, d_in in shapes.values())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    headers = 8 + sum(96 + len(name) for name, _ in model.named_parameters())  # safetensors: one JSON entry per tensor
    manifest = 1024 + 400 * len(plan)  # unmemorize_edit.json: settings and per-module statistics
    extra = headers + manifest
    if source and Path(source).is_dir():
        extra += sum(p.stat().st_size for p in Path(source).iterdir()
                    if p.is_file() and not p.name.endswith((".safetensors", ".bin", ".pt", ".json.index")) and p.name != "model.safetensors.index.json")
    device = next(model.parameters()).device
    eigh_seconds, flops = _measure(torch.float64 if eigh_bytes == 8 else torch.float32, device)
    eigh_total = sum(eigh_seconds * (n / MEASURE_SIZE) ** 3 for n in matrices)
    if config.method == "svd":  # one SVD per module, costed like an eigh of the smaller side times the aspect
        eigh_total = sum(eigh_seconds * (min(s) / MEASURE_SIZE) ** 3 * max(s) / min(s) for s in shapes.values())
    projections = sum(2 * d_out * d_in * (d_out + d_in) * 2 for d_out, d_in in shapes.values()) / flops
    return {
        "modules": len(plan),
        "matrices_decomposed": len(matrices),
        "factor_bytes": factors,
        "basis_bytes": bases,
        "working_bytes": working,
        "peak_bytes": weights + factors + bases + working,
        "weight_bytes": weights,
        "disk_bytes": weights + extra,
        "estimated_seconds": round(eigh_total + projections, 2),
        "measured": {"eigh_seconds_at": {str(MEASURE_SIZE): round(eigh_seconds, 5)}, "gemm_flops_per_second": round(flops)},
    }
