"""Forget and retain sets for the unlearning baselines: token sequences and balanced batches.

A set is read from one path (``load_token_set``) in one of two ways:

* **memorization rows** -- a ``.jsonl`` whose first row has ``prefix_ids``/``suffix_ids`` (or
  ``prefix``/``suffix`` text), as the testbed's ``data/memorized_*.jsonl`` and the paper's
  evaluation sets (``evaluate.memorization``): each row is **one sequence**, prefix + suffix,
  used whole (the authors' loss covers every position of the sequence, not only the suffix);
* **documents** -- anything ``unmemorize collect`` reads (``.txt`` with a document per line,
  ``.jsonl`` with ``text`` or ``input_ids``, parquet, datasets folders): documents are tokenized,
  joined with EOS and cut into windows of ``seq_len`` tokens by ``data.iter_windows``.

``balanced_batches`` then draws every step's batch from both sets so that **every batch holds
forget examples** (the authors' single shuffled loader can draw a batch without any, whose mean
forget loss is NaN).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..corpus import check_token_ids, data_fingerprint, list_data_files
from ..data import iter_windows
from ..errors import UnmemorizeError
from ..evaluate.jsonl import read_jsonl
from ..evaluate.memorization import parse_memorization_row

MEMORIZATION_KEYS = ("prefix_ids", "suffix_ids", "prefix", "suffix")


@dataclass
class TokenSet:
    """Token sequences read from one path, and where they came from (recorded in the manifest)."""

    sequences: list[list[int]]
    source: dict = field(default_factory=dict)  # path, format, fingerprint, sequences, tokens

    def __len__(self) -> int:
        return len(self.sequences)


def _is_memorization_file(path: Path, option: str) -> bool:
    """True when ``path`` is a .jsonl file whose first row is a prefix/suffix memorization row."""
    if not path.is_file() or not path.name.lower().endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        return False
    for _, row in read_jsonl(path, option):
        return any(key in row for key in MEMORIZATION_KEYS)
    return False  # pragma: no cover - read_jsonl raises on a file without rows


def load_token_set(path: str | Path, tokenizer=None, seq_len: int = 128, max_tokens: int | None = None,
                   vocab_size: int | None = None, max_length: int | None = None, option: str = "--forget") -> TokenSet:
    """The sequences of ``path`` (see module doc); ``option`` names the set in errors.

    Memorization rows: sequence = prefix_ids + suffix_ids, checked against ``vocab_size`` and the
    model's ``max_length`` positions. Documents: ``iter_windows(seq_len, max_tokens)``. An input
    that yields no sequence of at least 2 tokens (one next-token prediction) is an error.
    """
    path = Path(path)
    if not path.exists():
        raise UnmemorizeError(f"{option} {str(path)!r} does not exist")
    if _is_memorization_file(path, option):
        sequences = []
        for where, row in read_jsonl(path, option):
            item = parse_memorization_row(row, where, tokenizer)
            sequences.append(check_token_ids(item.prefix_ids + item.suffix_ids, where, vocab_size, max_length,
                                             field="prefix_ids + suffix_ids"))
        kind, fingerprint = "memorization rows", data_fingerprint([path], 0, None)
        sequences = [s for s in sequences if len(s) >= 2]
    else:
        files = list_data_files(path)
        sequences = list(iter_windows(files, tokenizer, seq_len, max_tokens, vocab_size, max_length))
        kind, fingerprint = "documents", data_fingerprint(files, seq_len, max_tokens)
    if not sequences:
        raise UnmemorizeError(f"{option} {str(path)!r} holds no sequence of at least 2 tokens: the set is empty")
    source = {"path": str(path), "format": kind, "fingerprint": fingerprint, "sequences": len(sequences),
              "tokens": sum(len(s) for s in sequences)}
    if kind == "documents":
        source.update(seq_len=seq_len, max_tokens=max_tokens)
    return TokenSet(sequences, source)


def as_sequences(data, option: str) -> list[list[int]]:
    """Token sequences from a ``TokenSet``, lists of ids, or items with ``prefix_ids``/``suffix_ids``."""
    if isinstance(data, TokenSet):
        data = data.sequences
    sequences = []
    for k, entry in enumerate(data):
        if hasattr(entry, "prefix_ids") and hasattr(entry, "suffix_ids"):
            entry = list(entry.prefix_ids) + list(entry.suffix_ids)
        sequences.append(check_token_ids(list(entry), f"{option} sequence {k}"))
    if not sequences:
        raise UnmemorizeError(f"the {option} set is empty; give at least one sequence")
    if any(len(s) < 2 for s in sequences):
        raise UnmemorizeError(f"every {option} sequence needs at least 2 tokens (one next-token prediction)")
    return sequences


def batch_shares(batch_size: int, num_forget: int, num_retain: int) -> tuple[int, int]:
    """(forget, retain) examples per batch: ceil(batch_size / 2) forget examples (the whole forget
    set if it is smaller) and the rest of the batch retain examples, never more than a set holds,
    so a batch never repeats an example."""
    forget = min(math.ceil(batch_size / 2), num_forget)
    return forget, min(batch_size - forget, num_retain)


def steps_per_epoch(batch_size: int, num_forget: int, num_retain: int) -> int:
    """ceil((|forget| + |retain|) / batch_size): as many SGD steps as the authors' epoch, one pass
    over the concatenated sets in batches of ``batch_size``."""
    return math.ceil((num_forget + num_retain) / batch_size)


class _Stream:
    """Indices 0..n-1 in seeded random order, reshuffled after each pass; ``take(k)`` never returns
    an index twice (a new pass moves the indices already taken in this batch to its end)."""

    def __init__(self, n: int, rng: random.Random):
        self.n, self.rng, self.pool = n, rng, []

    def take(self, k: int) -> list[int]:
        taken: list[int] = []
        while len(taken) < k:
            if not self.pool:
                order = list(range(self.n))
                self.rng.shuffle(order)
                chosen = set(taken)
                self.pool = [i for i in order if i not in chosen] + [i for i in order if i in chosen]
            taken.append(self.pool.pop(0))
        return taken


def balanced_batches(num_forget: int, num_retain: int, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[list[int], list[int]]]:
    """(forget indices, retain indices) for each of ``epochs * steps_per_epoch`` steps.

    Each set is drawn from its own seeded stream of shuffled passes (``random.Random``, seeded
    with ``"bsn-batches-<seed>"``): every batch holds ``batch_shares`` forget and retain examples,
    no example twice. The small forget set is therefore seen more often than in the authors'
    single shuffled loader, and every batch has a defined forget loss.
    """
    if num_forget < 1:
        raise UnmemorizeError("the forget set is empty; balanced batches need at least one forget example")
    if batch_size < 2:
        raise UnmemorizeError(f"--batch-size must be at least 2 (forget and retain examples in every batch), got {batch_size}")
    forget_k, retain_k = batch_shares(batch_size, num_forget, num_retain)
    rng = random.Random(f"bsn-batches-{seed}")
    forget, retain = _Stream(num_forget, rng), _Stream(num_retain, rng)
    for _ in range(epochs * steps_per_epoch(batch_size, num_forget, num_retain)):
        yield forget.take(forget_k), retain.take(retain_k)


def batch_rows(forget: Sequence[list[int]], retain: Sequence[list[int]], indices: tuple[list[int], list[int]]) -> tuple[list[list[int]], int]:
    """The batch's sequences, forget first, and how many of them are forget sequences."""
    forget_ids, retain_ids = indices
    return [forget[i] for i in forget_ids] + [retain[i] for i in retain_ids], len(forget_ids)
