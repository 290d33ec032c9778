#!/usr/bin/env python
"""K-FAC collection at the users' scale (issue 10): against the ideal, against the peers, at 7B shapes.

    .venv/bin/python benchmarks/collect_scale.py                   # every part, ~35 min on 2 cores
    .venv/bin/python benchmarks/collect_scale.py --no-eigh-11008   # ~25 min: slice without the 11008 eigh and edits
    .venv/bin/python benchmarks/collect_scale.py --quick           # smoke run of every part, ~8 min
    .venv/bin/python benchmarks/collect_scale.py --part ideal      # one part (repeatable)

Minutes per part on an idle 2-core machine: selection 1.5, ideal 7, peers 4, slice 18 (8 of them
the 11008 eigh in float32 and float64, 1 the edits), gloo 2. Timed runs wait for other processes
to go quiet and are redone when disturbed, so a shared machine makes it longer, not wrong.

Parts (each writes its section of benchmarks/results-collect.md and its key of
benchmarks/results-collect.json, starting with the command that produced it; with several parts
each runs in a fresh child process, so peak memory and thread pools are per part):

ideal      ``collect_factors`` / the ideal on the same model and tokens. The ideal is a minimal
           hand-written loop: parameters frozen, hooks on the targets, the earliest target's
           output made a leaf that requires grad (so backward stops there and forms no weight
           gradient), ``autograd.grad`` to every target output, and the covariance GEMMs
           A += a^T a (once per distinct input: gate/up share it) and G += g^T g on all B*T rows
           (no masking or copies). Empirical Fisher (gold labels) for the ratio; the true Fisher
           (sampled labels) is timed too. Also collect / a full training step (forward,
           mean-reduced loss, backward with weight gradients, AdamW step). Median of 3 runs,
           interleaved, after one warm-up batch each. A torch.profiler table of both loops.
peers      ours vs curvlinops' ``KFACLinearOperator`` (KFAC-expand) and kronfluence's
           ``fit_covariance_matrices`` on the same model and tokens: wall time (empirical and
           true/MC Fisher) and agreement of A and G (relative Frobenius error, empirical Fisher,
           after each library's documented scale convention; see ``bench_peers``).
slice      7B-shaped decoder layers (hidden 4096, intermediate 11008, 32 heads, vocab 32000) in
           bfloat16 with float32 factors: bfloat16 vs float32 GEMMs at the up_proj shape; tokens/s
           of collecting gate/up/down with the bfloat16 model as loaded (1 layer, 32 tokens: it is
           ~40x slower) and with its Linear layers computed in float32 (1 and 2 layers); peak RSS,
           factor bytes, eigh per matrix (4096 and 11008, float32 and float64, on the collected
           factors), edit time per matrix, and a projection to 20M tokens x 32 layers.
gloo       1 vs 2 processes of ``torchrun -m unmemorize collect`` (gloo) on the same work, when
           ``unmemorize.curvature.distributed`` exists; else "skipped".
selection  runs benchmarks/selection_under_load.py.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _report import ForeignLoad, command_line, foreign_load, log, machine, percent, update, wait_for_quiet  # noqa: E402
from unmemorize.curvature import CollectConfig, collect_factors  # noqa: E402
from unmemorize.targets import resolve_targets  # noqa: E402

PARTS = ("selection", "ideal", "peers", "slice", "gloo")
# name: (model shape, batch size, seq len, timed batches)
SCALE = {
    "full": dict(model=dict(hidden=512, intermediate=1376, layers=4, heads=8, vocab=4096), batch=8, seq=256, batches=12, peer_batches=8),
    "quick": dict(model=dict(hidden=128, intermediate=344, layers=2, heads=4, vocab=1024), batch=4, seq=64, batches=3, peer_batches=2),
}
SLICE = dict(hidden=4096, intermediate=11008, heads=32, vocab=32000)


# --------------------------------------------------------------------------------------------
# shared
# --------------------------------------------------------------------------------------------


def build_llama(hidden, intermediate, layers, heads, vocab, seq_len=512, dtype=torch.float32, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, vocab_size=vocab, max_position_embeddings=max(seq_len, 128),
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def token_batches(count, batch, seq, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (batch, seq), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def collect(model, batches, targets, fisher, dtype="float32"):
    config = CollectConfig(fisher=fisher, seq_len=batches[0]["input_ids"].shape[1], batch_size=batches[0]["input_ids"].shape[0],
                           max_tokens=None, dtype=dtype, progress=False)
    return collect_factors(model, batches, targets, config)


def timed(fn, *args):
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


CLEAN = 0.05  # a run is clean when other processes used under 5% of the CPUs meanwhile


def timed_clean(fn, *args, attempts: int = 3) -> tuple[float, float | None, object]:
    """Wait for a quiet machine, then time ``fn``; again (up to ``attempts`` runs) while other
    processes used more than CLEAN of the CPUs meanwhile. Returns the least disturbed run's
    seconds, the foreign load during it, and its result."""
    best = None
    for _ in range(attempts):
        wait_for_quiet(CLEAN)
        with ForeignLoad() as load:
            seconds, result = timed(fn, *args)
        if best is None or (load.fraction or 0.0) < (best[1] or 0.0):
            best = (seconds, load.fraction, result)
        if load.fraction is None or load.fraction < CLEAN:
            break
        log(f"  disturbed run ({seconds:.1f} s, other processes {load.fraction:.0%}): again")
    return best


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.double()
    return float(torch.linalg.norm(ours.double() - theirs) / torch.linalg.norm(theirs))


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src/unmemorize").splitlines() if line.strip()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_in_src": dirty}


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


# --------------------------------------------------------------------------------------------
# ideal
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------------


def curvlinops_factors(model, batches, targets, fisher):
    """curvlinops' KFAC (KFACType.EXPAND) with a SUM-reduced CrossEntropyLoss on (ids[:, :-1], ids[:, 1:]).

    Feeding the truncated windows makes every position a Linear layer sees a counted position.
    Convention: A_cl = (1 / (num_data * (T-1))) sum a a^T = our A; with reduction='sum' G_cl is
    the SUM over positions of g g^T (loss-scale correction 1), so our G = G_cl / N, N = all
    counted positions (as tests/oracles/curvlinops_kfac.py documents for one batch).
    """
    from curvlinops import FisherType, KFACLinearOperator, KFACType

    class FlatLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            logits = self.lm(input_ids=ids, use_cache=False).logits
            return logits.reshape(-1, logits.shape[-1])

    modules = {n: model.get_submodule(n) for n in targets}
    params = [m.weight for m in modules.values()]
    data = [(b["input_ids"][:, :-1].contiguous(), b["input_ids"][:, 1:].reshape(-1)) for b in batches]
    sequences = sum(x.shape[0] for x, _ in data)
    positions = sequences * (data[0][0].shape[1])
    for p in params:
        p.requires_grad_(True)
    try:
        kfac = KFACLinearOperator(FlatLogits(model), torch.nn.CrossEntropyLoss(reduction="sum"), params, data, progressbar=False,
                                  check_deterministic=False, seed=0,
                                  fisher_type={"empirical": FisherType.EMPIRICAL, "true": FisherType.MC}[fisher], mc_samples=1,
                                  kfac_approx=KFACType.EXPAND, num_per_example_loss_terms=data[0][0].shape[1],
                                  separate_weight_and_bias=True, num_data=sequences)
        kfac.compute_kronecker_factors()
    finally:
        for p in params:
            p.requires_grad_(False)
    state = kfac.state_dict()
    return {n: (state["input_covariances"][f"lm.{n}"], state["gradient_covariances"][f"lm.{n}"] / positions) for n in targets}


def kronfluence_factors(model, batches, targets, fisher, workdir):
    """kronfluence's ``fit_covariance_matrices`` (covariance stage of its factor fitting) on a deep copy of the model.

    Convention: kronfluence stores SUMS of a a^T and g g^T and the counts of rows it summed;
    its eigendecomposition stage divides by the counts. g is the gradient of the task's loss,
    which we make SUM-reduced (as kronfluence's docs require for K-FAC), on (ids[:, :-1],
    ids[:, 1:]): A = A_sum / count_A and G = G_sum / count_G are then our A and G. The true
    Fisher samples labels with torch.multinomial, as kronfluence's language-model examples do.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    class NextToken(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            logits = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), dim=-1), num_samples=1).flatten()
            else:
                labels = batch["labels"].reshape(-1)
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return list(targets)

        def get_attention_mask(self, batch):
            return None

    rows = [{"input_ids": ids[:-1], "labels": ids[1:]} for b in batches for ids in b["input_ids"]]

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            return rows[index]

    task = NextToken()
    wrapped = prepare_model(copy.deepcopy(model), task)
    analyzer = Analyzer(analysis_name="bench", model=wrapped, task=task, cpu=True, disable_tqdm=True, output_dir=str(workdir),
                        log_level=logging.WARNING)
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))
    args = FactorArguments(strategy="kfac", use_empirical_fisher=fisher == "empirical", covariance_max_examples=None,
                           activation_covariance_dtype=torch.float32, gradient_covariance_dtype=torch.float32)
    start = time.perf_counter()
    analyzer.fit_covariance_matrices(f"cov_{fisher}", Windows(), per_device_batch_size=batches[0]["input_ids"].shape[0],
                                     factor_args=args, overwrite_output_dir=True)
    seconds = time.perf_counter() - start
    cov = analyzer.load_covariance_matrices(f"cov_{fisher}")
    out = {}
    for n in targets:
        a = cov["activation_covariance"][n] / cov["num_activation_covariance_processed"][n]
        g = cov["gradient_covariance"][n] / cov["num_gradient_covariance_processed"][n]
        out[n] = (a, g)
    return out, seconds


def bench_peers(quick: bool) -> None:
    scale = SCALE["quick" if quick else "full"]
    shape, batch, seq = scale["model"], scale["batch"], scale["seq"]
    model = build_llama(**shape, seq_len=seq)
    targets = resolve_targets(model)
    batches = token_batches(scale["peer_batches"], batch, seq, shape["vocab"], seed=2)
    warm = token_batches(1, batch, seq, shape["vocab"], seed=1)
    tokens = len(batches) * batch * seq
    log(f"peers: {len(targets)} MLP modules, {tokens:,} tokens")
    load = foreign_load()
    rows, agreement, factors, versions = [], {}, {}, {}
    workdir = Path(tempfile.mkdtemp(prefix="kronfluence-bench-"))
    have_kronfluence = importlib.util.find_spec("kronfluence") is not None
    try:
        for fisher in ("empirical", "true"):
            collect(model, warm, targets, fisher)
            seconds, foreign, ours = timed_clean(collect, model, batches, targets, fisher)
            rows.append({"library": "unmemorize collect_factors", "fisher": fisher, "seconds": seconds, "foreign_load": foreign})
            log(f"  unmemorize {fisher}: {seconds:.2f} s")
            if fisher == "empirical":
                factors["unmemorize"] = {n: (ours.activation[n], ours.gradient[n]) for n in targets}

            curvlinops_factors(model, warm, targets, fisher)
            seconds, foreign, theirs = timed_clean(curvlinops_factors, model, batches, targets, fisher)
            rows.append({"library": "curvlinops KFACLinearOperator (expand)", "fisher": "mc (1 sample)" if fisher == "true" else fisher,
                         "seconds": seconds, "foreign_load": foreign})
            log(f"  curvlinops {fisher}: {seconds:.2f} s")
            if fisher == "empirical":
                factors["curvlinops"] = theirs

            if have_kronfluence:
                kronfluence_factors(model, warm, targets, fisher, workdir)
                seconds_total, foreign, (theirs, seconds_fit) = timed_clean(kronfluence_factors, model, batches, targets, fisher, workdir)
                rows.append({"library": "kronfluence fit_covariance_matrices", "fisher": fisher, "seconds": seconds_fit,
                             "seconds_with_setup": seconds_total, "foreign_load": foreign})
                log(f"  kronfluence {fisher}: {seconds_fit:.2f} s ({seconds_total:.2f} s with deepcopy + wrapping)")
                if fisher == "empirical":
                    factors["kronfluence"] = theirs
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for library in ("curvlinops", "kronfluence"):
        if library in factors:
            errors = {n: (relative_error(factors["unmemorize"][n][0], factors[library][n][0]),
                          relative_error(factors["unmemorize"][n][1], factors[library][n][1])) for n in targets}
            agreement[library] = {"max_A": max(e[0] for e in errors.values()), "max_G": max(e[1] for e in errors.values()),
                                  "per_module": errors}
    for library in ("curvlinops", "kronfluence"):
        try:
            from importlib.metadata import version
            versions[library] = version({"curvlinops": "curvlinops-for-pytorch", "kronfluence": "kronfluence"}[library])
        except Exception:  # noqa: BLE001 -- not installed
            versions[library] = None
    data = {"command": command_line(), "machine": machine(), "git": git_state(), "model": shape, "batch": batch, "seq_len": seq,
            "tokens": tokens, "targets": targets, "foreign_load_at_start": load, "rows": rows, "agreement": agreement,
            "versions": versions, "kronfluence_installed": have_kronfluence}
    update("peers", peers_markdown(data), data, quick)


def peers_markdown(d: dict) -> str:
    ours = {r["fisher"]: r["seconds"] for r in d["rows"] if r["library"].startswith("unmemorize")}
    lines = ["## Side by side with curvlinops and kronfluence", "", f"Command: `{d['command']}`", "",
             f"Same model as the ideal part ({d['model']}), same {d['tokens']:,} tokens ({d['tokens'] // (d['batch'] * d['seq_len'])} "
             f"batches x {d['batch']} x {d['seq_len']}), all {len(d['targets'])} MLP projections, float32 factors; "
             "one timed run each after a one-batch warm-up. "
             f"Versions: curvlinops-for-pytorch {d['versions'].get('curvlinops')}, kronfluence {d['versions'].get('kronfluence')}.",
             "", "| library | Fisher | seconds | tokens/s | x ours | other processes' CPU use |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        key = "empirical" if r["fisher"] == "empirical" else "true"
        extra = f" ({r['seconds_with_setup']:.2f} s with deepcopy + wrapping)" if "seconds_with_setup" in r else ""
        lines.append(f"| {r['library']} | {r['fisher']} | {r['seconds']:.2f}{extra} | {d['tokens'] / r['seconds']:,.0f} | "
                     f"{r['seconds'] / ours[key]:.2f} | {percent(r.get('foreign_load'))} |")
    lines += ["", "Agreement with our A and G (empirical Fisher: gold next-token labels, so all three compute the same "
              "quantity; relative Frobenius error ||ours - theirs|| / ||theirs||, worst module):", "",
              "| library | scale convention applied | A | G |", "|---|---|---|---|"]
    conventions = {
        "curvlinops": "A as is (mean over num_data x (T-1) positions); G / N (SUM-reduced loss: G is a sum over positions)",
        "kronfluence": "A / rows summed, G / rows summed (it stores sums and counts; its eigendecomposition stage divides)",
    }
    for library, a in d["agreement"].items():
        lines.append(f"| {library} | {conventions[library]} | {a['max_A']:.1e} | {a['max_G']:.1e} |")
    if not d["kronfluence_installed"]:
        lines.append("\nkronfluence is not installed: skipped.")
    lines += ["", "Both peers get the windows truncated to T-1 tokens with labels ids[1:], so every position their hooks see "
              "is one of our counted positions. The true Fisher differs by construction (each library draws its own labels: "
              "ours by inverse CDF from a seeded generator, curvlinops' MC with 1 sample, kronfluence's task with "
              "torch.multinomial as in its examples), so only its time is compared. kronfluence's time includes writing its "
              "factors to a temporary folder.",
              f"Other processes' CPU use at start: {percent(d['foreign_load_at_start'])}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# 7B slice
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# gloo
# --------------------------------------------------------------------------------------------


def bench_gloo(quick: bool) -> None:
    if importlib.util.find_spec("unmemorize.curvature.distributed") is None:
        print("skipped: distributed collect not available")
        update("gloo", "## 1 vs 2 gloo processes\n\nskipped: distributed collect not available "
               "(no `unmemorize.curvature.distributed`).\n", {"skipped": True}, quick)
        return
    import json as _json

    from unmemorize.curvature import load_factors

    scale = SCALE["quick" if quick else "full"]
    shape, batch, seq = scale["model"], scale["batch"], scale["seq"]
    work = Path(tempfile.mkdtemp(prefix="gloo-bench-"))
    try:
        model = build_llama(**shape, seq_len=seq)
        model.save_pretrained(work / "model")
        windows = token_batches(scale["batches"], batch, seq, shape["vocab"], seed=2)
        with open(work / "data.jsonl", "w") as f:
            for b in windows:
                for ids in b["input_ids"]:
                    f.write(_json.dumps({"input_ids": ids.tolist()}) + "\n")
        tokens = scale["batches"] * batch * seq
        common = ["-m", "unmemorize", "collect", "--model", str(work / "model"), "--data", str(work / "data.jsonl"),
                  "--seq-len", str(seq), "--batch-size", str(batch), "--max-tokens", str(tokens), "--fisher", "empirical",
                  "--no-progress"]
        runs = {
            "python -m unmemorize collect (1 process, 2 threads)": [sys.executable, *common],
            "torchrun --nproc-per-node 1": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", *common],
            "torchrun --nproc-per-node 2 (gloo)": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *common],
        }
        rows, outs = [], {}
        for name, argv in runs.items():
            out = work / f"out{len(rows)}"
            log(f"gloo: {name}")
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            wait_for_quiet(CLEAN)
            with ForeignLoad() as load:  # children's CPU time counts as ours once they have exited
                start = time.perf_counter()
                proc = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - start
            rows.append({"run": name, "command": " ".join(a if a != sys.executable else "python" for a in argv), "seconds": seconds,
                         "returncode": proc.returncode, "stderr_tail": proc.stderr[-1500:], "foreign_load": load.fraction})
            log(f"  {seconds:.1f} s, rc {proc.returncode}, other processes {percent(load.fraction)}")
            if proc.returncode == 0:
                outs[name] = load_factors(out)
                rows[-1]["collect_seconds"] = outs[name].metadata.get("seconds")  # as factors.json records it (rank 0)
        names = list(outs)
        if len(names) > 1:
            base = outs[names[0]]
            for row in rows:
                other = outs.get(row["run"])
                if other is not None:
                    row["max_relative_error_vs_first"] = max(
                        max(relative_error(other.activation[n], base.activation[n]), relative_error(other.gradient[n], base.gradient[n]))
                        for n in base.modules)
        data = {"command": command_line(), "machine": machine(), "git": git_state(), "tokens": tokens, "rows": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = ["## 1 vs 2 gloo processes (same work)", "", f"Command: `{data['command']}`", "",
             f"{tokens:,} tokens (pre-tokenized .jsonl windows of {seq}), empirical Fisher, the ideal part's model saved as a folder; "
             "wall time of the whole command (start-up, model load and file writing included) and the collection time "
             "factors.json records; torchrun gives each of its processes OMP_NUM_THREADS=1 unless it is set.", "",
             "| run | wall | collection (factors.json) | tokens/s of collection | factors vs the first row | exit |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        err, inner = r.get("max_relative_error_vs_first"), r.get("collect_seconds")
        lines.append(f"| `{r['command'].replace(str(work), '$WORK')}` | {r['seconds']:.1f} s | "
                     f"{'' if inner is None else f'{inner:.1f} s'} | {'' if not inner else f'{tokens / inner:,.0f}'} | "
                     f"{'' if err is None else f'{err:.1e}'} | {r['returncode']} |")
    loads = [r["foreign_load"] for r in rows if r.get("foreign_load") is not None]
    lines += ["", f"Largest share of the CPUs other processes used during a run: {percent(max(loads) if loads else None)}. "
              "On 2 cores, 2 processes of 1 thread use the same cores as 1 process of 2 threads: no speed-up is expected here; "
              "the row checks that the split gives the same factors and costs nothing extra."]
    failed = [r for r in rows if r["returncode"] != 0]
    for r in failed:
        lines += ["", f"{r['run']} failed:", "```", r["stderr_tail"].rstrip(), "```"]
    update("gloo", "\n".join(lines) + "\n", data, quick)


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def run_child(extra: list[str]) -> dict:
    """Run this script in a fresh process; it prints one JSON object as its last stdout line."""
    proc = subprocess.run([sys.executable, __file__, *extra], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {extra} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS, help="Run only this part (repeatable; default: all).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: checks that every part runs (~2 min).")
    parser.add_argument("--no-eigh-11008", action="store_true",
                        help="slice: skip eigh of the 11008 x 11008 factor (~100 s float32, ~240 s float64) and the edits that need it.")
    parser.add_argument("--slice-layers", type=int, help=argparse.SUPPRESS)  # internal: one slice child
    parser.add_argument("--slice-mode", choices=("bf16", "upcast"), default="upcast", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slice_layers:
        print(json.dumps(bench_slice_layers(args.slice_layers, args.slice_mode, args.quick), default=str))
        return
    parts = args.part or list(PARTS)
    if len(parts) > 1:
        start = time.perf_counter()
        for part in parts:
            argv = [sys.executable, __file__, "--part", part] + (["--quick"] if args.quick else []) + \
                (["--no-eigh-11008"] if args.no_eigh_11008 else [])
            log(f"== part {part}")
            if subprocess.run(argv).returncode != 0:
                log(f"part {part} failed")
        log(f"all parts: {time.perf_counter() - start:.0f} s")
        return
    part = parts[0]
    if part == "selection":
        argv = [sys.executable, str(HERE / "selection_under_load.py")] + (["--quick"] if args.quick else [])
        raise SystemExit(subprocess.run(argv).returncode)
    if part == "slice":
        bench_slice(args.quick, args.no_eigh_11008)
    else:
        {"ideal": bench_ideal, "peers": bench_peers, "gloo": bench_gloo}[part](args.quick)


if __name__ == "__main__":
    main()
