"""Attacks on an edit: is memorization removed, or only hidden?

Three attacks from the unlearning literature, each on a *copy* of the model (the input is never
changed), each ending in a re-measurement of recitation (greedy strict accuracy, ``memorization``):

(a) **Relearning** (``relearn``, ``relearning_attack``): k AdamW steps (default k = 10, 50, 200)
    of next-token cross-entropy on a given set of sequences -- clean text without the memorized
    items, or the tuning half of the memorized items -- then recitation of *other* sets (the
    validation half, quotes, never-trained controls). Per step: ``batch_size`` sequences taken in
    a seeded random order (a fresh permutation each pass), right-padded, loss = mean CE over the
    real next-token positions, gradient norm clipped, one AdamW step on every floating-point
    parameter. Dropout is off (eval mode), so a seed fixes the run. Learning rate and batch are
    our choices (no paper gives them for this testbed): sweep ``learning_rate``.
(b) **Extraction by sampling** (``sampled_extraction``): for each item, n = 20 continuations of
    L = |suffix| tokens at temperature T = 1 and top-k 40, i.e. from

        q(v) = softmax(logits / T)[v] / Z   for v with logit_v >= the k-th largest logit (ties kept,
                                            as transformers' TopKLogitsWarper), else 0.

    Each row draws its tokens by inverse CDF from uniforms of a generator seeded by
    sha256("<seed>:<item index>"), so a result does not depend on batching or device. Reported per
    set: the mean over items of the fraction of samples equal to the suffix, the fraction of items
    with at least one such sample, the mean over items of the gold suffix's log-likelihood per token
    under the model (full softmax, T = 1: (1/L) sum_j log p(s_j | prefix, s_<j)), and the exact
    probability that one sample is the suffix, prod_j q(s_j) (the expected value of the sampled
    fraction; 0 if a gold token falls outside the top k).
(c) **bf16 round trip** (``bf16_round_trip``): every floating-point parameter cast to bfloat16 and
    back to its own dtype (buffers such as rotary frequencies untouched). Each weight moves by at
    most bf16 rounding, |w' - w| <= 2^-8 |w| (8 significant bits, round to nearest); a model whose
    weights are already bf16-representable is returned unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import torch

from ..data import pad_batch
from ..errors import UnmemorizeError, check_seed
from .generate import _forward_keywords, _returned_cache, check_token_ids, model_device
from .memorization import MemorizationItem, evaluate_memorization


@dataclass
class RelearnConfig:
    """The relearning attack: AdamW fine-tuning of a copy for a few steps (recorded with its results)."""

    steps: tuple[int, ...] = field(default=(10, 50, 200), metadata={"help": "Step counts k after which recitation is measured "
                                                                           "(one run, measured at each k)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (constant; our choice, sweep it)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per step."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip per step (0: none)."})
    seq_len: int = field(default=128, metadata={"help": "Window length when the relearning set is text."})
    seed: int = field(default=0, metadata={"help": "Seed of the data order."})

    def validate(self) -> None:
        if not self.steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in self.steps):
            raise UnmemorizeError(f"--relearn-steps must be integers >= 0, e.g. 10,50,200; got {self.steps!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UnmemorizeError(f"--relearn-lr must be a positive number, got {self.learning_rate}")
        if self.batch_size < 1 or self.seq_len < 2:
            raise UnmemorizeError(f"--relearn-batch-size must be >= 1 and --relearn-seq-len >= 2, got {self.batch_size}, {self.seq_len}")
        if not (self.weight_decay >= 0 and self.max_grad_norm >= 0):
            raise UnmemorizeError("--relearn-weight-decay and --relearn-max-grad-norm must be >= 0")
        check_seed(self.seed, "--relearn-seed")


@dataclass
class ExtractionConfig:
    """Extraction by sampling (recorded with its results)."""

    samples: int = field(default=20, metadata={"help": "Samples per item (n)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature T."})
    top_k: int = field(default=40, metadata={"help": "Sample among the k most likely tokens (0: the whole vocabulary)."})
    seed: int = field(default=0, metadata={"help": "Seed of the samples (per item: sha256 of '<seed>:<index>')."})
    batch_size: int = field(default=64, metadata={"help": "Sampled rows per forward pass."})

    def validate(self) -> None:
        if self.samples < 1 or self.batch_size < 1 or self.top_k < 0:
            raise UnmemorizeError(f"--samples and --sample-batch-size must be >= 1 and --top-k >= 0; got {self.samples}, "
                                  f"{self.batch_size}, {self.top_k}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UnmemorizeError(f"--temperature must be a positive number, got {self.temperature}")
        check_seed(self.seed, "--sample-seed")


def recitation(model, sets: dict[str, list[MemorizationItem]], pad_id: int, batch_size: int = 64) -> dict[str, dict]:
    """Greedy strict / loose / Levenshtein scores of ``model`` on each named set."""
    return {name: evaluate_memorization(model, items, pad_id, batch_size).to_dict() for name, items in sets.items()}


# ---------------------------------------------------------------------------------------------- (a) relearning
def item_sequences(items: list[MemorizationItem]) -> list[list[int]]:
    """Training sequences of memorized items: prefix + suffix."""
    return [item.prefix_ids + item.suffix_ids for item in items]


def iter_relearned(model, sequences: list[list[int]], config: RelearnConfig, pad_id: int) -> Iterator[tuple[int, torch.nn.Module]]:
    """(k, copy after k steps) for each k of ``sorted(set(config.steps))``; one copy, trained further between yields."""
    config.validate()
    sequences = [list(s) for s in sequences if len(s) >= 2]
    if not sequences:
        raise UnmemorizeError("the relearning set has no sequence of at least 2 tokens")
    check_token_ids(model, sequences, what="relearning sequence")
    tuned = copy.deepcopy(model).eval()
    parameters = [p for p in tuned.parameters() if p.is_floating_point()]
    for p in tuned.parameters():
        p.requires_grad_(p.is_floating_point())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    device, order, done = model_device(tuned), [], 0
    for target in sorted(set(config.steps)):
        while done < target:
            while len(order) < config.batch_size:  # a fresh permutation each pass over the set
                order += torch.randperm(len(sequences), generator=generator).tolist()
            batch = pad_batch([sequences[i] for i in order[:config.batch_size]], pad_id)
            order = order[config.batch_size:]
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = ids.masked_fill(mask == 0, -100)  # (B, T): padding is never a target
            with torch.enable_grad():
                loss = tuned(input_ids=ids, attention_mask=mask, labels=labels).loss  # mean CE over real next tokens
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            done += 1
        yield target, tuned
    optimizer.zero_grad(set_to_none=True)


def relearn(model, sequences: list[list[int]], config: RelearnConfig, pad_id: int, steps: int | None = None) -> torch.nn.Module:
    """A copy of ``model`` after ``steps`` (default: the largest of ``config.steps``) relearning steps."""
    steps = max(config.steps) if steps is None else steps
    ((_, tuned),) = iter_relearned(model, sequences, replace(config, steps=(steps,)), pad_id)
    return tuned


def relearning_attack(model, sequences: list[list[int]], sets: dict[str, list[MemorizationItem]], pad_id: int,
                      config: RelearnConfig | None = None) -> dict:
    """Recitation of each named set after each k of ``config.steps`` relearning steps on ``sequences``."""
    config = config or RelearnConfig()
    rows = {name: [] for name in sets}
    for _, tuned in iter_relearned(model, sequences, config, pad_id):
        for name, scores in recitation(tuned, sets, pad_id).items():
            rows[name].append(scores)
    return {"steps": sorted(set(config.steps)), "sequences": len(sequences), "sets": rows, "config": asdict(config)}


# ---------------------------------------------------------------------------------------------- (b) sampling
def item_seed(seed: int, index: int) -> int:
    return int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:16], 16) >> 1


def sampling_distribution(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """q over the last dimension, float64: softmax(logits / T) on the top-k logits (ties kept), renormalized."""
    scaled = logits.double() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.softmax(scaled, dim=-1)


def inverse_cdf(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index i with cdf_{i-1} <= u * cdf_V < cdf_i per row: token i has probability p_i (zero-probability tokens never drawn)."""
    cdf = probabilities.cumsum(-1)  # (R, V)
    index = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return index.clamp_max(probabilities.shape[-1] - 1)


def _sample_rows(model, prompts: torch.Tensor, uniforms: torch.Tensor, config: ExtractionConfig) -> torch.Tensor:
    """(R, L) samples after equal-length ``prompts`` (R, n), token j of row r drawn with ``uniforms[r, j]``."""
    cache_name, extra = _forward_keywords(model)
    ids, tokens, cache = prompts, [], None
    for j in range(uniforms.shape[1]):
        if cache is None:
            output = model(input_ids=ids, use_cache=True, **extra)
        else:
            output = model(input_ids=ids[:, -1:], use_cache=True, **{cache_name: cache}, **extra)
        cache = _returned_cache(output)
        q = sampling_distribution(output.logits[:, -1], config.temperature, config.top_k)  # (R, V)
        next_token = inverse_cdf(q, uniforms[:, j].to(q.device))
        tokens.append(next_token)
        ids = torch.cat([ids, next_token[:, None]], dim=1)
    return torch.stack(tokens, dim=1).cpu()


def suffix_log_likelihoods(model, items: list[MemorizationItem], config: ExtractionConfig) -> tuple[list[float], list[float]]:
    """Per item: (1/L) sum_j log p(s_j | ...) under the full softmax at T = 1, and log prod_j q(s_j) (sampling distribution)."""
    device, per_token, log_exact = model_device(model), [], []
    with torch.inference_mode():
        for item in items:
            ids = torch.tensor([item.prefix_ids + item.suffix_ids], device=device)
            n, length = len(item.prefix_ids), len(item.suffix_ids)
            logits = model(input_ids=ids).logits[0, n - 1:n - 1 + length]  # (L, V): predictions of s_1..s_L
            gold = ids[0, n:].unsqueeze(-1)
            per_token.append(float(torch.log_softmax(logits.double(), -1).gather(-1, gold).sum()) / length)
            q = sampling_distribution(logits, config.temperature, config.top_k).gather(-1, gold)
            log_exact.append(float(q.log().sum()))
    return per_token, log_exact


def sampled_extraction(model, items: list[MemorizationItem], config: ExtractionConfig | None = None) -> dict:
    """Sampled-extraction rate and suffix log-likelihood of ``items`` (see module doc (b))."""
    config = config or ExtractionConfig()
    config.validate()
    if not items:
        raise UnmemorizeError("no items to sample: the memorization set is empty")
    check_token_ids(model, item_sequences(items), what="item")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[(len(item.prefix_ids), len(item.suffix_ids))].append(index)
    exact = [0] * len(items)
    per_batch = max(1, config.batch_size // config.samples)  # items per forward pass
    device = model_device(model)
    with torch.inference_mode():
        for (_, length), members in sorted(groups.items()):
            for start in range(0, len(members), per_batch):
                chunk = members[start:start + per_batch]
                prompts = torch.tensor([items[i].prefix_ids for i in chunk for _ in range(config.samples)], device=device)
                uniforms = torch.cat([torch.rand(config.samples, length, dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(item_seed(config.seed, i)))
                                      for i in chunk])  # (R, L)
                samples = _sample_rows(model, prompts, uniforms, config).view(len(chunk), config.samples, length)
                for row, i in enumerate(chunk):
                    exact[i] = int((samples[row] == torch.tensor(items[i].suffix_ids)).all(-1).sum())
    per_token, log_exact = suffix_log_likelihoods(model, items, config)
    n = len(items)
    return {"n": n, "samples": config.samples,
            "exact_rate": sum(exact) / (n * config.samples), "items_with_exact": sum(e > 0 for e in exact) / n,
            "mean_log_likelihood_per_token": sum(per_token) / n,
            "expected_exact_rate": sum(math.exp(v) for v in log_exact) / n,
            "per_item": {"exact_samples": exact, "log_likelihood_per_token": per_token, "log_exact_probability": log_exact},
            "config": asdict(config)}


# ---------------------------------------------------------------------------------------------- (c) bf16
def bf16_round_trip(model) -> torch.nn.Module:
    """A copy whose floating-point parameters went to bfloat16 and back to their own dtype (buffers untouched)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.is_floating_point():
                parameter.copy_(parameter.to(torch.bfloat16).to(parameter.dtype))
    return rounded


def weight_change(before, after) -> dict:
    """How far the parameters of ``after`` moved from ``before``: counts, max |dw| and max |dw| / |w| over w != 0."""
    changed, total, max_abs, max_rel = 0, 0, 0.0, 0.0
    for (name, a), (_, b) in zip(before.named_parameters(), after.named_parameters()):
        diff = (b.detach().double() - a.detach().double()).abs()
        total += a.numel()
        changed += int((diff > 0).sum())
        max_abs = max(max_abs, float(diff.max()) if diff.numel() else 0.0)
        nonzero = a.detach() != 0
        if nonzero.any():
            max_rel = max(max_rel, float((diff[nonzero] / a.detach().double().abs()[nonzero]).max()))
    return {"parameters": total, "changed": changed, "max_abs_change": max_abs, "max_rel_change": max_rel}


def bf16_attack(model, sets: dict[str, list[MemorizationItem]], pad_id: int) -> dict:
    """Recitation of each set after ``bf16_round_trip``, with how much the weights moved."""
    rounded = bf16_round_trip(model)
    return {"weights": weight_change(model, rounded), "sets": recitation(rounded, sets, pad_id)}
