"""A collection job as ``unmemorize collect`` runs it: one process or ``torchrun`` ranks, the output
claimed by rank 0 before any work, checkpoints and ``--resume``, one factor folder at the end.

Which combination to use (README, "Running on a 7B model"):

* the model fits on one GPU  -> data parallel: ``torchrun --nproc-per-node N -m unmemorize collect
  --device cuda ...`` (each rank a whole model, the windows shared);
* it does not                -> one process, ``--device-map auto`` (accelerate places the layers
  over the visible GPUs and the CPU; each factor accumulates on its module's device).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UnmemorizeError
from .checkpoint import Checkpoint, checkpoint_folder
from .collect import FLOAT16_REFUSAL, CollectConfig, collect_from_files, collection_settings
from .distributed import DEFAULT_TIMEOUT_SECONDS, ProcessGroup, init_from_environment, launched_by_torchrun, shutdown
from .factors import ShardedFactorWriter, save_factors
from .memory import reset_peak_resident, resident_bytes


@dataclass
class CollectJob:
    """What the command line gives a collection (model loading, data, targets, output)."""

    model: str
    data: str
    out: str
    config: CollectConfig
    model_dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    max_memory: dict | None = None  # accelerate's max_memory per device, with device_map
    trust_remote_code: bool = False
    targets: list[str] | None = None
    layers: str | None = None
    projections: str | None = None
    overwrite: bool = False
    resume: bool = False
    process_group_timeout: float = DEFAULT_TIMEOUT_SECONDS  # seconds a torchrun rank waits at a collective


def run_collect_job(job: CollectJob) -> dict | None:
    """Run the job; returns the factor metadata on rank 0 (None on the other ranks)."""
    from ..paths import command_output

    if launched_by_torchrun() and job.device_map:
        raise UnmemorizeError("--device-map splits one model over devices; it does not combine with torchrun's data "
                              "parallel ranks (use one or the other, see README 'Running on a 7B model')")
    if job.model_dtype == "float16":  # before any loading
        raise UnmemorizeError(f"--model-dtype float16: {FLOAT16_REFUSAL}")
    if not job.process_group_timeout > 0:
        raise UnmemorizeError(f"--process-group-timeout must be a positive number of seconds, got {job.process_group_timeout}")
    group = init_from_environment(job.device, job.process_group_timeout) if launched_by_torchrun() else ProcessGroup(device=None)
    released = False
    try:
        if not group.is_main:
            refusal = group.broadcast_text("")  # empty: rank 0's checks passed
            if refusal:
                raise UnmemorizeError(f"rank {group.rank}: stopped because rank 0 refused the run: {refusal}")
            check_shared_output(group, None)
            _collect(job, group, None)
            return None
        with command_output(job.out, job.overwrite, {"--model": job.model, "--data": job.data}) as out:
            folder = checkpoint_folder(out)
            if (folder / "state.json").is_file() and not job.resume:
                raise UnmemorizeError(f"{folder} holds the checkpoint of an interrupted collection of {job.out}: pass --resume to "
                                      "continue it, or delete it to start over")
            released = True
            group.broadcast_text("")
            check_shared_output(group, out)
            try:
                return _collect(job, group, out)
            except BaseException:
                if (folder / "state.json").is_file():
                    print(f"checkpoint kept in {folder}: rerun with --resume to continue", file=sys.stderr)
                raise
    except UnmemorizeError as exc:
        if group.is_main and group.distributed and not released:
            _release_peers(group, str(exc))
        raise
    finally:
        shutdown()


def check_shared_output(group: ProcessGroup, out: Path | None) -> None:
    """Under torchrun, every rank must see --out's folder: the checkpoint lives beside the output, and a
    restart that puts rank 0 on another node must find it (else it would start over). Rank 0 (``out``)
    writes a marker there, every rank looks for it by its absolute path, all stop with one message if
    any cannot see it."""
    if not group.distributed:
        return
    import os
    import tempfile

    marker = ""
    if group.is_main:
        handle, marker = tempfile.mkstemp(prefix=f".{out.name}.shared-check-", dir=out.parent)
        os.close(handle)
    marker = group.broadcast_text(marker)
    try:
        seen = group.same_on_all_ranks(1 if Path(marker).is_file() else 0)
    finally:
        if group.is_main:
            Path(marker).unlink(missing_ok=True)
    if not seen:
        raise UnmemorizeError(f"rank {group.rank}: not every rank sees the folder of --out ({Path(marker).parent}): with several "
                              "nodes, put --out on a file system they all share (the checkpoint lives beside it, and a restart "
                              "may start rank 0 on another node)")


def refuse_offloaded_targets(model, targets: list[str]) -> None:
    """--device-map may leave modules offloaded (weights on 'meta', streamed in per forward): their A and G
    could be collected, but not their weight fingerprints, nor any edit; refuse, naming them."""
    from ..matrices import offloaded_matrices

    offloaded = offloaded_matrices(model, targets)
    if offloaded:
        shown = ", ".join(offloaded[:4]) + (f" and {len(offloaded) - 4} more" if len(offloaded) > 4 else "")
        raise UnmemorizeError(f"--device-map left {len(offloaded)} target module(s) offloaded to the CPU or disk (weights on 'meta'): "
                              f"{shown}; give the GPUs more room with --max-memory, or target fewer modules (--layers)")


def _growth_per_rank(group: ProcessGroup, resident_before: int | None) -> list[int] | None:
    """Each rank's peak resident memory growth over its collection (Linux VmHWM after a reset), gathered
    on every rank: what each process of a torchrun job needed beyond its model. None where not measurable."""
    if resident_before is None:
        return None
    growth = torch.zeros(group.world_size, dtype=torch.float64, device=group.device)
    growth[group.rank] = max(0, (resident_bytes("VmHWM") or 0) - resident_before)
    group.all_reduce([growth])
    return [int(v) for v in growth.cpu().tolist()]


def _release_peers(group: ProcessGroup, message: str) -> None:
    """Rank 0 refused the run before the others started: they stop with its message."""
    try:
        group.broadcast_text(message or "refused")
    except Exception:  # noqa: BLE001 - peers may be gone already
        pass


def _collect(job: CollectJob, group: ProcessGroup, out: Path | None) -> dict | None:
    from ..data import list_data_files
    from ..models import load_model
    from ..targets import resolve_targets, untouched, untouched_note
    from .objectives import NextTokenObjective

    device = str(group.device) if group.distributed else job.device
    model, tokenizer = load_model(job.model, job.model_dtype, device, job.trust_remote_code, job.device_map, job.max_memory)
    targets = resolve_targets(model, job.targets, job.layers, job.projections)
    refuse_offloaded_targets(model, targets)
    config = job.config
    checkpoint = None
    if config.checkpoint_every != 0:
        settings = collection_settings(model, targets, list_data_files(job.data), config, NextTokenObjective.name) if group.is_main else {}
        checkpoint = Checkpoint(checkpoint_folder(out) if out is not None else Path("."), settings)
        if group.is_main and job.resume and not checkpoint.exists():
            print(f"no checkpoint of {job.out} to resume: starting from the beginning", file=sys.stderr)
    if group.is_main and job.model_dtype in ("bfloat16", "float16") and next(model.parameters()).device.type == "cpu":
        print(f"note: --model-dtype {job.model_dtype} on the CPU: CPUs without native {job.model_dtype} GEMMs run the backward "
              "hundreds of times slower (docs/results/benchmarks/results-collect.md); --model-dtype float32 is faster there", file=sys.stderr)
    if group.is_main:
        ranks = f" on {group.world_size} processes" if group.distributed else ""
        print(f"collecting {config.fisher} Fisher factors for {len(targets)} modules of {type(model).__name__}{ranks}", file=sys.stderr)
        if note := untouched_note(model, targets):
            print(note, file=sys.stderr)
    sharded = 0 < config.modules_per_pass < len(targets)
    resident_before = resident_bytes("VmRSS") if reset_peak_resident() else None  # each rank's growth, recorded in factors.json
    if not group.is_main:
        collect_from_files(model, tokenizer, job.data, targets, config, on_pass=(lambda *a: None) if sharded else None,
                           group=group, checkpoint=checkpoint)
        _growth_per_rank(group, resident_before)
        return None
    if sharded:  # bounded memory: one shard per pass, written as it ends
        with ShardedFactorWriter(out, model, job.overwrite) as writer:
            factors = collect_from_files(model, tokenizer, job.data, targets, config, on_pass=writer.write_pass, group=group,
                                         checkpoint=checkpoint)
            factors.metadata["peak_resident_growth_bytes_per_rank"] = _growth_per_rank(group, resident_before)
            factors.metadata["untouched"] = untouched(model, targets)
            writer.finish(factors)
    else:
        factors = collect_from_files(model, tokenizer, job.data, targets, config, group=group, checkpoint=checkpoint)
        factors.metadata["peak_resident_growth_bytes_per_rank"] = _growth_per_rank(group, resident_before)
        factors.metadata["untouched"] = untouched(model, targets)
        save_factors(factors, out, model=model, overwrite=job.overwrite)
    if checkpoint is not None:
        checkpoint.remove()
    return {**factors.metadata, "modules": len(targets), "num_positions": factors.num_positions}
