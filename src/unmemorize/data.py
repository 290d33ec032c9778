"""Token windows from text or pre-tokenized corpora, streamed under a token budget.

The records come from ``corpus.iter_records`` (.txt, .jsonl[.gz|.zst], .parquet, datasets
folders): a document (text) or a pre-tokenized row (``input_ids``).

A pre-tokenized row is cut into consecutive windows of at most ``seq_len`` tokens, never joined
to the next row (so a row of a whole book costs one window's memory, not the book's; a row of at
most ``seq_len`` tokens is one window, as is: the paper's evaluation sets are ids). Documents are tokenized without special tokens, joined with the tokenizer's EOS token and cut
into consecutive windows of ``seq_len`` tokens (the last, shorter window is kept). The budget
``max_tokens`` counts window tokens and cuts the last window to fit it exactly.

Cost is linear in what the budget reads: windows are taken at an offset (never by cutting the front
off the rest of a document), and a document longer than the budget still needs is tokenized only
as far as it must be (``tokenize_prefix``): a book stored as one 50 MB line costs the tokens read,
not the book.
Batches are right-padded: padding never changes what a causal model computes at real positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .corpus import check_token_ids, data_fingerprint, iter_records, list_data_files, listing_fingerprint, text_lines  # noqa: F401 - re-exported
from .errors import UnmemorizeError

PREFIX_MARGIN_TOKENS = 256  # tokens beyond the cut that a prefix's tokenization must reach past


def tokenize_prefix(tokenizer, text: str, need: int | None) -> tuple[list[int], bool]:
    """(ids, complete): the tokens of ``text`` (no special tokens), or only its first ``need`` of them.

    Prefixes of ``text`` are tokenized, doubling in length from 8 characters per token needed, and the
    first ``need`` tokens are returned (``complete`` False) once a prefix yields ``need +
    PREFIX_MARGIN_TOKENS`` tokens and the next, twice as long, agrees on the first ``need``. A
    heuristic, not a proof: it assumes a token does not depend on text more than 256 tokens further
    on, true of the BPE, WordPiece and Unigram tokenizers in use (``tests/test_data.py`` compares with
    whole-text tokenization for byte-level BPE and SentencePiece-style BPE without pre-tokenization, at
    fixed and random cuts). ``need`` None, or a text the prefixes reach the end of, gives the whole
    text's tokens (``complete`` True)."""
    if need is not None:
        chars, previous = max(4096, 8 * (need + PREFIX_MARGIN_TOKENS)), None
        while chars < len(text):
            ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
            if len(ids) >= need + PREFIX_MARGIN_TOKENS:
                head = list(ids[:need])
                if head == previous:
                    return head, False
                previous = head
            chars *= 2
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), True


def iter_windows(files: list[Path], tokenizer, seq_len: int, max_tokens: int | None = None, vocab_size: int | None = None,
                 max_length: int | None = None, text_field: str = "text") -> Iterator[list[int]]:
    """Token windows of at most ``seq_len`` tokens, ``max_tokens`` tokens in all (None: no budget).

    ``vocab_size`` and ``max_length`` (the model's, see ``models.model_limits``) are checked for
    every window: pre-tokenized rows as they are read, tokenized text as it is cut."""
    if seq_len < 2:
        raise UnmemorizeError(f"--seq-len must be at least 2, got {seq_len}")
    if max_length is not None and seq_len > max_length:
        raise UnmemorizeError(f"--seq-len {seq_len} is longer than the model's {max_length} positions")
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    budget = float("inf") if max_tokens is None else max_tokens
    buffer: list[int] = []
    emitted = 0

    def take(window: list[int]) -> list[int]:
        nonlocal emitted
        window = window[: int(min(len(window), budget - emitted))]
        emitted += len(window)
        return window

    def checked(window: list[int]) -> list[int]:
        if vocab_size is not None and window and (max(window) >= vocab_size or min(window) < 0):
            bad = next(t for t in window if t >= vocab_size or t < 0)
            raise UnmemorizeError(f"the tokenizer produced id {bad}, outside the model's vocabulary (0..{vocab_size - 1}): "
                                  "tokenizer and model do not match")
        return window

    # rows are cut to seq_len below, so a row longer than the model's positions is not an error here
    for record in iter_records(files, vocab_size, None, text_field):
        if emitted >= budget:
            return
        if isinstance(record, list):  # pre-tokenized: windows of at most seq_len, within the row
            for start in range(0, len(record), seq_len):
                if emitted >= budget:
                    return
                window = take(record[start:start + seq_len])
                if len(window) >= 2:
                    yield window
            continue
        if tokenizer is None:
            raise UnmemorizeError("text data needs a tokenizer, and this model has none; give pre-tokenized input_ids")
        need = None if max_tokens is None else max(0, int(budget - emitted) - len(buffer))  # tokens the budget still reads
        ids, complete = tokenize_prefix(tokenizer, record, need)
        buffer.extend(ids)
        if eos is not None and complete:
            buffer.append(eos)
        start = 0  # windows are read at an offset: cutting each off the front would copy the rest of a long document
        while len(buffer) - start >= seq_len and emitted < budget:
            window = take(buffer[start:start + seq_len])
            start += seq_len
            if len(window) >= 2:
                yield checked(window)
        del buffer[:start]  # once per document: linear in its length
        if not complete:  # the budget ends inside this document: its last, shorter window
            break
    if len(buffer) >= 2 and emitted < budget:
        window = take(buffer)
        if len(window) >= 2:
            yield checked(window)


def read_ahead(files: list[Path], tokenizer, seq_len: int, max_tokens: int | None = None, vocab_size: int | None = None,
               max_length: int | None = None, text_field: str = "text") -> dict:
    """Read every window a run will read (``iter_windows``, same arguments) and keep none of them:
    {"windows", "tokens", "seconds"}. Every data error (a bad token id, non-UTF-8 bytes, malformed
    JSON, a corrupt parquet, gzip or zstandard file, a row without text) surfaces here, so a command
    can run this before it loads a model, and a corpus holding no window of two tokens is refused."""
    import time

    start = time.perf_counter()
    windows = tokens = 0
    for window in iter_windows(files, tokenizer, seq_len, max_tokens, vocab_size, max_length, text_field):
        windows += 1
        tokens += len(window)
    if windows == 0:
        where = str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
        raise UnmemorizeError(f"the data ({where}) holds no window of at least 2 tokens")
    return {"windows": windows, "tokens": tokens, "seconds": round(time.perf_counter() - start, 3)}


def pad_batch(windows: list[list[int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad windows into ``input_ids`` and ``attention_mask``, both (batch, max_len)."""
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
        mask[row, : len(window)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def pad_token_id(tokenizer) -> int:
    """The id used to pad batches: the tokenizer's pad token, else its EOS token, else 0 (padded
    positions are masked, so the choice never changes a result)."""
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is not None:
            return int(getattr(tokenizer, name))
    return 0


def next_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: a real token at t with a real next token at t + 1 (last position and padding excluded)."""
    mask = attention_mask.bool()
    counted = torch.zeros_like(mask)
    counted[:, :-1] = mask[:, :-1] & mask[:, 1:]
    return counted


def iter_batches(windows: Iterable[list[int]], batch_size: int, pad_id: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    if batch_size < 1:
        raise UnmemorizeError(f"--batch-size must be at least 1, got {batch_size}")
    chunk: list[list[int]] = []
    for window in windows:
        chunk.append(window)
        if len(chunk) == batch_size:
            yield pad_batch(chunk, pad_id)
            chunk = []
    if chunk:
        yield pad_batch(chunk, pad_id)
