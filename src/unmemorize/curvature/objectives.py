"""What the factors are the curvature of: the loss, its labels, and the counted positions.

An objective tells ``collect_factors`` three things for a batch:

* ``counted_positions(batch)`` -- a (B, T) bool mask of the positions whose a and g enter A and G;
* ``loss(model, batch, counted, fisher, row_seeds)`` -- the SUM-reduced loss whose gradient
  w.r.t. each module output is g; labels sampled from the model (``fisher="true"``) or gold;
* ``batch_units(batch)`` -- how much data the batch holds, for the progress bar (``unit``).

Sampled labels depend only on the sampler seed and each row's *window index* in the data stream:
row b draws its uniforms from a generator seeded with ``window_seed(seed, index_b)``. The
factors are therefore the same whatever the batch size, the number of processes sharing the
windows, or the point where a run was resumed.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..data import next_token_positions
from ..errors import UnmemorizeError


def window_seed(seed: int, window_index: int) -> int:
    """The label sampler's seed for one window: 63 bits of blake2b("seed/index")."""
    digest = hashlib.blake2b(f"{seed}/{window_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def row_uniforms(counts: list[int], seeds: list[int], device, dtype) -> torch.Tensor:
    """(sum counts,) uniforms: ``counts[b]`` draws from a generator seeded with ``seeds[b]``, rows in order."""
    draws = []
    for count, seed in zip(counts, seeds):
        if count:
            generator = torch.Generator(device=device).manual_seed(seed)
            draws.append(torch.rand(count, generator=generator, device=device, dtype=dtype))
    return torch.cat(draws) if draws else torch.zeros(0, device=device, dtype=dtype)


def sample_labels(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One label per row of (n, V) logits, drawn from softmax(logits) by inverse CDF.

    y = min{k : cdf_k > u * cdf_V} with u ~ U[0, 1) given per row. Same law as
    ``torch.multinomial``, which on CPU is ~30x slower at V = 2k (one exponential per entry).
    """
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (n, V)
    u = uniforms.to(cdf.dtype).reshape(-1, 1)
    labels = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return labels.clamp_max(cdf.shape[-1] - 1)


class NextTokenObjective:
    """Summed next-token cross-entropy of a causal LM over the counted positions.

    ``label_sampler`` may be replaced (tests record the sampled labels through it).
    """

    name = "causal_lm_next_token"
    unit = "tok"
    positions_description = "every real token with a real next token (last position and padding excluded)"

    def counted_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T) bool: real token at t and a real next token at t+1."""
        return next_token_positions(batch["attention_mask"])

    def label_sampler(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return sample_labels(logits, uniforms)

    def batch_units(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def dummy_batch(self, model: nn.Module, device) -> dict:
        """The smallest input (two tokens), used once to see which modules read the same tensor."""
        return {"input_ids": torch.zeros(1, 2, dtype=torch.long, device=device)}  # no mask: also runs on the meta device

    def forward(self, model: nn.Module, batch: dict):
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))

    def loss(self, model: nn.Module, batch: dict, counted: torch.Tensor, fisher: str, row_seeds: list[int]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        counted = counted.to(logits.device)
        selected = logits[counted]  # (N_batch, V), rows in row-major order, at least float32 for the softmax
        selected = selected.to(torch.promote_types(selected.dtype, torch.float32))
        if fisher == "empirical":
            labels = batch["input_ids"].to(logits.device)[:, 1:][counted[:, :-1]]
        else:
            with torch.no_grad():
                uniforms = row_uniforms(counted.sum(dim=1).tolist(), row_seeds, selected.device, selected.dtype)
                labels = self.label_sampler(selected.detach(), uniforms)
        return F.cross_entropy(selected, labels, reduction="sum")


class ImageClassificationObjective:
    """Summed cross-entropy of a ViT-style image classifier (logits from the CLS token).

    Positions: ``"cls"`` counts only the CLS token (index 0) of every image -- the paper's choice
    for ViT factors -- or ``"all"`` counts every token (CLS and patches). Batches hold
    ``pixel_values`` (B, C, H, W) and, for the empirical Fisher, ``labels`` (B,).
    """

    name = "image_classification"
    unit = "img"

    def __init__(self, model: nn.Module, positions: str = "cls"):
        if positions not in ("cls", "all"):
            raise UnmemorizeError(f"positions must be 'cls' or 'all', got {positions!r}")
        config = model.config
        try:
            patches = (config.image_size // config.patch_size) ** 2
        except AttributeError:
            raise UnmemorizeError(f"{type(model).__name__} has no image_size/patch_size: not a ViT-style classifier") from None
        self.tokens = patches + 1  # CLS + patches
        self.positions = positions
        self.positions_description = "CLS token only" if positions == "cls" else "every token (CLS and patches)"

    def counted_positions(self, batch: dict) -> torch.Tensor:
        count = batch["pixel_values"].shape[0]
        mask = torch.zeros(count, self.tokens, dtype=torch.bool, device=batch["pixel_values"].device)
        if self.positions == "cls":
            mask[:, 0] = True
        else:
            mask[:] = True
        return mask

    def label_sampler(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        return sample_labels(logits, uniforms)

    def batch_units(self, batch: dict) -> int:
        return int(batch["pixel_values"].shape[0])

    def dummy_batch(self, model: nn.Module, device) -> dict:
        config = model.config
        pixels = torch.zeros(1, getattr(config, "num_channels", 3), config.image_size, config.image_size, device=device,
                             dtype=next(model.parameters()).dtype)
        return {"pixel_values": pixels}

    def forward(self, model: nn.Module, batch: dict):
        return model(pixel_values=batch["pixel_values"])

    def loss(self, model: nn.Module, batch: dict, counted: torch.Tensor, fisher: str, row_seeds: list[int]) -> torch.Tensor:
        logits = model(pixel_values=batch["pixel_values"]).logits  # (B, classes)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if fisher == "empirical":
            labels = batch["labels"].to(logits.device)
        else:
            with torch.no_grad():
                uniforms = row_uniforms([1] * logits.shape[0], row_seeds, logits.device, logits.dtype)
                labels = self.label_sampler(logits.detach(), uniforms)
        return F.cross_entropy(logits, labels, reduction="sum")
