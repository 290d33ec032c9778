#!/usr/bin/env python
"""How far is K-FAC collection from the least work it needs, and from a training step, on the same model and tokens?

    .venv/bin/python benchmarks/collect_ideal.py            # ~7 min on an idle 2-core machine
    .venv/bin/python benchmarks/collect_ideal.py --quick    # smoke run (~1 min)

Writes the ``ideal`` section of ``docs/results/benchmarks/results-collect.md`` and key ``ideal`` of
``results-collect.json`` (``results-collect-quick.*`` with ``--quick``), starting with the command
that produced it. Formerly ``benchmarks/collect_scale.py --part ideal``. Timed runs wait for
other processes to go quiet and are redone when disturbed, so a shared machine makes it longer,
not wrong.

``collect_factors`` / the ideal on the same model and tokens (``_scale.SCALE``: a 17M-parameter
Llama, 12 batches x 8 x 256 tokens). The ideal is a minimal hand-written loop: parameters frozen,
hooks on the targets, the earliest target's output made a leaf that requires grad (so backward
stops there and forms no weight gradient), ``autograd.grad`` to every target output, and the
covariance GEMMs A += a^T a (once per distinct input: gate/up share it) and G += g^T g on all B*T
rows (no masking or copies). Empirical Fisher (gold labels) for the ratio; the true Fisher
(sampled labels) is timed too. Also collect / a full training step (forward, mean-reduced loss,
backward with weight gradients, AdamW step). Median of 3 runs, interleaved, after one warm-up
batch each. A torch.profiler table of both loops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import command_line, foreign_load, log, machine, percent, update  # noqa: E402
from _scale import CLEAN, SCALE, build_llama, collect, fmt_s, git_state, relative_error, timed_clean, token_batches  # noqa: E402

from unmemorize.targets import resolve_targets  # noqa: E402


def ideal_loop(model, batches, targets, covariance=True):
    """The least work collection needs (see module docstring); returns the A and G sums."""
    modules = {n: model.get_submodule(n) for n in targets}
    for p in model.parameters():
        p.requires_grad_(False)
    sums_a, sums_g, outputs, seen = {}, {}, {}, []

    def hook(name):
        def record(module, inputs, output):
            a = inputs[0]
            if covariance and not any(a is s for s in seen):
                seen.append(a)
                rows = a.detach().reshape(-1, a.shape[-1])  # (B*T, d_in), a view
                if name not in sums_a:
                    sums_a[name] = torch.zeros(rows.shape[1], rows.shape[1])
                sums_a[name].addmm_(rows.T, rows)
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
            outputs[name] = output
            return output

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        for batch in batches:
            ids = batch["input_ids"]
            logits = model(input_ids=ids).logits  # (B, T, V)
            labels = ids.roll(-1, dims=1)
            labels[:, -1] = -100  # the last position has no next token
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum")
            names = list(outputs)
            grads = torch.autograd.grad(loss, [outputs[n] for n in names])
            if covariance:
                for name, grad in zip(names, grads):
                    rows = grad.reshape(-1, grad.shape[-1])  # (B*T, d_out)
                    if name not in sums_g:
                        sums_g[name] = torch.zeros(rows.shape[1], rows.shape[1])
                    sums_g[name].addmm_(rows.T, rows)
            outputs.clear()
            seen.clear()
    finally:
        for handle in handles:
            handle.remove()
    return sums_a, sums_g


def training_steps(model, batches, optimizer):
    for p in model.parameters():
        p.requires_grad_(True)
    for batch in batches:
        ids = batch["input_ids"]
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def profile_table(fn, rows=12) -> tuple[str, float, float]:
    """torch.profiler table sorted by self CPU time; also the wall time and the summed self CPU time of ops."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    self_total = sum(e.self_cpu_time_total for e in averages) / 1e6
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40), wall, self_total


def bench_ideal(quick: bool) -> None:
    scale = SCALE["quick" if quick else "full"]
    shape, batch, seq = scale["model"], scale["batch"], scale["seq"]
    model = build_llama(**shape, seq_len=seq)
    params = sum(p.numel() for p in model.parameters())
    warm = token_batches(1, batch, seq, shape["vocab"], seed=1)
    batches = token_batches(scale["batches"], batch, seq, shape["vocab"], seed=2)
    tokens = scale["batches"] * batch * seq
    target_sets = {"all MLP": resolve_targets(model), "last block MLP": resolve_targets(model, layers=[shape["layers"] - 1])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    runs = {}
    for label, targets in target_sets.items():
        runs[f"ideal, {label}"] = lambda b, t=targets: ideal_loop(model, b, t)
        runs[f"collect empirical, {label}"] = lambda b, t=targets: collect(model, b, t, "empirical")
        runs[f"collect true, {label}"] = lambda b, t=targets: collect(model, b, t, "true")
    runs["training step (fwd + bwd + AdamW)"] = lambda b: training_steps(model, b, optimizer)
    runs["forward only (no_grad)"] = lambda b: torch.no_grad()(lambda: [model(input_ids=x["input_ids"]) for x in b])()
    runs["ideal without covariance GEMMs, all MLP"] = lambda b: ideal_loop(model, b, target_sets["all MLP"], covariance=False)
    log(f"ideal: {params / 1e6:.1f}M-parameter Llama {shape}, {scale['batches']} x {batch} x {seq} = {tokens:,} tokens")
    load = foreign_load()
    for name, run in runs.items():
        run(warm)
    repeats = 1 if quick else 3
    once = ("forward only (no_grad)", "ideal without covariance GEMMs, all MLP")  # breakdown rows: one clean run
    wanted = {name: 1 if name in once else repeats for name in runs}
    times = {name: [] for name in runs}  # clean runs only
    dirty = {name: [] for name in runs}  # (seconds, foreign load) of runs disturbed by other processes
    for attempt in range(2 * repeats):  # interleaved rounds until each run has its clean repeats
        for name, run in runs.items():
            if len(times[name]) >= wanted[name]:
                continue
            seconds, foreign, _ = timed_clean(run, batches, attempts=1)
            if foreign is None or foreign < CLEAN:
                times[name].append(seconds)
            else:
                dirty[name].append((seconds, foreign))
            log(f"  round {attempt + 1} {name}: {seconds:.2f} s (other processes {percent(foreign)})")
    for name in runs:  # too few clean runs: fall back on the disturbed ones, and say so
        if not times[name]:
            times[name] = [d[0] for d in dirty[name]]
    median = {n: statistics.median(t) for n, t in times.items()}

    # Same quantity? ideal's G sums vs collect's (empirical): the last position's g is exactly 0.
    check_targets = target_sets["all MLP"]
    _, ideal_g = ideal_loop(model, warm, check_targets)
    ours = collect(model, warm, check_targets, "empirical")
    same_g = max(relative_error(ideal_g[n] / ours.num_positions, ours.gradient[n]) for n in check_targets)

    profiles = {}
    for name, fn in (("collect empirical, all MLP", lambda: collect(model, batches[:2], check_targets, "empirical")),
                     ("ideal, all MLP", lambda: ideal_loop(model, batches[:2], check_targets))):
        table, wall, self_total = profile_table(fn)
        profiles[name] = {"table": table, "wall_s": wall, "ops_self_cpu_s": self_total}
    data = {"command": command_line(), "machine": machine(), "git": git_state(), "model": {**shape, "parameters": params},
            "batch": batch, "seq_len": seq, "timed_batches": scale["batches"], "tokens": tokens, "repeats": repeats,
            "foreign_load_at_start": load, "times_s": times, "disturbed_runs": dirty, "median_s": median, "targets": target_sets,
            "max_relative_error_G_ideal_vs_collect": same_g, "profiles": profiles}
    update("ideal", ideal_markdown(data), data, quick)


def ideal_markdown(d: dict) -> str:
    med = d["median_s"]
    train = med["training step (fwd + bwd + AdamW)"]
    lines = ["## Collection vs the ideal and vs a training step", "", f"Command: `{d['command']}`", "",
             f"Llama-style model from a config, random init, float32, sdpa attention: {d['model']['parameters']:,} parameters "
             f"(hidden {d['model']['hidden']}, intermediate {d['model']['intermediate']}, {d['model']['layers']} layers, "
             f"{d['model']['heads']} heads, vocab {d['model']['vocab']}); {d['timed_batches']} batches x {d['batch']} x "
             f"{d['seq_len']} = {d['tokens']:,} random tokens, after one warm-up batch; median of {d['repeats']} interleaved runs. "
             f"git {d['git']['head']}" + (f" with uncommitted changes in {', '.join(d['git']['uncommitted_in_src'])}" if d['git']['uncommitted_in_src'] else "") + ".",
             "", "| run | median | tokens/s | collect empirical / this |", "|---|---|---|---|"]
    for name, seconds in med.items():
        label = "all MLP" if name.endswith("all MLP") or not name.endswith("last block MLP") else "last block MLP"
        once = " (1 run)" if len(d["times_s"][name]) == 1 and d["repeats"] > 1 else ""
        ratio = med[f"collect empirical, {label}"] / seconds
        ratio_text = f"**{ratio:.2f}**" if name.startswith("ideal, ") or name.startswith("training") else f"{ratio:.2f}"
        lines.append(f"| {name}{once} | {fmt_s(seconds)} | {d['tokens'] / seconds:,.0f} | {ratio_text} |")
    lines += ["", f"collect / training step: all MLP {med['collect empirical, all MLP'] / train:.2f} (empirical), "
              f"{med['collect true, all MLP'] / train:.2f} (true); last block MLP {med['collect empirical, last block MLP'] / train:.2f} / "
              f"{med['collect true, last block MLP'] / train:.2f}.",
              f"Runs disturbed by other processes (> {CLEAN:.0%} of the CPUs; discarded unless a row had no clean run): "
              + (", ".join(f"{n}: " + ", ".join(f"{s:.1f} s at {f:.0%}" for s, f in runs) for n, runs in d["disturbed_runs"].items() if runs) or "none") + ".",
              f"Same work: the ideal's G / N equals collect's G to {d['max_relative_error_G_ideal_vs_collect']:.1e} (relative Frobenius, "
              "all MLP); the ideal's A also counts each window's last position (1/T more rows, no masking copy).",
              f"Other processes' CPU use at start: {percent(d['foreign_load_at_start'])}.", ""]
    for name, prof in d["profiles"].items():
        lines += [f"torch.profiler, {name}, 2 batches: wall {prof['wall_s']:.2f} s, summed self CPU time of ops {prof['ops_self_cpu_s']:.2f} s "
                  "(CPU time over 2 threads; the top rows):", "", "```", prof["table"].rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that it runs (writes results-collect-quick.*).")
    args = parser.parse_args()
    bench_ideal(args.quick)


if __name__ == "__main__":
    main()
