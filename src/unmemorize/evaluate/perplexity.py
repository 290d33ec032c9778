"""Perplexity of a causal LM on held-out token windows.

Windows come from ``unmemorize.data.iter_windows``: documents tokenized without special
tokens, joined with EOS, cut into consecutive non-overlapping windows of ``seq_len`` tokens.
Batches are right-padded (``data.pad_batch``). A position t of a window x is *counted* when x_t
and x_{t+1} are both real tokens (the same positions as K-FAC collection): every window of n
tokens contributes n - 1 predictions, padding none. With N counted positions in all,

    nll_t      = -log softmax(logits_t)[x_{t+1}]
    mean_nll   = (1/N) sum_t nll_t
    perplexity = exp(mean_nll)

``batch_mean_exp`` is the paper code's variant (its "BSN-style" evaluation): the mean over
batches b of exp(mean of nll_t over b's counted positions). It depends on the batch size and
differs from ``perplexity`` unless every batch has the same mean loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import iter_windows, list_data_files, next_token_positions, pad_batch
from ..errors import UnmemorizeError
from .generate import check_token_ids, model_device


@dataclass
class PerplexityResult:
    """exp of the mean next-token NLL over ``tokens`` counted positions, plus the paper code's variant."""

    perplexity: float  # exp(mean_nll)
    mean_nll: float  # nats per counted position
    tokens: int  # N, counted positions (window tokens minus one per window)
    windows: int
    batch_mean_exp: float  # mean over batches of exp(batch mean NLL); batch-size dependent
    batch_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(model, windows: list[list[int]], batch_size: int = 16) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (lists of token ids, each of at least 2 tokens); see module doc."""
    if batch_size < 1:
        raise UnmemorizeError(f"--batch-size must be at least 1, got {batch_size}")
    windows = [list(w) for w in windows]
    if not windows:
        raise UnmemorizeError("no windows to score: the perplexity data is empty")
    if any(len(w) < 2 for w in windows):
        raise UnmemorizeError("every perplexity window needs at least 2 tokens (one prediction)")
    check_token_ids(model, windows, what="window")
    device = model_device(model)
    total_nll, total_tokens, batch_exps = 0.0, 0, []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = pad_batch(windows[start:start + batch_size])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            counted = next_token_positions(mask)  # (B, T)
            selected = logits[counted]  # (N_b, V)
            selected = selected.to(torch.promote_types(selected.dtype, torch.float32))
            labels = ids[:, 1:][counted[:, :-1]]  # (N_b,): x_{t+1} for each counted t
            batch_nll = float(F.cross_entropy(selected, labels, reduction="sum"))
            batch_tokens = int(counted.sum())
            total_nll += batch_nll
            total_tokens += batch_tokens
            batch_exps.append(math.exp(batch_nll / batch_tokens))
    mean_nll = total_nll / total_tokens
    return PerplexityResult(perplexity=math.exp(mean_nll), mean_nll=mean_nll, tokens=total_tokens,
                            windows=len(windows), batch_mean_exp=sum(batch_exps) / len(batch_exps),
                            batch_size=batch_size)


def perplexity_of_file(model, tokenizer, path: str | Path, seq_len: int = 128, max_tokens: int | None = None,
                       batch_size: int = 16) -> PerplexityResult:
    """Perplexity on a .txt / .jsonl file or folder, windowed by ``data.iter_windows(seq_len, max_tokens)``."""
    windows = list(iter_windows(list_data_files(path), tokenizer, seq_len, max_tokens))
    return perplexity(model, windows, batch_size)
