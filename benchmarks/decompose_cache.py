#!/usr/bin/env python
"""What does the eigendecomposition cache save per edit and over a rho sweep, and what does the lm-eval bridge add (CPU; CUDA rows when a GPU exists)?

    .venv/bin/python benchmarks/decompose_cache.py            # full run (~8-10 min on 2 idle cores)
    .venv/bin/python benchmarks/decompose_cache.py --quick    # smoke run (about a minute)

Writes ``docs/results/benchmarks/results-decompose.md`` and ``.json`` (``-quick`` files with ``--quick``).

1. Per matrix at Llama-7B shapes. A factor folder with two modules, attention (4096, 4096) and
   MLP (11008, 4096), random symmetric PD factors (``_common.random_psd``). Per dtype (float32,
   float64): ``decompose_to_cache`` (eigh of each factor, timed one by one and recorded in
   eigen.json, plus the shard writes), reading the cache back (``decompose_factors(cache=
   'require')``: fingerprints + safetensors reads), and ``apply_edit`` given the bases (rho 0.9).
   Without a cache an edit call costs eigh(G) + eigh(A) + edit; with it, read + edit. Each eigh runs
   once per dtype (11008 float64 takes minutes on 2 cores); the quick run uses (1024, 1024) and
   (2752, 1024).
2. A sweep of 10 rho values at (2752, 1024) and (1024, 2752) (Llama-7B MLP up/down at a quarter of
   the width; float64): every rho as a separate call that recomputes the bases, as a separate call
   that reads the cache, and in one process reusing the bases in memory. The edits of the first two
   are compared bit for bit.
3. lm-eval bridge overhead on a tiny model (2 local YAML tasks, 24 documents each), wall clock of a
   fresh process, median of 3: plain ``lm_eval --model hf`` on the saved edited folder; the bridge
   on the same folder (local tasks only, and with lm-eval's built-in task index as plain lm_eval
   builds it); the bridge editing the base model in memory.

torch's thread count is left at its default; other processes' CPU use is reported per section.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _common import RESULTS, CpuMonitor, background_load, fmt_s, log, machine_info, random_psd, table  # noqa: E402
from torch import nn  # noqa: E402

import unmemorize as um  # noqa: E402
from unmemorize.basis import DecomposeConfig, decompose_factors, decompose_to_cache  # noqa: E402
from unmemorize.basis.cache import INDEX_FILE, cache_dir  # noqa: E402
from unmemorize.models import get_weight, parse_dtype  # noqa: E402

EDIT_RHO = 0.9
SWEEP_RHOS = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999]


def linear_model(shapes: dict[str, tuple[int, int]], seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    layers = OrderedDict()
    for name, (d_out, d_in) in shapes.items():
        layers[name] = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            layers[name].weight.normal_(0.0, d_in**-0.5, generator=generator)
    return nn.Sequential(layers)


def factor_folder(out: Path, shapes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    activation = {n: random_psd(d_in, generator) for n, (_, d_in) in shapes.items()}
    gradient = {n: random_psd(d_out, generator) for n, (d_out, _) in shapes.items()}
    um.save_factors(um.KFACFactors(activation, gradient, num_positions=1), out)
    return out


def timed(fn, *args, **kwargs):
    gc.collect()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# --------------------------------------------------------------------------------------------
# 1. Per matrix at 7B shapes
# --------------------------------------------------------------------------------------------


def bench_per_matrix(root: Path, shapes: dict[str, tuple[int, int]], device: str) -> dict:
    folder = factor_folder(root / f"factors-{device}", shapes)
    model = linear_model(shapes)
    rows = []
    for dtype in ("float32", "float64"):
        torch_dtype = parse_dtype(dtype)
        log(f"[{device}] decompose_to_cache {dtype} ...")
        write_s, _ = timed(decompose_to_cache, folder, DecomposeConfig(dtype=dtype, device=device), progress=False)
        index = json.loads((cache_dir(folder, dtype) / INDEX_FILE).read_text())
        cache_bytes = sum(p.stat().st_size for p in cache_dir(folder, dtype).glob("*.safetensors"))
        factors = um.load_factors(folder)
        read_s, bases = timed(decompose_factors, factors, torch_dtype, cache="require")
        per_module_read = {}
        for name in shapes:  # read time of one module alone (what an edit of that module pays)
            per_module_read[name], _ = timed(decompose_factors, factors, torch_dtype, [name], "require")
        config = um.EditConfig(eigh_dtype=dtype, compute_dtype=dtype)
        for name, (d_out, d_in) in shapes.items():
            log(f"[{device}] edit {name} {dtype} ...")
            edit_s, edit = timed(um.apply_edit, model, {name: EDIT_RHO}, None, config, {name: bases[name]})
            edit.restore()
            eigh = index["modules"][name]["seconds"]
            rows.append({"device": device, "dtype": dtype, "module": name, "shape": [d_out, d_in],
                         "eigh_G_s": eigh["G"], "eigh_A_s": eigh["A"], "read_cache_s": per_module_read[name], "edit_s": edit_s,
                         "call_without_cache_s": eigh["G"] + eigh["A"] + edit_s, "call_with_cache_s": per_module_read[name] + edit_s})
        eigh_total = sum((e["seconds"]["G"] or 0) + (e["seconds"]["A"] or 0) for e in index["modules"].values())
        rows.append({"device": device, "dtype": dtype, "module": "(decompose command)", "decompose_s": write_s,
                     "eigh_total_s": eigh_total, "write_overhead_s": write_s - eigh_total, "read_all_s": read_s,
                     "cache_mib": cache_bytes / 2**20})
        del bases, factors
    shutil.rmtree(folder, ignore_errors=True)
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "rows": rows}


# --------------------------------------------------------------------------------------------
# 2. Sweep of 10 rho values
# --------------------------------------------------------------------------------------------


def bench_sweep(root: Path, shapes: dict[str, tuple[int, int]]) -> dict:
    folder = factor_folder(root / "sweep-factors", shapes, seed=1)
    model = linear_model(shapes, seed=1)
    named = dict(model.named_modules())

    def one_call(rho: float, cache: str) -> dict[str, torch.Tensor]:
        factors = um.load_factors(folder)  # what one CLI call does
        edit = um.apply_edit(model, {n: rho for n in shapes}, factors, um.EditConfig()) if cache == "auto" else \
            um.apply_edit(model, {n: rho for n in shapes}, factors, um.EditConfig(), decompose_factors(factors, cache="off"))
        weights = {n: get_weight(named[n]).clone() for n in shapes}
        edit.restore()
        return weights

    log("sweep: recomputing the bases in every call ...")
    recomputed_s, recomputed = timed(lambda: [one_call(rho, "off") for rho in SWEEP_RHOS])
    log("sweep: decompose once, then every call reads the cache ...")
    decompose_s, _ = timed(decompose_to_cache, folder, DecomposeConfig(device="cpu"), progress=False)
    cached_s, cached = timed(lambda: [one_call(rho, "auto") for rho in SWEEP_RHOS])
    identical = all(torch.equal(a[n], b[n]) for a, b in zip(recomputed, cached) for n in shapes)
    log("sweep: one process, bases in memory ...")

    def in_memory():
        factors = um.load_factors(folder)
        bases = decompose_factors(factors, cache="off")
        for rho in SWEEP_RHOS:
            um.apply_edit(model, {n: rho for n in shapes}, factors, um.EditConfig(), bases).restore()

    memory_s, _ = timed(in_memory)
    shutil.rmtree(folder, ignore_errors=True)
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "rhos": SWEEP_RHOS, "dtype": "float64",
            "recomputed_s": recomputed_s, "decompose_once_s": decompose_s, "cached_calls_s": cached_s,
            "cached_total_s": decompose_s + cached_s, "in_memory_s": memory_s, "identical_edits": identical}


# --------------------------------------------------------------------------------------------
# 3. lm-eval bridge overhead
# --------------------------------------------------------------------------------------------


def write_tasks(folder: Path) -> Path:
    """tiny_mc (multiple choice, acc) and tiny_ppl (rolling loglikelihood) over local jsonl files."""
    from unmemorize.tiny import WORDS

    rng = random.Random(0)
    content = WORDS[:-2]
    folder.mkdir(parents=True)
    mc = [{"query": " ".join(rng.choice(content) for _ in range(6)), "choices": [rng.choice(content) for _ in range(4)],
           "gold": rng.randrange(4)} for _ in range(24)]
    text = [{"text": " ".join(rng.choice(content) for _ in range(rng.randint(8, 20)))} for _ in range(24)]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    (folder / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    common = "test_split: test\nmetadata:\n  version: 1.0\n"
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n{common}"
        "output_type: multiple_choice\ndoc_to_text: \"{{query}}\"\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n")
    (folder / "tiny_ppl.yaml").write_text(
        f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'text.jsonl'}\n{common}"
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    return folder


def bench_lm_eval(root: Path, repeats: int) -> dict:
    from unmemorize.tiny import save_tiny_lm, write_corpus

    base = save_tiny_lm(root / "tiny", "llama", seed=0)
    model, tokenizer = um.load_model(str(base))
    targets = um.resolve_targets(model, ["model.layers.*.mlp.*"])
    corpus = write_corpus(root / "clean.txt", documents=60)
    um.save_factors(um.collect_from_files(model, tokenizer, str(corpus), targets,
                                          um.CollectConfig(seq_len=32, max_tokens=800, batch_size=4, progress=False)), root / "factors", model=model)
    plan = root / "plan.json"
    plan.write_text(json.dumps({n: 0.5 for n in targets}))
    edit = um.apply_edit(model, um.load_plan(plan, model), um.load_factors(root / "factors", model=model))
    um.save_edited_model(edit, root / "edited", tokenizer)
    tasks = write_tasks(root / "tasks")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    names = "tiny_mc,tiny_ppl"
    bridge = [sys.executable, "-m", "unmemorize", "eval", "--lm-eval", names, "--include-path", str(tasks)]
    commands = {
        "plain lm_eval --model hf (edited folder)": [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                                                     f"pretrained={root / 'edited'},dtype=float32", "--tasks", names,
                                                     "--include_path", str(tasks), "--device", "cpu", "--batch_size", "8"],
        "bridge, edited folder (local tasks only)": bridge + ["--model", str(root / "edited")],
        "bridge, edited folder (+ built-in task index)": bridge + ["--model", str(root / "edited"), "--builtin-tasks"],
        "bridge, in-memory edit of the base model": bridge + ["--model", str(base), "--edit-plan", str(plan), "--factors", str(root / "factors")],
    }
    rows = []
    for label, command in commands.items():
        times = []
        for _ in range(repeats):
            log(f"lm-eval: {label} ...")
            start = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                raise RuntimeError(f"{label} failed:\n{result.stderr[-3000:]}")
        rows.append({"command": label, "median_s": statistics.median(times), "times_s": times})
    return {"tasks": names, "documents_per_task": 24, "repeats": repeats, "rows": rows}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def report(results: dict) -> str:
    mi = results["machine"]
    out = [f"# Eigendecomposition cache and lm-eval bridge{' (quick)' if results['quick'] else ''}\n",
           f"Machine: {mi['cpu']}, {mi['logical_cpus']} logical CPUs, {mi['memory_gib']} GiB; torch {mi['torch']} "
           f"({mi['torch_threads']} threads, {mi['blas']}); CUDA: {results['cuda'] or 'none'}. "
           f"Command: `{results['command']}`.\n"]
    for device, section in results["per_matrix"].items():
        out.append(f"## Per matrix at {'Llama-7B' if not results['quick'] else 'reduced'} shapes ({device})\n")
        out.append("One edit call of one module: without the cache it runs eigh(G) + eigh(A) + the edit; with it, it "
                   f"reads the module's cached bases (fingerprints + safetensors) + the edit (kfac, pairs, rho {EDIT_RHO}, "
                   "projection in the eigh dtype). Each eigh timed once.\n")
        body = [[r["module"], f"({r['shape'][0]}, {r['shape'][1]})", r["dtype"], fmt_s(r["eigh_G_s"]), fmt_s(r["eigh_A_s"]),
                 fmt_s(r["read_cache_s"]), fmt_s(r["edit_s"]), fmt_s(r["call_without_cache_s"]), fmt_s(r["call_with_cache_s"]),
                 f"{r['call_without_cache_s'] / r['call_with_cache_s']:.0f}x"]
                for r in section["rows"] if "shape" in r]
        out.append(table(["module", "shape (d_out, d_in)", "dtype", "eigh G (d_out)", "eigh A (d_in)", "read cache", "edit",
                          "call without cache", "call with cache", "speed-up"], body))
        body = [[r["dtype"], fmt_s(r["decompose_s"]), fmt_s(r["eigh_total_s"]), fmt_s(r["write_overhead_s"]), fmt_s(r["read_all_s"]),
                 f"{r['cache_mib']:.0f} MiB"] for r in section["rows"] if "decompose_s" in r]
        out.append("\n`unmemorize decompose` on both modules (run once per factor folder and dtype):\n")
        out.append(table(["dtype", "decompose", "of which eigh", "fingerprints + writes", "read all back", "cache size"], body) + "\n")
    s = results["sweep"]
    out.append(f"## Sweep of {len(s['rhos'])} rho values ({s['dtype']}; modules {', '.join(f'{k} {tuple(v)}' for k, v in s['shapes'].items())})\n")
    out.append(table(["strategy", "total"], [
        ["every call recomputes eigh (before this change)", fmt_s(s["recomputed_s"])],
        ["decompose once + every call reads the cache", f"{fmt_s(s['cached_total_s'])} ({fmt_s(s['decompose_once_s'])} + {fmt_s(s['cached_calls_s'])})"],
        ["one process, bases kept in memory (Python API `bases=`)", fmt_s(s["in_memory_s"])],
    ]))
    out.append(f"\nEdits from cached and recomputed bases identical bit for bit: {s['identical_edits']}.\n")
    lm = results.get("lm_eval")
    if lm:
        out.append(f"## lm-eval bridge overhead (tiny model, {lm['tasks']}, {lm['documents_per_task']} documents each, "
                   f"fresh process, median of {lm['repeats']})\n")
        plain = lm["rows"][0]["median_s"]
        out.append(table(["command", "wall clock", "vs plain lm_eval"],
                         [[r["command"], fmt_s(r["median_s"]), f"{r['median_s'] - plain:+.2f} s"] for r in lm["rows"]]))
        out.append("\nOn a tiny model the wall clock is start-up: imports and, for plain lm_eval, indexing lm-eval's "
                   "built-in tasks; the model's own forward passes take well under a second.\n")
    loads = results["foreign_load"]
    out.append("Other processes' CPU use (should be ~0): " + ", ".join(
        f"{k} {v['foreign_cpu_s']:.1f} CPU-s ({100 * v['foreign_fraction']:.0f}%)" for k, v in loads.items() if v["foreign_cpu_s"] is not None)
        + f"; before start {100 * (results['load_before'] or 0):.0f}%.\n")
    out.append(f"Total benchmark time: {results['wall_seconds']:.1f} s.\n")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Reduced shapes and one lm-eval repeat (smoke run).")
    parser.add_argument("--skip-lm-eval", action="store_true", help="Leave out section 3.")
    parser.add_argument("--out", help="Markdown report (default docs/results/benchmarks/results-decompose[-quick].md; JSON beside it).")
    args = parser.parse_args(argv)
    out = Path(args.out or RESULTS / f"results-decompose{'-quick' if args.quick else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"quick": args.quick, "machine": machine_info(), "load_before": background_load(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "command": "python benchmarks/decompose_cache.py" + (" --quick" if args.quick else ""),
               "per_matrix": {}, "foreign_load": {}}
    big = {"attn": (1024, 1024), "mlp": (2752, 1024)} if args.quick else {"attn": (4096, 4096), "mlp": (11008, 4096)}
    small = {"up": (688, 256), "down": (256, 688)} if args.quick else {"up": (2752, 1024), "down": (1024, 2752)}
    with tempfile.TemporaryDirectory(prefix="unmemorize-bench-") as tmp:
        root = Path(tmp)
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            monitor = CpuMonitor().start()
            results["per_matrix"][device] = bench_per_matrix(root, big, device)
            results["foreign_load"][f"per matrix ({device})"] = monitor.stop()
        monitor = CpuMonitor().start()
        results["sweep"] = bench_sweep(root, small)
        results["foreign_load"]["sweep"] = monitor.stop()
        if not args.skip_lm_eval:
            monitor = CpuMonitor().start()
            results["lm_eval"] = bench_lm_eval(root / "lm_eval", 1 if args.quick else 3)
            results["foreign_load"]["lm-eval"] = monitor.stop()
    results["wall_seconds"] = time.perf_counter() - started
    text = report(results)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, allow_nan=False))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
