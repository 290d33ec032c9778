#!/usr/bin/env python
"""What does collection cost on the CPU at 7B shapes: tokens/s, memory, eigh and edit per matrix, and 20M tokens x 32 layers?

    .venv/bin/python benchmarks/collect_slice.py                   # ~18 min on an idle 2-core machine
    .venv/bin/python benchmarks/collect_slice.py --no-eigh-11008   # ~9 min: without the 11008 eigh and the edits
    .venv/bin/python benchmarks/collect_slice.py --quick           # smoke run (~4 min)

Writes the ``slice`` section of ``docs/results/benchmarks/results-collect.md`` and key ``slice`` of
``results-collect.json`` (``results-collect-quick.*`` with ``--quick``), starting with the command
that produced it. Formerly ``benchmarks/collect_scale.py --part slice``. Of the 18 minutes, 8 are
the 11008 eigh in float32 and float64 and 1 the edits. Each layer count runs in a fresh child
process of this script, so peak RSS is per run. Timed runs wait for other processes to go quiet.

7B-shaped decoder layers (hidden 4096, intermediate 11008, 32 heads, vocab 32000) in bfloat16
with float32 factors: bfloat16 vs float32 GEMMs at the up_proj shape; tokens/s of collecting
gate/up/down with the bfloat16 model as loaded (1 layer, 32 tokens: it is ~40x slower) and with
its Linear layers computed in float32 (1 and 2 layers); peak RSS, factor bytes, eigh per matrix
(4096 and 11008, float32 and float64, on the collected factors), edit time per matrix, and a
projection to 20M tokens x 32 layers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import command_line, log, machine, percent, update  # noqa: E402
from _scale import SLICE, build_llama, collect, fmt_s, git_state, timed_clean, token_batches  # noqa: E402

from unmemorize.targets import resolve_targets  # noqa: E402


def factor_bytes(factors) -> dict:
    """Bytes of the returned A and G tensors (each tensor once) and of the accumulators (shared A once)."""
    tensors = {id(t): t for t in [*factors.activation.values(), *factors.gradient.values()]}
    returned = sum(t.numel() * t.element_size() for t in tensors.values())
    shared = set(factors.metadata.get("shared_activation", {}))
    accumulators = sum(t.numel() * t.element_size() for n, t in factors.activation.items() if n not in shared)
    accumulators += sum(t.numel() * t.element_size() for t in factors.gradient.values())
    return {"returned": returned, "accumulators": accumulators}


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def upcast_linears(model) -> None:
    """Compute every nn.Linear in float32 from its bfloat16 weight (storage stays bfloat16).

    Why: on a CPU without native bfloat16 GEMMs (AVX2 here), torch's bfloat16 matmul falls back
    to a slow path; the backward's grad_out @ W (both operands non-transposed) runs ~300x slower
    than in float32 (benchmarked in the slice section). Upcasting W per call costs one copy."""
    from torch import nn

    def forward(self, x):
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.forward = forward.__get__(module)


def bench_slice_layers(layers: int, mode: str, quick: bool) -> dict:
    """One child process: collect gate/up/down of ``layers`` 7B-shaped layers; timings and memory.

    ``mode``: 'bf16' runs the bfloat16 model as loaded; 'upcast' computes its Linear layers in
    float32 (``upcast_linears``)."""
    if mode == "bf16":  # ~1.5 s per token per layer on this CPU: a few tokens only
        seq, timed_batches, warm_len = (16, 1, 4) if quick else (32, 1, 8)
    else:
        seq, timed_batches, warm_len = (64, 1, 32) if quick else (512, 2, 128)
    rss_start = maxrss_bytes()
    start = time.perf_counter()
    model = build_llama(**SLICE, layers=layers, seq_len=seq, dtype=torch.bfloat16)
    if mode == "upcast":
        upcast_linears(model)
    build_s = time.perf_counter() - start
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    targets = resolve_targets(model)
    warm = token_batches(1, 1, warm_len, SLICE["vocab"], seed=1)
    batches = token_batches(timed_batches, 1, seq, SLICE["vocab"], seed=2)
    tokens = timed_batches * seq
    collect(model, warm, targets, "true")
    gc.collect()
    rss_before = maxrss_bytes()
    seconds, foreign, factors = timed_clean(collect, model, batches, targets, "true", attempts=2)
    rss_after_collect = maxrss_bytes()
    with torch.no_grad():
        model(input_ids=warm[0]["input_ids"])
        forward_s, forward_foreign, _ = timed_clean(lambda: [model(input_ids=b["input_ids"]) for b in batches])
    out = {"mode": mode, "layers": layers, "tokens": tokens, "seq_len": seq, "batch": 1, "warmup_tokens": warm_len,
           "collect_s": seconds, "tokens_per_s": tokens / seconds, "forward_only_s": forward_s, "build_s": build_s,
           "weight_bytes": weight_bytes, "factor_bytes": factor_bytes(factors), "maxrss_start": rss_start,
           "maxrss_before_collect": rss_before, "maxrss_after_collect": rss_after_collect, "targets": targets,
           "foreign_load": {"collect": foreign, "forward": forward_foreign}}
    log(f"  {mode}, {layers} layer(s): {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.2f} tok/s), "
        f"maxrss {rss_after_collect / 2**30:.1f} GiB")
    if layers == 1 and mode == "upcast":
        out.update(slice_eigh_and_edit(model, factors, quick))
    return out


def bf16_gemm_layouts() -> list[dict]:
    """Why bfloat16 collection is slow on this CPU: one (64 x 11008) @ (11008 x 4096) product per layout and dtype."""
    out = []
    w = torch.randn(11008, 4096)  # an up_proj weight (d_out, d_in)
    g = torch.randn(64, 11008)  # 64 rows of d L / d y
    x = torch.randn(64, 4096)
    for dtype in (torch.float32, torch.bfloat16):
        wd, gd, xd = w.to(dtype), g.to(dtype), x.to(dtype)
        for name, fn in (("forward x @ W^T (F.linear)", lambda: F.linear(xd, wd)),
                         ("backward grad_out @ W", lambda: gd @ wd)):
            fn()
            seconds, foreign, _ = timed_clean(fn, attempts=1)
            out.append({"dtype": str(dtype).replace("torch.", ""), "product": name, "seconds": seconds, "foreign_load": foreign})
            log(f"  {dtype} {name}: {seconds:.3f} s")
    return out


def slice_eigh_and_edit(model, factors, quick: bool) -> dict:
    from unmemorize.basis import ModuleBasis, decompose
    from unmemorize.edit import EditConfig, apply_edit

    gate = next(n for n in factors.modules if n.endswith("gate_proj"))
    down = next(n for n in factors.modules if n.endswith("down_proj"))
    a_4096, g_11008 = factors.activation[gate], factors.gradient[gate]  # (4096, 4096), (11008, 11008)
    eigh, bases32 = [], {}
    for matrix in (a_4096, g_11008):
        for dtype in (torch.float32, torch.float64):
            d = matrix.shape[0]
            if d > 4096 and (quick or os.environ.get("COLLECT_SCALE_NO_EIGH_11008")):
                continue  # ~100 s (float32) and ~240 s (float64) on 2 cores; the edits need this basis too
            log(f"  eigh {d} {dtype}")
            seconds, foreign, result = timed_clean(decompose, matrix, dtype, attempts=2)
            eigh.append({"size": d, "dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "foreign_load": foreign})
            log(f"    {seconds:.1f} s")
            if dtype == torch.float32:
                bases32[d] = result
    edits = []
    if not quick and 4096 in bases32 and 11008 in bases32:
        # gate_proj (11008, 4096): G 11008, A 4096. down_proj (4096, 11008) reuses the same two
        # decompositions with the sides swapped: selection + projection cost depends only on the shapes.
        plans = {gate: ModuleBasis(gradient=bases32[11008], activation=bases32[4096]),
                 down: ModuleBasis(gradient=bases32[4096], activation=bases32[11008])}
        for name, compute in ((gate, "float32"), (down, "float32"), (gate, "float64")):
            config = EditConfig(method="kfac", selection="pairs", compute_dtype=compute, eigh_dtype="float32")
            seconds, foreign, edit = timed_clean(apply_edit, model, {name: 0.9}, None, config, {name: plans[name]}, attempts=1)
            edits.append({"foreign_load": foreign, "module": name, "shape": list(model.get_submodule(name).weight.shape), "compute_dtype": compute,
                          "rho": 0.9, "seconds": seconds, "kept_fraction": edit.modules[name].kept_fraction})
            edit.restore()
            log(f"  edit {name} {compute}: {seconds:.1f} s")
    return {"eigh": eigh, "edit": edits}


def bench_slice(quick: bool, no_eigh_11008: bool = False) -> None:
    log("slice: bfloat16 vs float32 GEMM layouts")
    layouts = bf16_gemm_layouts()
    results = []
    if no_eigh_11008:
        os.environ["COLLECT_SCALE_NO_EIGH_11008"] = "1"  # read by the child
    for mode, layers in (("bf16", 1), ("upcast", 1), ("upcast", 2)):
        log(f"slice: {mode}, {layers} layer(s) of hidden 4096 / intermediate 11008, bfloat16 weights, child process")
        results.append(run_child(["--slice-layers", str(layers), "--slice-mode", mode] + (["--quick"] if quick else [])))
    bf16, one, two = results
    per_token = {r["layers"]: r["collect_s"] / r["tokens"] for r in (one, two)}
    layer_s = per_token[2] - per_token[1]
    fixed_s = per_token[1] - layer_s
    forward_layer_s = two["forward_only_s"] / two["tokens"] - one["forward_only_s"] / one["tokens"]
    projection = {
        "tokens": 20_000_000, "layers": 32,
        "per_layer_s_per_token": layer_s, "fixed_s_per_token": fixed_s, "forward_per_layer_s_per_token": forward_layer_s,
        "linear_fit_s": 20e6 * (fixed_s + 32 * layer_s),
        "proportional_s": 20e6 * per_token[2] * 16,
        "bf16_as_loaded_s": 20e6 * 32 * bf16["collect_s"] / bf16["tokens"],
        "accumulator_bytes_32_layers": 32 * one["factor_bytes"]["accumulators"],
    }
    data = {"command": command_line(), "machine": machine(), "git": git_state(), "shape": SLICE, "gemm_layouts": layouts,
            "runs": results, "projection": projection}
    update("slice", slice_markdown(data), data, quick)


def slice_markdown(d: dict) -> str:
    gib = 2**30
    lines = ["## A 7B-shaped slice on the CPU", "", f"Command: `{d['command']}`", "",
             f"Llama decoder layers of 7B shape (hidden {d['shape']['hidden']}, intermediate {d['shape']['intermediate']}, "
             f"{d['shape']['heads']} heads, vocab {d['shape']['vocab']}), random init, bfloat16 weights, float32 factors, true Fisher, "
             "targets gate/up/down of every layer; one warm-up window, then timed windows of batch 1. Each row is its own "
             "process (peak RSS = ru_maxrss of that process). 'bf16': the model as loaded; 'upcast': the same bfloat16 "
             "weights, every nn.Linear computed in float32 (`upcast_linears`: F.linear(x.float(), W.float()), cast back).", "",
             "**bfloat16 GEMMs on this CPU** (no native bfloat16: torch reports CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}): one product of 64 rows at the up_proj shape:", "",
             "| product | float32 | bfloat16 |", "|---|---|---|"]
    for product in dict.fromkeys(r["product"] for r in d["gemm_layouts"]):
        cells = {r["dtype"]: r["seconds"] for r in d["gemm_layouts"] if r["product"] == product}
        lines.append(f"| {product} | {cells['float32'] * 1e3:.0f} ms | {cells['bfloat16'] * 1e3:.0f} ms |")
    lines += ["", "| compute | layers | tokens | collect | tokens/s | forward only | weights | accumulators (A shared by gate/up) "
              "| returned factors | peak RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["runs"]:
        windows = f"{r['tokens']} ({r['tokens'] // r['seq_len']} x {r['seq_len']})"
        lines.append(f"| {r['mode']} | {r['layers']} | {windows} | {fmt_s(r['collect_s'])} | {r['tokens_per_s']:.2f} | "
                     f"{fmt_s(r['forward_only_s'])} | {r['weight_bytes'] / gib:.2f} GiB | {r['factor_bytes']['accumulators'] / gib:.2f} GiB | "
                     f"{r['factor_bytes']['returned'] / gib:.2f} GiB | {r['maxrss_after_collect'] / gib:.2f} GiB |")
    one = d["runs"][1]
    if one.get("eigh"):
        lines += ["", "eigh per matrix (`unmemorize.basis.decompose`: symmetrize, torch.linalg.eigh, sort; on the collected A and G of "
                  "layer 0's gate_proj), measured once:", "", "| size | float32 | float64 |", "|---|---|---|"]
        for size in sorted({e["size"] for e in one["eigh"]}):
            cells = {e["dtype"]: e for e in one["eigh"] if e["size"] == size}
            lines.append(f"| {size} | " + " | ".join(fmt_s(cells[t]["seconds"]) if t in cells and cells[t]["seconds"] is not None
                                                       else "not measured" for t in ("float32", "float64")) + " |")
    if one.get("edit"):
        lines += ["", "Edit per matrix (`apply_edit`, kfac pairs, rho 0.9, given the float32 bases: selection + projection "
                  "U_G^T W U_A, mask, back-projection):", "", "| module | shape | compute dtype | seconds |", "|---|---|---|---|"]
        for e in one["edit"]:
            lines.append(f"| {e['module']} | {tuple(e['shape'])} | {e['compute_dtype']} | {fmt_s(e['seconds'])} |")
    loads = [v for r in d["runs"] for v in r["foreign_load"].values()]
    loads += [e.get("foreign_load") for e in one.get("eigh", []) + one.get("edit", [])]
    loads = [v for v in loads if v is not None]
    lines += ["", f"Largest share of the CPUs other processes used during any timed step above: {percent(max(loads) if loads else None)}."]
    p = d["projection"]
    days = 86400
    lines += ["", "Projection to 20M tokens through all 32 layers (gate/up/down of each), from seconds per token s(L) "
              "measured at L = 1 and 2 layers (upcast): s_layer = s(2) - s(1), s_fixed = s(1) - s_layer (embedding, final norm, "
              "the 32000-word head, label sampling), T = 20e6 x (s_fixed + 32 x s_layer):", "",
              f"- s_layer = {p['per_layer_s_per_token'] * 1e3:.1f} ms/token, s_fixed = {p['fixed_s_per_token'] * 1e3:.1f} ms/token "
              f"(forward alone: {p['forward_per_layer_s_per_token'] * 1e3:.1f} ms/token/layer)",
              f"- T = {p['linear_fit_s']:,.0f} s = {p['linear_fit_s'] / days:,.1f} days on this 2-core CPU with the float32 upcast "
              f"(proportional scaling 16 x s(2): {p['proportional_s'] / days:,.1f} days); with the bfloat16 model as loaded, "
              f"20e6 x 32 x s_bf16(1) = {p['bf16_as_loaded_s'] / days:,.0f} days",
              f"- memory: one pass over all 32 layers holds {p['accumulator_bytes_32_layers'] / gib:.0f} GiB of float32 "
              "accumulators, so on this 24 GiB machine it needs --modules-per-pass (each extra pass repeats the forward "
              "and the backward down to its earliest target).", ""]
    return "\n".join(lines)


def run_child(extra: list[str]) -> dict:
    """Run this script in a fresh process; it prints one JSON object as its last stdout line."""
    proc = subprocess.run([sys.executable, __file__, *extra], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {extra} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that it runs (writes results-collect-quick.*).")
    parser.add_argument("--no-eigh-11008", action="store_true",
                        help="Skip eigh of the 11008 x 11008 factor (~100 s float32, ~240 s float64) and the edits that need it.")
    parser.add_argument("--slice-layers", type=int, help=argparse.SUPPRESS)  # internal: one slice child
    parser.add_argument("--slice-mode", choices=("bf16", "upcast"), default="upcast", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slice_layers:
        print(json.dumps(bench_slice_layers(args.slice_layers, args.slice_mode, args.quick), default=str))
        return
    bench_slice(args.quick, args.no_eigh_11008)


if __name__ == "__main__":
    main()
