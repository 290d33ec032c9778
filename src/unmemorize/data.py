"""Token windows from text or pre-tokenized files, streamed under a token budget.

Accepted inputs (a file, or a folder searched recursively in sorted order):

* ``.txt``   -- one document per non-empty line;
* ``.jsonl`` -- one JSON object per line with a ``text`` field (a document), or with an
  ``input_ids`` list (a pre-tokenized window, used as is: the paper's evaluation sets are ids).

Documents are tokenized without special tokens, joined with the tokenizer's EOS token and cut
into consecutive windows of ``seq_len`` tokens (the last, shorter window is kept). The budget
``max_tokens`` counts window tokens and cuts the last window to fit it exactly.
Batches are right-padded: padding never changes what a causal model computes at real positions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .errors import UnmemorizeError

SUFFIXES = (".txt", ".jsonl")


def list_data_files(path: str | Path) -> list[Path]:
    """The data files under ``path``; errors when it is missing or holds no non-empty file."""
    root = Path(path)
    if not root.exists():
        raise UnmemorizeError(f"data path {str(root)!r} does not exist")
    if root.is_file():
        if root.suffix not in SUFFIXES:
            raise UnmemorizeError(f"data file {str(root)!r} must end in .txt or .jsonl")
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise UnmemorizeError(f"data folder {str(root)!r} holds no .txt or .jsonl file")
    if all(p.stat().st_size == 0 for p in files):
        raise UnmemorizeError(f"data path {str(root)!r} is empty")
    return files


def check_token_ids(value, where: str, vocab_size: int | None = None, max_length: int | None = None,
                    field: str = "input_ids") -> list[int]:
    """A list of token ids the model can read, or an error naming ``where`` (file:line) and the problem.

    Ids must be ints (not floats, booleans, strings or null) in [0, vocab_size); a sequence may
    not be longer than the model's ``max_length`` positions."""
    if not isinstance(value, list):
        raise UnmemorizeError(f"{where}: {field!r} must be a list of token ids, got {type(value).__name__}")
    for k, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise UnmemorizeError(f"{where}: {field}[{k}] is {token!r} ({type(token).__name__}); token ids are integers")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            limit = f"0..{vocab_size - 1}" if vocab_size is not None else "non-negative"
            raise UnmemorizeError(f"{where}: {field}[{k}] = {token} is outside the model's vocabulary ({limit})")
    if max_length is not None and len(value) > max_length:
        raise UnmemorizeError(f"{where}: {field} has {len(value)} tokens, more than the model's {max_length} positions")
    return list(value)


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; an error naming the file for other bytes."""
    try:
        with open(path, encoding="utf-8") as handle:
            yield from enumerate(handle, 1)
    except UnicodeDecodeError as exc:
        raise UnmemorizeError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None


def iter_records(files: Iterable[Path], vocab_size: int | None = None, max_length: int | None = None) -> Iterator[str | list[int]]:
    """Documents (``str``) and pre-tokenized windows (``list[int]``), in file order; ids are
    validated as rows stream (``check_token_ids``), errors name file and line."""
    for path in files:
        for line_no, line in text_lines(path):
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".txt":
                yield line
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnmemorizeError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if isinstance(row, dict) and "input_ids" in row:
                yield check_token_ids(row["input_ids"], f"{path}:{line_no}", vocab_size, max_length)
            elif isinstance(row, dict) and isinstance(row.get("text"), str):
                yield row["text"]
            else:
                raise UnmemorizeError(f"{path}:{line_no}: a .jsonl row needs a 'text' string or an 'input_ids' list")


def iter_windows(files: list[Path], tokenizer, seq_len: int, max_tokens: int | None = None, vocab_size: int | None = None,
                 max_length: int | None = None) -> Iterator[list[int]]:
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

    for record in iter_records(files, vocab_size, max_length):
        if emitted >= budget:
            return
        if isinstance(record, list):  # pre-tokenized: one window, as is
            window = take(record)
            if len(window) >= 2:
                yield window
            continue
        if tokenizer is None:
            raise UnmemorizeError("text data needs a tokenizer, and this model has none; give pre-tokenized input_ids")
        buffer.extend(tokenizer(record, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= seq_len and emitted < budget:
            window, buffer = take(buffer[:seq_len]), buffer[seq_len:]
            if len(window) >= 2:
                yield checked(window)
    if len(buffer) >= 2 and emitted < budget:
        window = take(buffer)
        if len(window) >= 2:
            yield checked(window)


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


def data_fingerprint(files: list[Path], seq_len: int, max_tokens: int | None) -> str:
    """sha256 over the files' names and bytes plus the windowing and the budget."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(f"seq_len={seq_len};max_tokens={max_tokens}".encode())
    return digest.hexdigest()
