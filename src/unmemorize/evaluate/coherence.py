"""nDCG@10 coherence: how much of the baseline's next-token ranking an edited model keeps.

As the paper's code computes it (``metrics/ndcg_evaluator.py`` with
``data/baseline_generator.py``; ../shared/paper/paper-notes.md, "nDCG@10"). With K = 10, at every
counted position p the frozen baseline's top-K ids b_1..b_K (b_1 most likely) are the reference,
the edited model's top-K ids e_1..e_K its ranking, and

    rel(e_r)  = K - s + 1    if e_r == b_s (graded by the token's rank s in the *baseline* list), else 0
    DCG_p     = sum_{r=1..K} rel(e_r) / log2(r + 1)                  (discount: the *edited* rank r)
    IDCG      = sum_{r=1..K} (K - r + 1) / log2(r + 1)               (the baseline's own order)
    nDCG@K    = (1 / P) sum_p DCG_p / IDCG                             (mean over all P positions)

A model against itself scores exactly 1. The paper's printed formula (App. C) writes instead
rel = K - r + 1 for the edited model's r-th prediction when it is anywhere in the baseline's top
K, i.e. it grades by the edited rank and ignores where the token sat in the baseline list; the
two agree only when every shared token keeps its rank. We follow the code.

Data, as the code's ``TextChunkDataset``: each line of a .txt file (newline included) is
tokenized without special tokens, the ids are concatenated with no separator, cut to the first
``max_tokens`` (paper: 200,000) and into windows of ``seq_len`` (paper: 1024) tokens, the ragged
tail dropped. Every position of a window but the last is counted: P = windows * (seq_len - 1).
The code runs the models under bf16 autocast; here each runs in the dtype it was loaded in.
Ties inside a top-K list are broken by ``torch.topk``, identically for identical logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import UnmemorizeError
from .generate import check_token_ids, model_device


@dataclass
class NDCGConfig:
    """Settings of the nDCG@K coherence check (recorded with its result)."""

    k: int = field(default=10, metadata={"help": "K: the length of the baseline's reference list (paper: 10)."})
    seq_len: int = field(default=1024, metadata={"help": "Window length in tokens (paper: 1024; at most the model's positions)."})
    max_tokens: int = field(default=200_000, metadata={"help": "Tokens read from the start of the text (paper: 200,000)."})
    batch_size: int = field(default=8, metadata={"help": "Windows per forward pass (paper: 8)."})

    def validate(self) -> None:
        for name, low in (("k", 1), ("seq_len", 2), ("max_tokens", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UnmemorizeError(f"--ndcg-{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def ndcg_windows(path: str | Path, tokenizer, seq_len: int, max_tokens: int) -> list[list[int]]:
    """The code's windows of a .txt file: lines tokenized and concatenated, first ``max_tokens``, full windows only."""
    path = Path(path)
    if path.suffix != ".txt" or not path.is_file():
        raise UnmemorizeError(f"--ndcg-data {str(path)!r} must be an existing .txt file (a document per line)")
    if tokenizer is None:
        raise UnmemorizeError("nDCG data is text and the model has no tokenizer")
    from ..corpus import text_lines
    from ..data import tokenize_prefix

    tokens: list[int] = []
    for _, line in text_lines(path):  # UTF-8 or an error naming the file, as every other reader
        tokens.extend(tokenize_prefix(tokenizer, line, max_tokens - len(tokens))[0])
        if len(tokens) >= max_tokens:
            break
    tokens = tokens[:max_tokens]
    count = len(tokens) // seq_len
    if count == 0:
        raise UnmemorizeError(f"--ndcg-data {str(path)!r} gives {len(tokens)} tokens, fewer than one window of {seq_len}; "
                              "give more text or a smaller --ndcg-seq-len")
    return [tokens[w * seq_len:(w + 1) * seq_len] for w in range(count)]


def top_k_ids(model, windows: list[list[int]], k: int = 10, batch_size: int = 8) -> torch.Tensor:
    """(P, k) int64: the model's k most likely next ids at every window position but the last, window by window."""
    if not windows or len({len(w) for w in windows}) != 1 or len(windows[0]) < 2:
        raise UnmemorizeError("nDCG windows must be non-empty, of one length, at least 2 tokens")
    check_token_ids(model, windows, what="window")
    device, rows = model_device(model), []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            ids = torch.tensor(windows[start:start + batch_size], dtype=torch.long, device=device)  # (B, L)
            logits = model(input_ids=ids).logits[:, :-1]  # (B, L-1, V)
            if k > logits.shape[-1]:
                raise UnmemorizeError(f"--ndcg-k {k} is larger than the vocabulary ({logits.shape[-1]})")
            rows.append(torch.topk(logits, k, dim=-1).indices.reshape(-1, k).cpu())  # (B*(L-1), k)
    return torch.cat(rows)


def ndcg_per_position(edited: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(P,) float64 DCG_p / IDCG for top-K lists ``edited`` and ``reference``, both (P, K); see module doc."""
    if edited.shape != reference.shape or edited.dim() != 2:
        raise UnmemorizeError(f"top-K lists must both be (positions, K); got {tuple(edited.shape)} and {tuple(reference.shape)}")
    k = reference.shape[1]
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))  # (K,): 1/log2(r+1), r = 1..K
    grades = torch.arange(k, 0, -1, dtype=torch.float64)  # (K,): K - s + 1 for baseline rank s = 1..K
    matches = edited[:, :, None] == reference[:, None, :]  # (P, K_edited, K_reference)
    relevance = (matches.double() * grades).sum(-1)  # (P, K): rel(e_r); a token appears at most once per list
    return (relevance * discount).sum(-1) / (grades * discount).sum()


@dataclass
class NDCGResult:
    """Mean nDCG@K over ``positions`` positions of ``windows`` windows."""

    ndcg: float
    positions: int
    windows: int
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)


def ndcg(model, reference: torch.Tensor, windows: list[list[int]], config: NDCGConfig | None = None) -> NDCGResult:
    """nDCG@K of ``model`` against ``reference`` = ``top_k_ids(baseline, windows, K)`` on the same windows."""
    config = config or NDCGConfig()
    config.validate()
    edited = top_k_ids(model, windows, config.k, config.batch_size)
    if edited.shape != reference.shape:
        raise UnmemorizeError(f"the reference top-K lists are {tuple(reference.shape)}, the model's {tuple(edited.shape)}: "
                              "were they made on other windows or another K?")
    scores = ndcg_per_position(edited, reference)
    return NDCGResult(ndcg=float(scores.mean()), positions=int(scores.numel()), windows=len(windows), config=asdict(config))
