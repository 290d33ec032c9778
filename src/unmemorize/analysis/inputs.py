"""The inputs of an activation analysis: token sequences (LMs) or images (ViTs), grouped by source.

A text source is a file or folder:

* ``.txt`` -- general text: documents joined with EOS and cut into ``seq_len`` windows, exactly
  as ``unmemorize collect`` reads its data (use it for the clean reference);
* ``.jsonl`` -- one sequence per row, whichever shape the row has:
  memorization rows (``prefix_ids``/``suffix_ids`` or ``prefix``/``suffix``): prefix + suffix,
  the continuation starting after the prefix; task rows (``task``, ``prompt`` and ``answer``, or
  ``choices`` + ``label``): prompt + " " + gold answer, grouped by their ``task`` field;
  ``input_ids`` rows as given; ``text`` rows tokenized without special tokens.

An image source is a ``.safetensors`` file holding ``pixel_values`` (N, C, H, W).

Which positions of a sequence count is chosen by ``positions`` (``analysis.run``):
``next_token`` (default; every position that predicts a next token, the positions K-FAC's A
is collected over), ``continuation`` (only positions predicting the continuation/answer; rows
that have none -- .txt windows, ``text`` and ``input_ids`` rows -- count as ``next_token``, and
a row cut by ``seq_len`` before its continuation counts nothing), ``all``; for images ``cls``
(default) or ``all`` tokens. ``skip_first = k`` leaves out each sequence's first k positions
(e.g. k = 1 drops the attention-sink position, whose activations are atypical).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import check_token_ids, iter_windows, list_data_files, pad_batch, pad_token_id
from ..errors import UnmemorizeError
from ..models import model_source
from ..evaluate.jsonl import id_list, read_jsonl
from ..evaluate.memorization import parse_memorization_row
from ..evaluate.tasks import TaskRow, parse_task_row

TEXT_POSITIONS = ("next_token", "continuation", "all")
IMAGE_POSITIONS = ("cls", "all")


@dataclass
class TokenSequence:
    ids: list[int]
    continuation_start: int = 0  # first position that predicts a continuation token
    where: str = ""  # file:line it came from, for error messages

    def counted(self, positions: str, skip_first: int = 0) -> list[int]:
        last = len(self.ids) - 1
        if positions == "all":
            return list(range(skip_first, len(self.ids)))
        start = self.continuation_start if positions == "continuation" else 0
        return list(range(max(start, skip_first), last))


def _ids(tokenizer, text: str, where: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise UnmemorizeError(f"{where}: the text tokenizes to no tokens")
    return ids


def task_sequence(task: TaskRow, tokenizer) -> TokenSequence:
    """prompt + " " + gold answer (or the labelled choice); the continuation starts after the prompt."""
    prompt = _ids(tokenizer, task.prompt, task.where)
    answer = task.answer if task.answer is not None else task.choices[task.label]
    return TokenSequence(prompt + _ids(tokenizer, " " + answer, task.where), len(prompt) - 1)


def _row_sequence(row: dict, where: str, tokenizer) -> tuple[str | None, TokenSequence]:
    if any(key in row for key in ("prefix_ids", "suffix_ids", "prefix", "suffix")):
        item = parse_memorization_row(row, where, tokenizer)
        return None, TokenSequence(item.prefix_ids + item.suffix_ids, len(item.prefix_ids) - 1)
    if "prompt" in row and "task" in row:
        task = parse_task_row(row, where)
        return task.task, task_sequence(task, tokenizer)
    if "input_ids" in row:
        return None, TokenSequence(id_list(row["input_ids"], where, "input_ids"))
    if isinstance(row.get("text"), str):
        return None, TokenSequence(_ids(tokenizer, row["text"], where))
    raise UnmemorizeError(f"{where}: a row needs 'prefix_ids'/'suffix_ids', 'prefix'/'suffix', 'task'+'prompt', "
                          f"'input_ids' or 'text'; got keys {sorted(row)}")


def load_text_source(path: str | Path, tokenizer, seq_len: int = 128, max_tokens: int = 20_000,
                     vocab_size: int | None = None) -> dict[str | None, list[TokenSequence]]:
    """Sequences of one source file or folder, by group (the ``task`` field of task rows, else None).

    Each group is cut at ``max_tokens`` tokens (whole sequences; at least one) and every
    sequence at ``seq_len`` tokens. Every id is checked against ``vocab_size`` as rows are read.
    """
    files = list_data_files(path)
    groups: dict[str | None, list[TokenSequence]] = {}
    used: dict[str | None, int] = {}
    for file in files:
        if file.suffix == ".txt":
            for window in iter_windows([file], tokenizer, seq_len, max(0, max_tokens - used.get(None, 0)), vocab_size):
                groups.setdefault(None, []).append(TokenSequence(window))
                used[None] = used.get(None, 0) + len(window)
            continue
        for where, row in read_jsonl(file, "analysis source"):
            group, sequence = _row_sequence(row, where, tokenizer)
            check_token_ids(sequence.ids, where, vocab_size, field="token ids")
            if used.get(group, 0) >= max_tokens:
                continue
            sequence.ids = sequence.ids[:seq_len]
            groups.setdefault(group, []).append(sequence)
            used[group] = used.get(group, 0) + len(sequence.ids)
    groups = {k: [s for s in v if len(s.ids) >= 2] for k, v in groups.items()}
    if not any(groups.values()):
        raise UnmemorizeError(f"{path}: no sequence of at least 2 tokens")
    return {k: v for k, v in groups.items() if v}


def load_image_source(path: str | Path, max_images: int | None = None, model: str | None = None) -> torch.Tensor:
    """``pixel_values`` (N, C, H, W): a .safetensors file, or images (a folder of class subfolders, a datasets
    folder, a parquet file) through the image processor of ``model`` (see ``vision/images.py``)."""
    from ..vision.images import load_image_processor, read_images, read_pixel_file

    path = Path(path)
    if path.suffix == ".safetensors" or model is None:
        return read_pixel_file(path, max_images)
    return read_images(path, load_image_processor(model), max_images)


def text_batches(sequences: list[TokenSequence], positions: str, batch_size: int, pad_id: int,
                 skip_first: int = 0) -> Iterator[tuple[dict, torch.Tensor]]:
    """(model inputs, counted-position mask (B, T)) for right-padded batches of sequences."""
    if positions not in TEXT_POSITIONS:
        raise UnmemorizeError(f"positions for text must be one of {TEXT_POSITIONS}, got {positions!r}")
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start: start + batch_size]
        batch = pad_batch([s.ids for s in chunk], pad_id)
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, sequence in enumerate(chunk):
            mask[row, sequence.counted(positions, skip_first)] = True
        yield batch, mask


def image_batches(pixels: torch.Tensor, tokens: int, positions: str, batch_size: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """(model inputs, counted-position mask (B, tokens)): the CLS token (index 0) or every token."""
    if positions not in IMAGE_POSITIONS:
        raise UnmemorizeError(f"positions for images must be one of {IMAGE_POSITIONS}, got {positions!r}")
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start: start + batch_size]
        mask = torch.zeros(len(chunk), tokens, dtype=torch.bool)
        if positions == "cls":
            mask[:, 0] = True
        else:
            mask[:] = True
        yield {"pixel_values": chunk}, mask


def resolve_positions(model, tokenizer, positions: str) -> tuple[bool, str]:
    """(is the model an image classifier, the positions to count); 'auto' -> next_token / cls.

    Errors on a positions value of the other modality, before any work."""
    images = hasattr(model.config, "image_size") and tokenizer is None
    if positions == "auto":
        return images, "cls" if images else "next_token"
    allowed = IMAGE_POSITIONS if images else TEXT_POSITIONS
    if positions not in allowed:
        kind = "an image model" if images else "a language model"
        raise UnmemorizeError(f"--positions {positions!r} does not apply to {kind}; choose from {', '.join(allowed)}")
    return images, positions


def image_sources(paths: dict[str, str], model, positions: str, batch_size: int, max_positions: int) -> dict:
    """name -> batches function for .safetensors image sources; at most ``max_positions`` counted per source."""
    tokens = (model.config.image_size // model.config.patch_size) ** 2 + 1
    per_image = 1 if positions == "cls" else tokens
    dtype = next(model.parameters()).dtype
    sources = {}
    for name, path in paths.items():
        pixels = load_image_source(path, max(1, max_positions // per_image), model_source(model)).to(dtype)
        sources[name] = lambda pixels=pixels: image_batches(pixels, tokens, positions, batch_size)
    return sources


def sequence_batches(sequences: list[TokenSequence], positions: str, batch_size: int, pad_id: int, skip_first: int = 0):
    """A re-iterable batches function over ``sequences`` (what ``band_analysis`` takes per source)."""
    return lambda: text_batches(sequences, positions, batch_size, pad_id, skip_first)


def text_sources(paths: dict[str, str], tokenizer, positions: str, seq_len: int, max_tokens: int, batch_size: int,
                 skip_first: int = 0, vocab_size: int | None = None) -> dict:
    """name -> batches function for text sources (every group of a file pooled into one source)."""
    pad_id = pad_token_id(tokenizer)
    sources = {}
    for name, path in paths.items():
        sequences = [s for group in load_text_source(path, tokenizer, seq_len, max_tokens, vocab_size).values() for s in group]
        sources[name] = sequence_batches(sequences, positions, batch_size, pad_id, skip_first)
    return sources
