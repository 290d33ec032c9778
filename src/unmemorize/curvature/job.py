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
from .checkpoint import Checkpoint, UnusableCheckpoint, checkpoint_folder
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
    images: str | None = None  # an image classifier's images instead of --data (vision/images.py)
    image_positions: str = "cls"  # 'cls' (the paper's ViT choice) or 'all' tokens
    max_images: int | None = None


def run_collect_job(job: CollectJob) -> dict | None:
    """Run the job; returns the factor metadata on rank 0 (None on the other ranks)."""
    from ..paths import command_output

    if launched_by_torchrun() and job.device_map:
        raise UnmemorizeError("--device-map splits one model over devices; it does not combine with torchrun's data "
                              "parallel ranks (use one or the other, see README 'Running on a 7B model')")
    if job.resume and job.config.checkpoint_every == 0:
        raise UnmemorizeError("--resume continues from a checkpoint, and --checkpoint-every 0 turns checkpoints off; drop one of them")
    if job.model_dtype == "float16":  # before any loading
        raise UnmemorizeError(f"--model-dtype float16: {FLOAT16_REFUSAL}")
    if not job.process_group_timeout > 0:
        raise UnmemorizeError(f"--process-group-timeout must be a positive number of seconds, got {job.process_group_timeout}")
    group = init_from_environment(job.device, job.process_group_timeout) if launched_by_torchrun() else ProcessGroup(device=None)
    released = False
    try:
        if not group.is_main:
            own = None
            if not job.images:  # every rank reads ahead while rank 0 does: none waits the whole read at a collective
                try:
                    read_job_data(job)
                except UnmemorizeError as exc:  # rank 0 reads the same data: it refuses with the same message
                    own = exc
            refusal = group.broadcast_text("")  # empty: rank 0's checks passed
            if refusal:
                raise UnmemorizeError(f"rank {group.rank}: stopped because rank 0 refused the run: {refusal}")
            if own is not None:
                raise own
            check_shared_output(group, None)
            _collect(job, group, None)
            return None
        with command_output(job.out, job.overwrite, job_inputs(job)) as out:
            refuse_unresumed_checkpoint(job, out)
            ahead = read_job_data(job) if not job.images else None  # data errors before the model loads
            released = True
            group.broadcast_text("")
            check_shared_output(group, out)
            try:
                return _collect(job, group, out, ahead)
            except BaseException as exc:  # kept for --resume, unless the checkpoint itself was refused (its message says what to do)
                if not isinstance(exc, UnusableCheckpoint) and ((folder := checkpoint_folder(out)) / "state.json").is_file():
                    print(f"checkpoint kept in {folder}: rerun with --resume to continue", file=sys.stderr)
                raise
    except UnmemorizeError as exc:
        if group.is_main and group.distributed and not released:
            _release_peers(group, str(exc))
        raise
    finally:
        shutdown()


def refuse_unresumed_checkpoint(job: CollectJob, out: Path) -> None:
    """A checkpoint of an interrupted collection of ``out`` is continued with --resume or deleted, never overwritten;
    a link planted at its name is refused (its files would be written, and later removed, elsewhere)."""
    folder = checkpoint_folder(out)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UnmemorizeError(f"{folder}, where the checkpoint of {job.out} goes, is a symbolic link or a file: a checkpoint is "
                              "never written through it into another folder; remove it")
    if (folder / "state.json").is_file():
        if not job.resume:
            raise UnmemorizeError(f"{folder} holds the checkpoint of an interrupted collection of {job.out}: pass --resume to "
                                  "continue it, or delete it to start over")
        Checkpoint(folder, {}).load()  # a corrupt state.json is refused before the model loads (its settings are checked after)


def job_inputs(job: CollectJob) -> dict:
    """The job's input paths, by option (what its output may never overlap)."""
    return {"--model": job.model, **({"--images": job.images} if job.images else {"--data": job.data})}


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


def read_job_data(job: CollectJob, limit: int | None = None) -> dict:
    """Before the model loads: its config and tokenizer (no weights), then every window the run will
    read, read once and dropped (``data.read_ahead``: bounded by ``--max-tokens``). A data error
    (bad ids, non-UTF-8, malformed JSON, corrupt parquet/gzip/zstandard, no text field, no window)
    stops the run here, before minutes of loading and GPU time; the counts set the progress bar and
    are recorded. Costs one extra tokenization of what the run reads (measured in
    docs/results/benchmarks/results-read-ahead.md); under torchrun every rank reads at once, so none
    waits the whole read at a collective. ``limit``: at most this many tokens (a dry run without a budget)."""
    from ..data import list_data_files, read_ahead
    from ..models import config_limits, load_config, load_tokenizer

    vocab_size, max_length = config_limits(load_config(job.model, job.trust_remote_code))
    tokenizer = load_tokenizer(job.model, job.trust_remote_code)
    config = job.config
    return read_ahead(list_data_files(job.data), tokenizer, config.seq_len, limit or config.max_tokens or None, vocab_size, max_length,
                      config.text_field)


def _collect(job: CollectJob, group: ProcessGroup, out: Path | None, ahead: dict | None = None) -> dict | None:
    from ..data import list_data_files
    from ..models import load_model
    from ..targets import resolve_targets, untouched, untouched_note
    from .objectives import NextTokenObjective

    device = str(group.device) if group.distributed else job.device
    pixels = read_job_images(job) if job.images else None  # every image read before the model loads
    pixels_sha256 = _pixels_sha256(pixels) if pixels is not None else None  # the checkpoint's and the factors' record
    model, tokenizer = load_model(job.model, job.model_dtype, device, job.trust_remote_code, job.device_map, job.max_memory)
    targets = resolve_targets(model, job.targets, job.layers, job.projections)
    refuse_offloaded_targets(model, targets)
    left = untouched(model, targets)  # what the targets leave of each MLP: said, and recorded in factors.json
    config = job.config
    checkpoint = None
    if config.checkpoint_every != 0:
        if pixels is not None:
            settings = collection_settings(model, targets, [], config, "image_classification", pixels_sha256) if group.is_main else {}
        else:
            settings = collection_settings(model, targets, list_data_files(job.data), config, NextTokenObjective.name) if group.is_main else {}
        checkpoint = Checkpoint(checkpoint_folder(out) if out is not None else Path("."), settings)
        if group.is_main and job.resume and not checkpoint.exists():
            print(f"no checkpoint of {job.out} to resume: starting from the beginning", file=sys.stderr)
    if group.is_main and job.model_dtype in ("bfloat16", "float16") and next(model.parameters()).device.type == "cpu":
        print(f"note: --model-dtype {job.model_dtype} on the CPU: CPUs without native {job.model_dtype} GEMMs run the backward "
              "hundreds of times slower (docs/results/benchmarks/results-collect.md); --model-dtype float32 is faster there", file=sys.stderr)
    if group.is_main:
        ranks = f" on {group.world_size} processes" if group.distributed else ""
        over = f" over {ahead['tokens']} tokens ({ahead['windows']} windows, read ahead in {ahead['seconds']:.1f} s)" if ahead else ""
        print(f"collecting {config.fisher} Fisher factors for {len(targets)} modules of {type(model).__name__}{ranks}{over}",
              file=sys.stderr)
        if note := untouched_note(left):
            print(note, file=sys.stderr)
    sharded = 0 < config.modules_per_pass < len(targets)
    resident_before = resident_bytes("VmRSS") if reset_peak_resident() else None  # each rank's growth, recorded in factors.json
    def gather(on_pass=None):
        if pixels is not None:
            return collect_images(model, pixels, pixels_sha256, targets, job, on_pass=on_pass, group=group, checkpoint=checkpoint)
        return collect_from_files(model, tokenizer, job.data, targets, config, on_pass=on_pass, group=group, checkpoint=checkpoint,
                                  ahead=ahead)

    if not group.is_main:
        gather(on_pass=(lambda *a: None) if sharded else None)
        _growth_per_rank(group, resident_before)
        return None
    if sharded:  # bounded memory: one shard per pass, written as it ends
        with ShardedFactorWriter(out, model, job.overwrite) as writer:
            factors = gather(on_pass=writer.write_pass)
            factors.metadata["peak_resident_growth_bytes_per_rank"] = _growth_per_rank(group, resident_before)
            factors.metadata["untouched"] = left
            writer.finish(factors)
    else:
        factors = gather()
        factors.metadata["peak_resident_growth_bytes_per_rank"] = _growth_per_rank(group, resident_before)
        factors.metadata["untouched"] = left
        save_factors(factors, out, model=model, overwrite=job.overwrite)
    if checkpoint is not None:
        checkpoint.remove()
    return {**factors.metadata, "modules": len(targets), "num_positions": factors.num_positions}


def read_job_images(job: CollectJob) -> torch.Tensor:
    """The job's images as ``pixel_values``, through the model's own image processor (``vision/images.py``)."""
    from ..vision.images import load_image_processor, read_images

    processor = None if job.images.endswith(".safetensors") else load_image_processor(job.model, job.trust_remote_code)
    return read_images(job.images, processor, job.max_images)


def _pixels_sha256(pixels: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(pixels.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def collect_images(model, pixels: torch.Tensor, pixels_sha256: str, targets: list[str], job: CollectJob, on_pass=None,
                   group: ProcessGroup | None = None, checkpoint: Checkpoint | None = None):
    """Factors of an image classifier over ``pixels``: batches of ``batch_size`` images, shared between torchrun
    ranks as text windows are, labels sampled per image (seeded by its index), resumable from a checkpoint."""
    from .collect import Step, collect_factors
    from .distributed import SINGLE_PROCESS
    from .objectives import ImageClassificationObjective

    group = group or SINGLE_PROCESS
    objective = ImageClassificationObjective(model, job.image_positions)
    dtype = next(model.parameters()).dtype
    round_size = group.world_size * job.config.batch_size

    def steps(start: int = 0):
        for first in range(start, pixels.shape[0], round_size):
            rows = list(range(first + group.rank, min(first + round_size, pixels.shape[0]), group.world_size))
            end = min(first + round_size, pixels.shape[0])
            if not rows:
                yield Step(None, end)
                continue
            yield Step({"pixel_values": pixels[rows].to(dtype), "window_index": torch.tensor(rows)}, end)

    factors = collect_factors(model, steps, targets, job.config, objective, total_tokens=int(pixels.shape[0]), on_pass=on_pass,
                              group=group, checkpoint=checkpoint)
    factors.metadata["data"] = {"images": str(job.images), "count": int(pixels.shape[0]), "positions": job.image_positions,
                                "fingerprint": pixels_sha256, "fingerprint_of": "the processed pixel_values (float32)"}
    return factors
