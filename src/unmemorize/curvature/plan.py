"""A plan before the run (``collect --dry-run``): what a collection will write, hold and take.

With b the accumulation bytes (4 for float32, 8 for float64) and the factor files in float32:

    factor files (disk)   = sum_modules 4 (d_in^2 + d_out^2) + the safetensors headers
    accumulators (memory) = per pass: b (sum_owners d_in^2 + sum_modules d_out^2), on each module's device
                            (gate_proj and up_proj read one input and share one A)
    checkpoint (disk)     = 2 x the largest pass's accumulators (a save writes the new sums before
                            it removes the old) + the finished passes' factors
    peak memory / device  = what the device holds before the warm-up (CUDA: the weights allocated
                            there; CPU: the process's resident memory: libraries, weights, tokenizer)
                            + the growth measured while the warm-up runs the largest pass
    time                  = tokens x passes / (tokens/s of the warm-up)

The warm-up runs a few real batches of the data through the real model for the modules of the
largest pass only (``--modules-per-pass``), so planning a run needs no more memory than the run:
its growth holds that pass's accumulators, the activations and gradients of a batch and the
normalized factors, each counted once. Growth is measured per device: CUDA's peak allocated bytes
(reset first), and on the CPU the process's peak resident size (Linux: reset through
/proc/self/clear_refs, read from VmHWM). Its speed is the difference between a timed run of three
batches and one of one batch, so the fixed costs of a call (weight fingerprints, copying the
factors out) are not taken for per-token work. The plan is one process's: under torchrun, run
``--dry-run`` alone (one rank holds the same model, batch and pass on its device).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections import defaultdict

import torch

from ..matrices import model_matrices
from ..errors import UnmemorizeError
from ..jsonio import strict_dumps
from .collect import _PassRecorder, _dummy_batch, _module_groups, collect_factors, expert_activation_owners
from .memory import reset_peak_resident, resident_bytes
from .objectives import NextTokenObjective

WARMUP_BATCHES = 4


def safetensors_bytes(tensors: dict[str, tuple[tuple[int, ...], int]]) -> int:
    """Size of a safetensors file holding ``name -> (shape, bytes per element)`` (header included)."""
    offset, header = 0, {}
    for name, (shape, size) in tensors.items():
        length = size
        for dim in shape:
            length *= dim
        header[name] = {"dtype": "F32" if size == 4 else "F64", "shape": list(shape), "data_offsets": [offset, offset + length]}
        offset += length
    header["__metadata__"] = {"format": "unmemorize-kfac", "version": "1"}
    text = len(json.dumps(header, separators=(",", ":")))
    return 8 + text + (-text % 8) + offset


def collection_plan(model, targets: list[str], config, objective=None) -> dict:
    """Bytes of the files, accumulators per device and checkpoint, from the model's shapes alone."""
    objective = objective or NextTokenObjective()
    modules = model_matrices(model)
    accumulate = 8 if config.dtype == "float64" else 4
    dense = {n: modules[n] for n in targets if modules[n].kind != "expert"}
    owners = _PassRecorder.find_owners(dense, _dummy_batch(model, objective)) if dense else {}
    owners.update(expert_activation_owners({n: modules[n] for n in targets}))  # an expert's gate and up: one A
    groups = _module_groups(targets, config.modules_per_pass)
    factor_files = 0
    per_pass, sums_files = [], []
    for names in groups:
        factor_files += safetensors_bytes({f"{n}.{k}": ((modules[n].shape[1 if k == "A" else 0],) * 2, 4)
                                           for n in names for k in "AG"})
        memory: dict[str, int] = defaultdict(int)
        sums = {}
        for name in names:
            d_out, d_in = modules[name].shape
            device = str(modules[name].weight().device)
            memory[device] += accumulate * d_out * d_out
            sums[f"{name}.G"] = ((d_out, d_out), accumulate)
            if owners[name] == name or owners[name] not in names:
                memory[device] += accumulate * d_in * d_in
                sums[f"{owners[name]}.A"] = ((d_in, d_in), accumulate)
                if modules[name].kind == "expert":
                    sums[f"{owners[name]}.N"] = ((1,), 8)
        per_pass.append(dict(memory))
        sums_files.append(safetensors_bytes(sums))
    largest = max(per_pass, key=lambda m: sum(m.values()))
    weights: dict[str, int] = defaultdict(int)
    for parameter in model.parameters():
        weights[str(parameter.device)] += parameter.numel() * parameter.element_size()
    finished = factor_files if len(groups) > 1 else 0  # finished passes wait in the checkpoint
    experts = [n for n in targets if modules[n].kind == "expert"]
    expert_bytes = sum(4 * (modules[n].shape[0] ** 2 + modules[n].shape[1] ** 2) for n in experts)  # as stored: A and G per matrix
    return {
        "modules": len(targets),
        "expert_matrices": len(experts),
        "expert_factor_bytes": expert_bytes,  # of the factor files: experts multiply them (one A and G per expert)
        "passes": len(groups),
        "factor_file_bytes": factor_files,
        "accumulator_bytes_per_device": largest,
        "checkpoint_sums_bytes": max(sums_files),
        "checkpoint_bytes": 2 * max(sums_files) + finished,
        "disk_bytes": factor_files + 2 * max(sums_files) + finished,
        "weight_bytes_per_device": dict(weights),
    }


def largest_pass(model, targets: list[str], config) -> list[str]:
    """The modules of the pass with the most accumulator bytes (all targets without --modules-per-pass)."""
    modules = model_matrices(model)
    groups = _module_groups(targets, config.modules_per_pass)
    return max(groups, key=lambda names: sum(modules[n].shape[0] ** 2 + modules[n].shape[1] ** 2 for n in names))


def warmup(model, tokenizer, data: str, targets: list[str], config) -> dict:
    """tokens/s and the memory growth per device of a few real batches over the largest pass's modules."""
    from ..data import iter_batches, iter_windows, list_data_files, pad_token_id
    from ..models import model_limits

    windows = iter_windows(list_data_files(data), tokenizer, config.seq_len, None, *model_limits(model), config.text_field)
    batches = []
    for batch in iter_batches(windows, config.batch_size, pad_token_id(tokenizer) if tokenizer is not None else 0):
        batches.append(batch)
        if len(batches) == WARMUP_BATCHES:
            break
    quiet = dataclasses.replace(config, progress=False, modules_per_pass=0, checkpoint_every=0)
    group = largest_pass(model, targets, config)
    cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    before = {str(d): torch.cuda.memory_allocated(d) for d in cuda}
    for device in cuda:
        torch.cuda.reset_peak_memory_stats(device)
    resident_before = resident_bytes("VmRSS")
    exact = reset_peak_resident()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    collect_factors(model, batches[:1], group, quiet)  # warm-up, not timed
    one = batches[1:2] or batches[:1]
    several = batches[1:] if len(batches) > 2 else batches
    start = time.perf_counter()
    collect_factors(model, one, group, quiet)
    seconds_one = time.perf_counter() - start
    start = time.perf_counter()
    collect_factors(model, several, group, quiet)
    seconds_several = time.perf_counter() - start
    tokens_one = sum(int(b["attention_mask"].sum()) for b in one)
    tokens_several = sum(int(b["attention_mask"].sum()) for b in several)
    if len(several) > len(one) and seconds_several > seconds_one:  # per-batch work only, without the fixed costs of a call
        speed = (tokens_several - tokens_one) / (seconds_several - seconds_one)
    else:
        speed = tokens_several / seconds_several
    growth = {str(d): max(0, torch.cuda.max_memory_allocated(d) - before[str(d)]) for d in cuda}
    if exact and resident_before is not None:
        growth["cpu"] = max(0, (resident_bytes("VmHWM") or 0) - resident_before)
    else:
        growth["cpu"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - maxrss_before)
    return {"tokens_per_second": speed, "warmup_tokens": tokens_one + tokens_several, "warmup_seconds": round(seconds_one + seconds_several, 3),
            "warmup_modules": len(group), "growth_bytes_per_device": growth, "resident_bytes_before": resident_before,
            "cpu_peak_measure": "VmHWM reset" if exact else "ru_maxrss growth"}


DRY_RUN_READ_TOKENS = 1_000_000  # what a dry run without --max-tokens reads ahead (about 5 s of tokenization)


def print_collect_plan(job) -> dict:
    """``collect --dry-run``: load the model, plan, warm up, print; write nothing."""
    from ..models import load_model
    from ..targets import resolve_targets
    from .distributed import launched_by_torchrun
    from ..paths import check_planned_output
    from .job import job_inputs, read_job_data, refuse_offloaded_targets, refuse_unresumed_checkpoint

    if launched_by_torchrun():
        raise UnmemorizeError("collect --dry-run plans one process; run it without torchrun (one rank holds the same model, "
                              "batch and pass on its device)")
    config = job.config
    out = check_planned_output(job.out, job.overwrite, job_inputs(job))  # the run this plans would not be refused
    refuse_unresumed_checkpoint(job, out)
    # what the run reads ahead: its data errors and the exact tokens the estimate is for; without --max-tokens only the
    # first DRY_RUN_READ_TOKENS (a dry run stays quick; the run itself reads the whole corpus ahead)
    ahead = read_job_data(job, limit=None if config.max_tokens else DRY_RUN_READ_TOKENS)
    model, tokenizer = load_model(job.model, job.model_dtype, job.device, job.trust_remote_code, job.device_map, job.max_memory)
    targets = resolve_targets(model, job.targets, job.layers, job.projections)
    refuse_offloaded_targets(model, targets)
    plan = collection_plan(model, targets, config)
    speed = warmup(model, tokenizer, job.data, targets, config)
    tokens = ahead["tokens"] if config.max_tokens else None  # exactly what the run reads; unknown without a budget
    plan["warmup"] = speed
    plan["read_ahead"] = ahead
    # three significant digits: a fast run's estimate stays positive (0.04 s, not 0.0); the read ahead included
    plan["estimated_seconds"] = float(f"{tokens * plan['passes'] / speed['tokens_per_second'] + ahead['seconds']:.3g}") if tokens else None
    growth = speed["growth_bytes_per_device"]
    held = {d: b for d, b in plan["weight_bytes_per_device"].items() if d.startswith("cuda")}
    held["cpu"] = speed["resident_bytes_before"] if speed["resident_bytes_before"] is not None else plan["weight_bytes_per_device"].get("cpu", 0)
    devices = sorted(d for d in set(held) | set(growth) if d != "meta")
    plan["peak_bytes_per_device"] = {d: held.get(d, 0) + growth.get(d, 0) for d in devices}
    lines = [f"plan for {len(targets)} modules of {type(model).__name__}, {plan['passes']} pass(es), --dtype {config.dtype}:",
             f"  factor files       {_size(plan['factor_file_bytes'])}" + (
                 f" ({plan['expert_matrices']} of the {len(targets)} matrices are experts' and hold "
                 f"{_size(plan['expert_factor_bytes'])}: every expert has its own A and G)" if plan["expert_matrices"] else ""),
             f"  checkpoint (peak)  {_size(plan['checkpoint_bytes'])}",
             f"  disk needed        {_size(plan['disk_bytes'])}"]
    for device in devices:
        what = "resident before" if device == "cpu" else "weights"
        lines.append(f"  peak memory {device:<6} {_size(plan['peak_bytes_per_device'][device])} ({what} {_size(held.get(device, 0))}, "
                     f"+ {_size(growth.get(device, 0))} while the largest pass runs: accumulators "
                     f"{_size(plan['accumulator_bytes_per_device'].get(device, 0))} and a batch's work)")
    if tokens:
        lines.append(f"  data               {tokens} tokens in {ahead['windows']} windows (read ahead in {ahead['seconds']:.1f} s)")
    else:
        lines.append(f"  data               no --max-tokens: the first {ahead['tokens']} tokens checked in {ahead['seconds']:.1f} s; "
                     "the run reads the whole corpus ahead")
    lines.append(f"  speed              {speed['tokens_per_second']:.0f} tokens/s (warm-up: {speed['warmup_tokens']} tokens)")
    eta = f"{plan['estimated_seconds']:.0f} s" if tokens else "unknown (no --max-tokens budget)"
    lines.append(f"  estimated time     {eta} for {tokens or '?'} tokens x {plan['passes']} pass(es), one process (the read ahead included)")
    print("\n".join(lines))
    print(strict_dumps(plan, indent=None))  # the same, for scripts: the last line (strict JSON)
    return plan


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)
