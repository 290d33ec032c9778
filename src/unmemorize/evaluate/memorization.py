"""Memorization sets (prefix -> suffix) and their strict / loose / Levenshtein scores.

A memorization set is a .jsonl file, one item per line, either as token ids

    {"id": "dolma-17", "prefix_ids": [...], "suffix_ids": [...]}

or as text, tokenized with ``add_special_tokens=False``; the suffix is tokenized on its own,
not as a continuation of the prefix, as the paper's code does:

    {"id": "quote-3", "prefix": "To be, or not", "suffix": " to be, that is the question"}

``"id"`` is optional (default: the line number). The model reads the prefix ids as given (no
BOS is added), greedily writes L = len(suffix_ids) tokens, and ``metrics.memorization_scores``
compares them with the suffix.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnmemorizeError
from .generate import check_token_ids, greedy_continuations
from .jsonl import id_list, read_jsonl
from .metrics import LOOSE_THRESHOLD, MemorizationScores, memorization_scores


@dataclass
class MemorizationItem:
    """One memorized sequence: the model is prompted with ``prefix_ids`` and should write ``suffix_ids``."""

    id: str
    prefix_ids: list[int]
    suffix_ids: list[int]


def _tokenize(tokenizer, text, where: str, field: str) -> list[int]:
    if not isinstance(text, str) or not text:
        raise UnmemorizeError(f"{where}: {field!r} must be a non-empty string")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UnmemorizeError(f"{where}: {field!r} tokenizes to no tokens")
    return list(ids)


def parse_memorization_row(row: dict, where: str, tokenizer=None) -> MemorizationItem:
    """One item from a row with ``prefix_ids``/``suffix_ids`` or ``prefix``/``suffix`` (see module doc)."""
    item_id = str(row.get("id", where.rsplit(":", 1)[-1]))
    if "prefix_ids" in row or "suffix_ids" in row:
        return MemorizationItem(item_id, id_list(row.get("prefix_ids"), where, "prefix_ids"),
                                id_list(row.get("suffix_ids"), where, "suffix_ids"))
    if "prefix" in row or "suffix" in row:
        if tokenizer is None:
            raise UnmemorizeError(f"{where}: a text row ('prefix'/'suffix') needs a tokenizer; pass one, or give "
                                  "'prefix_ids'/'suffix_ids'")
        return MemorizationItem(item_id, _tokenize(tokenizer, row.get("prefix"), where, "prefix"),
                                _tokenize(tokenizer, row.get("suffix"), where, "suffix"))
    raise UnmemorizeError(f"{where}: a memorization row needs 'prefix_ids' and 'suffix_ids' (token ids) or "
                          f"'prefix' and 'suffix' (text); got keys {sorted(row)}")


def load_memorization_set(path: str | Path, tokenizer=None) -> list[MemorizationItem]:
    """The items of a memorization .jsonl file, in file order (text rows need ``tokenizer``)."""
    return [parse_memorization_row(row, where, tokenizer) for where, row in read_jsonl(path, "memorization set")]


def greedy_suffixes(model, items: list[MemorizationItem], pad_id: int, batch_size: int = 64) -> list[list[int]]:
    """For each item, len(suffix_ids) greedy ids after its prefix; items are grouped by suffix length."""
    groups: dict[int, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        groups[len(item.suffix_ids)].append(k)
    generated: list[list[int]] = [[] for _ in items]
    for length, members in sorted(groups.items()):
        outputs = greedy_continuations(model, [items[k].prefix_ids for k in members], length, pad_id, batch_size)
        for k, output in zip(members, outputs):
            generated[k] = output
    return generated


def evaluate_memorization(model, items: list[MemorizationItem], pad_id: int, batch_size: int = 64,
                          loose_threshold: float = LOOSE_THRESHOLD) -> MemorizationScores:
    """Strict / loose accuracy and mean normalized Levenshtein of ``model`` on ``items``.

    Greedy decoding (``generate.greedy_continuations``), L = len(suffix) new tokens per item;
    scores as in ``metrics.memorization_scores``, per-item distances in the order of ``items``.
    """
    if not items:
        raise UnmemorizeError("no items to score: the memorization set is empty")
    check_token_ids(model, [item.suffix_ids for item in items], what="suffix")
    generated = greedy_suffixes(model, items, pad_id, batch_size)
    return memorization_scores(generated, [item.suffix_ids for item in items], loose_threshold)
