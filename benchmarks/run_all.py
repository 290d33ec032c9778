#!/usr/bin/env python
"""CPU benchmarks of unmemorize: collection overhead, pair-selection time, edit time per module.

    .venv/bin/python benchmarks/run_all.py            # full run (~5-6 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run (well under a minute)

Prints Markdown tables on stdout (progress goes to stderr) and writes JSON to ``--out``
(default ``benchmarks/results.json``; ``benchmarks/results-quick.json`` with ``--quick`` so a
smoke run never overwrites full results).

1. Collection overhead. A ~5M-parameter Llama-style causal LM (random init from a config) on
   random token windows: plain forward+backward (eval mode, parameters requiring grad, summed
   next-token cross-entropy, ``loss.backward()``, grads zeroed each batch) versus
   ``collect_factors`` on every MLP projection and on the last block's MLP only (the graph
   starts at the earliest target, so backward is truncated). One warm-up batch precedes every
   timed run. A forward-only (no_grad) row is the floor.
2. Selection. ``select_pairs`` / ``select_per_side`` at m=11008, n=4096 (45M pairs; Llama-7B's
   MLP) on decaying spectra, median of several runs; in the full run also a brute-force
   reference (products, full argsort, cumsum) timed once per spectrum, and its kept count.
3. Edit per module. ``decompose_factors`` (eigh) timed apart from ``apply_edit(bases=...)``
   (selection + projection) on one nn.Linear with random symmetric PSD factors. The largest
   shape (11008, 4096) runs only in the full run: float32 always, float64 only if its time,
   extrapolated from the (4096, 1024) runs and the (11008, 4096) float32 run, is under 3 min
   and fits the total budget (--budget-s, 6 min).

torch's thread count is left at its default.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import unmemorize  # noqa: E402
from unmemorize.basis import decompose_factors  # noqa: E402
from unmemorize.curvature import CollectConfig, KFACFactors, NextTokenObjective, collect_factors  # noqa: E402
from unmemorize.edit import EditConfig, apply_edit, select_pairs, select_per_side  # noqa: E402
from unmemorize.targets import resolve_targets  # noqa: E402
from unmemorize.tiny import tiny_config  # noqa: E402

# The collection model: Llama-style, MLP ratio 688/256 ~ 11008/4096 as in Llama-7B.
MODEL = dict(vocab_size=2048, hidden=256, intermediate=688, layers=5, heads=4)
BIG_SHAPE = (11008, 4096)
SMALL_SHAPES = ((2048, 512), (4096, 1024))
EDIT_RHO = 0.9
SELECT_RHOS = (0.6, 0.9, 0.99)
FLOAT64_BIG_LIMIT_S = 180.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


class CpuMonitor:
    """CPU time used by other processes while a section runs (the machine may be shared).

    With torch at one thread per core, any foreign load stalls its parallel regions and can make
    timings several times slower; a large ``foreign_cpu_s`` marks a section as untrustworthy.
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy(self) -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        steal = fields[7] if len(fields) > 7 else 0
        return (sum(fields[:8]) - idle - steal) / self.tick

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy = self._busy()
        own = self._own() - self.own0
        foreign = None if busy is None or self.busy0 is None else max(0.0, busy - self.busy0 - own)
        return {"wall_s": wall, "own_cpu_s": own, "foreign_cpu_s": foreign,
                "foreign_fraction": None if foreign is None else foreign / max(wall * (os.cpu_count() or 1), 1e-9)}


def background_load(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy with other work over ``seconds`` (before the run starts)."""
    monitor = CpuMonitor().start()
    time.sleep(seconds)
    return monitor.stop()["foreign_fraction"]


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    import transformers

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "numpy": np.__version__,
        "transformers": transformers.__version__,
        "unmemorize": unmemorize.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------------------------
# 1. Collection overhead
# --------------------------------------------------------------------------------------------


def build_model(seq_len: int):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", vocab_size=MODEL["vocab_size"], hidden=MODEL["hidden"], layers=MODEL["layers"])
    config.intermediate_size = MODEL["intermediate"]
    config.num_attention_heads = MODEL["heads"]
    config.num_key_value_heads = MODEL["heads"]
    config.head_dim = MODEL["hidden"] // MODEL["heads"]
    config.max_position_embeddings = max(seq_len, config.max_position_embeddings)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model


def random_batches(count: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(3, vocab, (batch_size, seq_len), generator=generator),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        }
        for _ in range(count)
    ]


def plain_forward_backward(model: nn.Module, batches: list[dict]) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["input_ids"][:, 1:].reshape(-1), reduction="sum"
        )
        loss.backward()
        model.zero_grad(set_to_none=True)


def forward_only(model: nn.Module, batches: list[dict]) -> None:
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def bench_collection(quick: bool) -> dict:
    batch_size, seq_len = 8, 256
    num_batches = 1 if quick else 24  # 2,048 or 49,152 timed tokens
    model = build_model(seq_len)
    params = sum(p.numel() for p in model.parameters())
    log(f"collection: {params / 1e6:.2f}M-parameter Llama, {num_batches} x {batch_size} x {seq_len} tokens")
    warm = random_batches(1, batch_size, seq_len, MODEL["vocab_size"], seed=1)
    batches = random_batches(num_batches, batch_size, seq_len, MODEL["vocab_size"], seed=2)
    tokens = num_batches * batch_size * seq_len
    all_mlp = resolve_targets(model)
    last_mlp = resolve_targets(model, layers=[MODEL["layers"] - 1])
    config = CollectConfig(progress=False, fisher="true", seq_len=seq_len, batch_size=batch_size, max_tokens=None)

    runs = OrderedDict()
    runs["forward only (no_grad)"] = lambda b: forward_only(model, b)
    runs["plain forward+backward"] = lambda b: plain_forward_backward(model, b)
    runs[f"collect_factors, all MLP ({len(all_mlp)} modules)"] = lambda b: collect_factors(model, b, all_mlp, config)
    runs[f"collect_factors, last block MLP ({len(last_mlp)} modules)"] = lambda b: collect_factors(model, b, last_mlp, config)

    rows = []
    for name, run in runs.items():
        run(warm)
        gc.collect()
        seconds, _ = timed(run, batches)
        for p in model.parameters():  # plain f+b leaves requires_grad on; collect restores it
            p.grad = None
        rows.append({"run": name, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
        log(f"  {name}: {seconds:.2f} s")
    plain = next(r["seconds"] for r in rows if r["run"] == "plain forward+backward")
    for row in rows:
        row["ratio_to_plain_fb"] = row["seconds"] / plain
    # The true Fisher samples one label per position from the softmax (NextTokenObjective.label_sampler);
    # time that alone on logits of one batch's shape to show its share of the collection time.
    objective = NextTokenObjective()
    logits = torch.randn(batch_size * (seq_len - 1), MODEL["vocab_size"], generator=torch.Generator().manual_seed(3))
    sampler_gen = torch.Generator().manual_seed(0)
    objective.label_sampler(logits, sampler_gen)
    per_batch, _, _ = median_time(lambda: objective.label_sampler(logits, sampler_gen), 3)
    collect_all = next(r["seconds"] for r in rows if r["run"].startswith("collect_factors, all MLP"))
    sampling = {
        "per_batch_s": per_batch,
        "positions_per_batch": logits.shape[0],
        "vocab": MODEL["vocab_size"],
        "estimated_total_s": per_batch * num_batches,
        "share_of_collect_all": per_batch * num_batches / collect_all,
    }
    log(f"  label sampling alone: {per_batch * 1e3:.0f} ms per batch")
    return {
        "model": {
            **MODEL,
            "parameters": params,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "dtype": "float32",
        },
        "batch_size": batch_size,
        "seq_len": seq_len,
        "timed_batches": num_batches,
        "timed_tokens": tokens,
        "warmup_batches": 1,
        "fisher": "true",
        "targets_all": all_mlp,
        "targets_last": last_mlp,
        "rows": rows,
        "true_fisher_label_sampling": sampling,
    }


# --------------------------------------------------------------------------------------------
# 2. Selection
# --------------------------------------------------------------------------------------------


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


def median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(fn)
        times.append(seconds)
    return statistics.median(times), times, result


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


# --------------------------------------------------------------------------------------------
# 3. Edit per module
# --------------------------------------------------------------------------------------------


def random_psd(d: int, generator: torch.Generator) -> torch.Tensor:
    """X X^T / k with decaying column scales plus a small distinct ridge: symmetric PD, float32."""
    k = min(d, 1024)
    x = torch.randn(d, k, generator=generator) * (torch.arange(1, k + 1, dtype=torch.float32) ** -0.5)
    a = x @ x.T / k
    ridge = 1e-4 * float(a.diagonal().mean()) * torch.linspace(1.0, 0.01, d)
    a = a + torch.diag(ridge)
    return (a + a.T) / 2


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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def report(results: dict) -> str:
    out = []
    mi = results["machine"]
    out.append(f"# unmemorize benchmarks{' (quick)' if results['quick'] else ''}\n")
    out.append(f"Machine: {mi['cpu']}, {mi['logical_cpus']} logical CPUs, {mi['memory_gib']} GiB; torch {mi['torch']} "
               f"({mi['torch_threads']} threads, {mi['blas']}), numpy {mi['numpy']}, transformers {mi['transformers']}, "
               f"unmemorize {mi['unmemorize']}.\n")
    if "collection" in results:
        c = results["collection"]
        mdl = c["model"]
        out.append(f"## Collection overhead\n\nLlama-style causal LM, random init: {mdl['parameters']:,} parameters "
                   f"(vocab {mdl['vocab_size']}, hidden {mdl['hidden']}, intermediate {mdl['intermediate']}, "
                   f"{mdl['layers']} layers, {mdl['heads']} heads, untied, float32, attention {mdl['attn_implementation']}). "
                   f"{c['timed_batches']} batch{'es' if c['timed_batches'] != 1 else ''} x {c['batch_size']} x {c['seq_len']} = {c['timed_tokens']:,} random tokens "
                   f"after 1 warm-up batch; true Fisher.\n")
        out.append(table(["run", "seconds", "tokens/s", "x plain fwd+bwd"],
                         [[r["run"], f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.0f}", f"{r['ratio_to_plain_fb']:.2f}"]
                          for r in c["rows"]]))
        ls = c["true_fisher_label_sampling"]
        out.append(f"\nOf which true-Fisher label sampling (NextTokenObjective.label_sampler: softmax + inverse CDF over {ls['positions_per_batch']:,} "
                   f"positions x vocab {ls['vocab']:,}, timed alone): {ls['per_batch_s'] * 1e3:.0f} ms per batch, "
                   f"~{ls['share_of_collect_all']:.0%} of the all-MLP collection time.")
        out.append("")
    if "selection" in results:
        s = results["selection"]
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
    if "edit" in results:
        e = results["edit"]
        out.append(f"## Edit per module (kfac, pairs, rho {e['rho']})\n\neigh = `decompose_factors` (A and G); "
                   "apply_edit = selection + projection + bookkeeping, given the bases. Median of the repeats.\n")
        out.append(table(["shape (d_out, d_in)", "dtype", "eigh", "apply_edit", "total", "projection GFLOP/s", "repeats"],
                         [[f"({r['shape'][0]}, {r['shape'][1]})", r["dtype"], fmt_s(r["eigh_s"]), fmt_s(r["edit_s"]),
                           fmt_s(r["total_s"]), f"{r['projection_gflop_per_s']:.0f}", r["repeats"]] for r in e["rows"]]))
        for note in e["notes"]:
            out.append(f"\nNote: {note}")
        out.append("")
    contention = results.get("cpu_contention", {})
    if contention:
        parts = [f"{k} {v['foreign_cpu_s']:.1f} CPU-s ({v['foreign_fraction']:.0%})" for k, v in contention.items()
                 if v.get("foreign_cpu_s") is not None]
        load = mi.get("background_load_before")
        out.append("Other processes' CPU use (should be ~0; otherwise rerun on an idle machine): "
                   + (f"before start {load:.0%}; " if load is not None else "") + ", ".join(parts) + ".\n")
    out.append(f"Total benchmark time: {results['total_seconds']:.1f} s.")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (small token budget, no 11008x4096 edit, no brute force)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default benchmarks/results.json, or benchmarks/results-quick.json with --quick)")
    parser.add_argument("--only", default="collect,select,edit", help="comma-separated sections to run (collect, select, edit)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="total runtime the float64 (11008, 4096) edit must fit in (auto mode)")
    parser.add_argument("--big-float64", choices=("auto", "yes", "no"), default="auto",
                        help="measure the (11008, 4096) edit in float64 too: auto = only if estimated <= 180 s and within --budget-s")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"collect", "select", "edit"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    out = args.out or HERE / ("results-quick.json" if args.quick else "results.json")

    started = time.perf_counter()
    results: dict = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}
    log(f"machine: {results['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    load = background_load()
    results["machine"]["background_load_before"] = load
    if load is not None and load > 0.05:
        log(f"WARNING: {load:.0%} of the CPUs are busy with other work; timings will be inflated and erratic")
    results["cpu_contention"] = {}
    jobs = (("collect", "collection", lambda: bench_collection(args.quick)),
            ("select", "selection", lambda: bench_selection(args.quick)),
            ("edit", "edit", lambda: bench_edit(args.quick, started, args.budget_s, args.big_float64)))
    for key, section, job in jobs:
        if key not in sections:
            continue
        monitor = CpuMonitor().start()
        results[section] = job()
        results["cpu_contention"][section] = usage = monitor.stop()
        if usage["foreign_fraction"] is not None and usage["foreign_fraction"] > 0.05:
            log(f"WARNING: other processes used {usage['foreign_cpu_s']:.1f} CPU-s during '{section}' "
                f"({usage['foreign_fraction']:.0%} of the machine); its timings are not trustworthy")
        gc.collect()
    results["total_seconds"] = time.perf_counter() - started

    print(report(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
