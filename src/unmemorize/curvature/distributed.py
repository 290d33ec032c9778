"""Data-parallel collection with torch.distributed, as launched by ``torchrun``.

    torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m unmemorize collect ...

Every rank streams the same window sequence and keeps the windows of its share: the stream is
cut into *rounds* of ``world_size * batch_size`` consecutive windows, and rank r takes windows
``round_start + r + k * world_size`` (k < batch_size) of each round, so every rank runs the same
number of steps (an empty step when its share of the last round is empty). Each rank
accumulates its own sums of a a^T and g g^T; the sums and the counts are all-reduced once per
checkpoint and once at the end of a pass, never per batch; rank 0 writes the files. The label
sampler is seeded per window (``objectives.window_seed``), so the factors equal those of one
process up to float round-off in the order of the additions. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..errors import UnmemorizeError


@dataclass
class ProcessGroup:
    """This process's place in the run: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensors) -> None:
        """Sum each tensor over the ranks, in place (one collective per tensor)."""
        if self.distributed:
            import torch.distributed as dist

            for tensor in tensors:
                dist.all_reduce(tensor)

    def all_reduce_int(self, value: int) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.all_reduce([tensor])
        return int(tensor.item())

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def broadcast_text(self, text: str, size: int = 4096) -> str:
        """Rank 0's ``text`` (UTF-8, at most ``size`` bytes) on every rank: how one rank's error reaches the others."""
        return broadcast_utf8(text, self.is_main, self.device, size) if self.distributed else text

    def same_on_all_ranks(self, value: int) -> bool:
        """Whether every rank passed the same ``value`` (an integer below 2^52: exact in float64)."""
        if not self.distributed:
            return True
        import torch.distributed as dist

        tensor = torch.tensor([float(value), -float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor[0]) == -float(tensor[1])  # max == min

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


SINGLE_PROCESS = ProcessGroup()


def broadcast_utf8(text: str, is_main: bool, device: torch.device | None = None, size: int = 4096) -> str:
    """Rank 0's ``text`` on every rank of the initialized process group, as UTF-8 bytes in a fixed-size
    uint8 tensor (on ``device``: CUDA for NCCL, the CPU for gloo)."""
    import torch.distributed as dist

    buffer = torch.zeros(size, dtype=torch.uint8, device=device)
    if is_main:
        raw = text.encode()[:size]
        buffer[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer[buffer != 0].cpu().tolist()).decode(errors="replace")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


DEFAULT_TIMEOUT_SECONDS = 3600


def init_from_environment(device: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> ProcessGroup:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    With ``device`` 'cuda' each rank computes on ``cuda:LOCAL_RANK`` over NCCL; on the CPU, gloo.
    ``timeout_seconds`` is how long a rank waits at a collective (torch.distributed's ``timeout``)
    before the run fails: while rank 0 writes a checkpoint of tens of GiB to a shared filesystem the
    others wait at the next collective, and NCCL's own default (10 minutes) can end a healthy run."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        return ProcessGroup(device=torch.device(device))
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.device_count() <= local:
            raise UnmemorizeError(f"rank {rank} needs cuda:{local}, but only {torch.cuda.device_count()} GPU(s) are visible")
        placed = torch.device("cuda", local)
        torch.cuda.set_device(placed)
        backend = "nccl"
    elif kind == "cpu":
        placed, backend = torch.device("cpu"), "gloo"
    else:
        raise UnmemorizeError(f"--device {device!r}: data-parallel collection runs on cpu (gloo) or cuda (NCCL)")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return ProcessGroup(rank=rank, world_size=world, device=placed)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
