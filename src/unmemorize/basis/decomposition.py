"""Decomposing a factor folder: ``decompose_factors`` (in memory, reading the cache when there is
one) and ``decompose_to_cache`` (the work of ``unmemorize decompose``: every module once, stored
beside the factors).

    unmemorize decompose --factors F [--dtype float64|float32] [--device auto|cpu|cuda] [--overwrite]
    torchrun --nproc-per-node N -m unmemorize decompose --factors F      # modules split over N ranks

Each module k (in factors.json order) is one work unit: eigh of G_k, and of A_k unless A_k is
byte-identical to the A of the module it shares its input with (then only G_k). Under torchrun
(WORLD_SIZE > 1) rank r takes the units k with k % WORLD_SIZE == r, writes their shards into one
temporary folder made by rank 0, and rank 0 writes ``eigen.json`` and renames the folder into
place once every rank succeeded (a gloo all-reduce decides; any failure removes everything).
The format is described in ``cache.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .._atomic import atomic_dir, hold_claim
from .._version import __version__
from ..curvature.distributed import broadcast_utf8
from ..curvature.factors import KFACFactors, load_factors
from ..errors import UnmemorizeError
from ..jsonio import write_json
from ..models import parse_dtype
from .cache import FORMAT_VERSION, INDEX_FILE, cache_dir, load_cached_bases, shard_name, tensor_fingerprint, write_module_shard
from .eigen import Eigendecomposition, ModuleBasis, activation_owner, decompose, resolve_device


def decompose_factors(
    factors: KFACFactors,
    dtype: torch.dtype = torch.float64,
    modules: list[str] | None = None,
    cache: Literal["auto", "require", "off"] = "auto",
    device: str | torch.device | None = None,
) -> dict[str, ModuleBasis]:
    """Eigendecompose A and G of every (or the chosen) module; shared A is decomposed once.

    ``cache``: with 'auto' (default), modules whose decomposition ``unmemorize decompose`` stored
    beside the factor folder (``factors.metadata['path']``) in this ``dtype`` are read from there
    after checking that they were computed from exactly these A and G (a mismatch raises, naming
    the module); the others are computed. 'require' raises when the cache is missing or does not
    cover a module; 'off' always computes. ``device`` runs eigh there (e.g. 'cuda'); results
    come back to the factors' device.
    """
    if cache not in ("auto", "require", "off"):
        raise UnmemorizeError(f"cache must be 'auto', 'require' or 'off', got {cache!r}")
    names = modules or factors.modules
    cached: dict[str, ModuleBasis] = {}
    if cache != "off":
        cached = load_cached_bases(factors, dtype, names, required=cache == "require")
    bases: dict[str, ModuleBasis] = {}
    done: dict[str, Eigendecomposition] = {}
    for name in names:
        if name in cached:
            bases[name] = cached[name]
            continue
        owner = activation_owner(factors, name)
        if owner not in done:
            done[owner] = decompose(factors.activation[owner], dtype, device)
        bases[name] = ModuleBasis(gradient=decompose(factors.gradient[name], dtype, device), activation=done[owner])
    return bases


@dataclass
class DecomposeConfig:
    """How the eigendecompositions are computed (saved in eigen.json)."""

    dtype: Literal["float64", "float32"] = field(
        default="float64", metadata={"help": "eigh dtype; edits read the cache of their --eigh-dtype (float64 by default)."}
    )
    device: str = field(
        default="auto", metadata={"help": "Where eigh runs: 'auto' (the GPU if there is one, else CPU), 'cpu', 'cuda', 'cuda:K'. "
                                  "Under torchrun each rank uses cuda:LOCAL_RANK when the device is CUDA."}
    )

    def validate(self) -> None:
        if self.dtype not in ("float64", "float32"):
            raise UnmemorizeError(f"--dtype must be float64 or float32, got {self.dtype!r}")
        resolve_device(self.device)


@dataclass
class _Ranks:
    """This process's place among the torchrun ranks (one rank without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this object started the process group, so it ends it

    @classmethod
    def from_env(cls) -> _Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        started = not dist.is_initialized()
        if started:
            dist.init_process_group("gloo")  # control messages only: flags and a folder name, on the CPU
        return cls(dist.get_rank(), dist.get_world_size(), started)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def all_ok(self, ok: bool) -> bool:
        """True iff every rank passed ``ok=True`` (a MIN all-reduce; also a barrier)."""
        if self.world == 1:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([int(ok)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def share_path(self, path: Path | None) -> Path:
        """Rank 0's ``path`` on every rank (UTF-8 bytes in a fixed-size tensor)."""
        if self.world == 1:
            return path
        return Path(broadcast_utf8(str(path), self.rank == 0))


def _listed_modules(factors_path: Path) -> tuple[list[str], dict[str, str]]:
    """(module names in factors.json order, shared_activation) without reading any tensor."""
    info_path = factors_path / "factors.json"
    if not info_path.is_file():
        raise UnmemorizeError(f"{str(factors_path)!r} is not a factor folder: factors.json is missing")
    try:
        info = json.loads(info_path.read_text())
        return list(info["modules"]), dict(info.get("shared_activation") or {})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UnmemorizeError(f"{info_path}: unreadable ({exc})") from None


def _decompose_unit(factors_path: Path, name: str, owner: str, dtype: torch.dtype, device: torch.device, out: Path,
                    index: int, total: int) -> dict:
    """eigh of one module's G (and A unless shared with ``owner``), written to its shard; its index entry."""
    wanted = [name] if owner == name else [name, owner]
    factors = load_factors(factors_path, modules=wanted)  # validated: finite, square, symmetric
    fingerprint = {"A": tensor_fingerprint(factors.activation[name]), "G": tensor_fingerprint(factors.gradient[name])}
    if owner != name and tensor_fingerprint(factors.activation[owner]) != fingerprint["A"]:
        owner = name  # listed as shared but not the same matrix: decompose its own A
    start = time.perf_counter()
    gradient = decompose(factors.gradient[name], dtype, device)
    seconds = {"G": round(time.perf_counter() - start, 3), "A": None}
    activation = None
    if owner == name:
        start = time.perf_counter()
        activation = decompose(factors.activation[name], dtype, device)
        seconds["A"] = round(time.perf_counter() - start, 3)
    write_module_shard(out / shard_name(index, total), name, gradient, activation)
    return {
        "file": shard_name(index, total),
        "activation_from": owner,
        "fingerprint": fingerprint,
        "clamped": {"A": activation.clamped if activation is not None else None, "G": gradient.clamped},
        "fallback": {"A": activation.fallback if activation is not None else None, "G": gradient.fallback},  # "" unless eigh was retried
        "shape": {"A": list(factors.activation[name].shape), "G": list(factors.gradient[name].shape)},
        "seconds": seconds,  # eigh wall time of each factor (A: None when shared)
    }


def decompose_to_cache(factors_path: str | Path, config: DecomposeConfig | None = None, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Eigendecompose every module of a factor folder into ``<factors>/eigen-<dtype>/`` (see module docstring)."""
    config = config or DecomposeConfig()
    config.validate()
    factors_path = Path(factors_path)
    ranks = _Ranks.from_env()
    try:
        return _decompose_on_ranks(factors_path, config, overwrite, progress, ranks)
    finally:
        ranks.close()


def _decompose_on_ranks(factors_path: Path, config: DecomposeConfig, overwrite: bool, progress: bool, ranks: _Ranks) -> Path:
    with ExitStack() as held:  # rank 0 holds the factor folder's claim until the cache is in place
        return _decompose_held(factors_path, config, overwrite, progress, ranks, held)


def _decompose_held(factors_path: Path, config: DecomposeConfig, overwrite: bool, progress: bool, ranks: _Ranks,
                    held: ExitStack) -> Path:
    dtype = parse_dtype(config.dtype)
    device = resolve_device(config.device)
    if device.type == "cuda" and ranks.world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # cuSOLVER and the caching allocator work on the current device
    out = cache_dir(factors_path, config.dtype)
    context, tmp, error = None, None, None
    try:
        if ranks.rank == 0 and factors_path.is_dir():  # first: a collect --overwrite cannot replace it while it is read and written
            held.enter_context(hold_claim(factors_path))
        names, shared = _listed_modules(factors_path)
        if ranks.rank == 0:
            context = atomic_dir(out, overwrite)
            tmp = context.__enter__()
    except UnmemorizeError as exc:
        error = exc
    if not ranks.all_ok(error is None):
        raise error or UnmemorizeError("decompose failed on rank 0; see its message")
    tmp = ranks.share_path(tmp)
    start = time.perf_counter()
    try:
        entries = {}
        for k, name in enumerate(names):
            if k % ranks.world != ranks.rank:
                continue
            owner = shared.get(name, name)
            entries[name] = _decompose_unit(factors_path, name, owner if owner in names else name, dtype, device, tmp, k, len(names))
            if progress:
                print(f"[rank {ranks.rank}] {name}: eigh {sum(v or 0 for v in entries[name]['seconds'].values()):.2f} s", file=sys.stderr)
        write_json(tmp / f"rank-{ranks.rank:05d}.json", entries)
    except BaseException as exc:  # noqa: BLE001 - reported to every rank, then re-raised
        error = exc
    ok = ranks.all_ok(error is None)
    if ranks.rank == 0:
        if ok:
            try:
                _write_index(tmp, names, config, device, ranks.world, time.perf_counter() - start, factors_path)
            except BaseException as exc:  # noqa: BLE001
                error, ok = exc, False
        failure = None if ok else (error or UnmemorizeError("decompose failed on another rank; see its message"))
        context.__exit__(type(failure) if failure else None, failure, failure.__traceback__ if failure else None)
    if not ranks.all_ok(ok):
        raise error or UnmemorizeError("decompose failed on another rank; see its message")
    return out


def _write_index(tmp: Path, names: list[str], config: DecomposeConfig, device: torch.device, world: int, seconds: float,
                 factors_path: Path) -> None:
    entries = {}
    for part in sorted(tmp.glob("rank-*.json")):
        entries.update(json.loads(part.read_text()))
        part.unlink()
    missing = [n for n in names if n not in entries]
    if missing:
        raise UnmemorizeError(f"decompose lost {', '.join(missing)} (a rank wrote no entry)")
    index = {
        "format_version": FORMAT_VERSION,
        "unmemorize_version": __version__,
        "config": asdict(config),
        "dtype": config.dtype,
        "device": device.type,
        "world_size": world,
        "seconds": round(seconds, 3),
        "factors": str(factors_path),
        "fingerprint": "sha256 of '<dtype>|<shape>|' + raw bytes of each factor tensor",
        "modules": {n: entries[n] for n in names},
    }
    write_json(tmp / INDEX_FILE, index)
