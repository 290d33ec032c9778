"""Documents and token rows from corpora as users store them, streamed: never a whole corpus in memory.

Accepted inputs (a file, or a folder searched recursively in sorted order):

* ``.txt``, ``.txt.gz``, ``.txt.zst`` -- one document per non-empty line;
* ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` -- one JSON object per line with a text field
  (``text_field``, default ``text``: a document) or an ``input_ids`` list (a pre-tokenized
  row; ``data.iter_windows`` cuts it into ``seq_len`` windows); read line by line through
  ``gzip`` / ``zstandard`` streams;
* ``.parquet``                    -- rows with the text field or an ``input_ids`` column, read in
  record batches of 1,024 rows with pyarrow;
* a folder written by ``datasets``' ``save_to_disk`` (``state.json`` + Arrow files): its rows,
  memory-mapped and iterated in batches by ``datasets`` itself.

Every record is yielded as a document (``str``) or a checked list of token ids, with errors that
name the file and the line (or row).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UnmemorizeError

FILE_SUFFIXES = (".txt", ".txt.gz", ".txt.zst", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
FORMATS = ".txt[.gz|.zst], .jsonl[.gz|.zst], .parquet or a datasets folder (save_to_disk)"


def corpus_format(path: Path) -> str | None:
    """'txt', 'jsonl', 'jsonl.gz', 'jsonl.zst', 'parquet', 'datasets' or None."""
    if path.is_dir():
        return "datasets" if (path / "state.json").is_file() and (path / "dataset_info.json").is_file() else None
    name = path.name.lower()
    for suffix in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix.lstrip(".")
    return None


def list_data_files(path: str | Path) -> list[Path]:
    """The data sources under ``path`` (files, or datasets folders); errors when it is missing or empty."""
    root = Path(path)
    if not root.exists():
        raise UnmemorizeError(f"data path {str(root)!r} does not exist")
    if root.is_dir() and (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        raise UnmemorizeError(f"{str(root)!r} is a datasets DatasetDict with splits {', '.join(splits)}; give one split's folder, "
                              f"e.g. {root / (splits[0] if splits else 'train')}")
    if root.exists() and not (root.is_file() or root.is_dir()):
        raise UnmemorizeError(f"data path {str(root)!r} is not a regular file or folder (a FIFO, socket or device): it could block forever")
    if root.is_file() or corpus_format(root) == "datasets":
        if corpus_format(root) is None:
            raise UnmemorizeError(f"data file {str(root)!r} must be {FORMATS}")
        files = [root]
    else:
        files = []
        for folder, subfolders, names in sorted_walk(root):
            if (folder / "dataset_dict.json").is_file():
                raise UnmemorizeError(f"data folder {str(root)!r} holds a datasets DatasetDict, {folder}: all its splits (a test "
                                      "split too) would be read; put one split's folder there instead")
            if corpus_format(folder) == "datasets":
                files.append(folder)
                subfolders.clear()
                continue
            files += [folder / n for n in names if corpus_format(folder / n) is not None]
        if not files:
            raise UnmemorizeError(f"data folder {str(root)!r} holds no {FORMATS}")
        files.sort()
        real: dict[Path, Path] = {}
        for file in files:
            if file.is_symlink() and not file.exists():
                raise UnmemorizeError(f"data folder {str(root)!r}: {file} is a broken symbolic link or a link loop; remove it")
            if not (file.is_file() or file.is_dir()):
                raise UnmemorizeError(f"data folder {str(root)!r}: {file} is not a regular file (a FIFO, socket or device): "
                                      "reading it could block forever; remove it")
            if file.resolve() in real:
                raise UnmemorizeError(f"data folder {str(root)!r}: {file} is {real[file.resolve()]} again, through a symbolic link "
                                      "(it would be read twice); remove the link")
            real[file.resolve()] = file
    if all(p.is_file() and p.stat().st_size == 0 for p in files):
        raise UnmemorizeError(f"data path {str(root)!r} is empty")
    return files


def sorted_walk(root: Path):
    """``os.walk`` in sorted order (so the window stream never depends on the file system), into linked
    subfolders too (a corpus assembled from links is read whole). A folder reached twice (a link to a
    folder already read, or back into one that holds it: a loop) is refused by name: its files would
    be read twice, or forever."""
    def errors(exc: OSError):
        raise UnmemorizeError(f"data folder {str(root)!r}: {exc.filename or ''} cannot be read ({exc.strerror or exc})")

    seen: dict[Path, Path] = {}
    above = {Path(root).resolve(), *Path(root).resolve().parents}  # a link to one of these would walk it all first
    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=errors):
        real = Path(folder).resolve()
        if real in seen:
            raise UnmemorizeError(f"data folder {str(root)!r}: {folder} is {seen[real]} again, through a symbolic link "
                                  "(its files would be read twice, or a loop forever); remove the link")
        seen[real] = Path(folder)
        for name in subfolders:
            link = Path(folder) / name
            if link.is_symlink() and link.resolve() in above:
                raise UnmemorizeError(f"data folder {str(root)!r}: {link} links back to {link.resolve()}, a folder that holds it "
                                      "(a symbolic-link loop); remove the link")
        subfolders.sort()
        yield Path(folder), subfolders, sorted(names)


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


def _open_text(path: Path):
    kind = corpus_format(path)
    if kind.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if kind.endswith(".zst"):
        return io.TextIOWrapper(io.BufferedReader(ZstdFrames(path)), encoding="utf-8")
    return open(path, encoding="utf-8")


class ZstdFrames(io.RawIOBase):
    """A .zst file's frames, decompressed in order as a binary stream. A file that ends inside a frame
    (truncated) or is not zstandard raises EOFError: zstandard's own ``open`` reads a truncated file as
    empty, in silence."""

    def __init__(self, path: Path):
        try:
            import zstandard
        except ImportError:
            raise UnmemorizeError(f"{path}: reading .zst needs the zstandard package (pip install 'unmemorize[corpora]')") from None
        self._zstd, self._error = zstandard.ZstdDecompressor(), zstandard.ZstdError
        self._file = open(path, "rb")
        self._frame = None  # the frame being decompressed (None between frames)
        self._pending, self._offset, self._leftover = b"", 0, b""  # decompressed bytes, how many were given out

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while self._offset == len(self._pending):
            data, self._leftover = (self._leftover or self._file.read(1 << 20)), b""
            if not data:
                if self._frame is not None:
                    raise EOFError("the file ends inside a zstandard frame (truncated)")
                return 0
            self._frame = self._frame or self._zstd.decompressobj()
            try:
                self._pending, self._offset = self._frame.decompress(data), 0
            except self._error as exc:
                raise EOFError(f"not zstandard data ({exc})") from None
            if self._frame.eof:
                self._leftover, self._frame = self._frame.unused_data, None
        size = min(len(target), len(self._pending) - self._offset)
        target[:size] = memoryview(self._pending)[self._offset:self._offset + size]  # an offset: never a copy of the rest
        self._offset += size
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file (plain, gzip or zstandard); an error naming the file otherwise."""
    try:
        with _open_text(path) as handle:
            yield from enumerate(handle, 1)
    except UnicodeDecodeError as exc:
        raise UnmemorizeError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
    except (OSError, EOFError) as exc:  # gzip/zstandard report a corrupt stream as OSError or EOFError
        if getattr(exc, "errno", None) is not None:
            raise
        raise UnmemorizeError(f"{path}: cannot be decompressed ({exc})") from None


def _row_record(row, where: str, text_field: str, vocab_size, max_length) -> str | list[int]:
    if isinstance(row, dict) and row.get("input_ids") is not None:
        return check_token_ids(row["input_ids"], where, vocab_size, max_length)
    if isinstance(row, dict) and isinstance(row.get(text_field), str):
        return row[text_field]
    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
    raise UnmemorizeError(f"{where}: a row needs a {text_field!r} string or an 'input_ids' list; it has {keys}")


def _table_rows(path: Path, text_field: str) -> Iterator[tuple[str, dict]]:
    """(location, row) from a parquet file or a datasets folder, a batch of rows at a time."""
    if corpus_format(path) == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UnmemorizeError(f"{path}: reading parquet needs pyarrow (pip install 'unmemorize[corpora]')") from None
        try:
            handle = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for corrupt files
            raise UnmemorizeError(f"{path}: not a readable parquet file ({exc})") from None
        columns = [c for c in ("input_ids", text_field) if c in handle.schema_arrow.names]
        if not columns:
            raise UnmemorizeError(f"{path}: has no {text_field!r} or 'input_ids' column; columns: {', '.join(handle.schema_arrow.names)}")
        batches = (batch.to_pylist() for batch in handle.iter_batches(batch_size=1024, columns=columns))
    else:
        try:
            import datasets
        except ImportError:
            raise UnmemorizeError(f"{path}: reading a datasets folder needs the datasets package (pip install 'unmemorize[corpora]')") from None
        table = datasets.load_from_disk(str(path))
        columns = [c for c in ("input_ids", text_field) if c in table.column_names]
        if not columns:
            raise UnmemorizeError(f"{path}: has no {text_field!r} or 'input_ids' column; columns: {', '.join(table.column_names)}")
        table = table.select_columns(columns)
        batches = ([dict(zip(b, values)) for values in zip(*b.values())] for b in table.iter(batch_size=1024))
    row_no = 0
    for rows in batches:
        for row in rows:
            row_no += 1
            yield f"{path}:row {row_no}", row


def iter_records(files: Iterable[Path], vocab_size: int | None = None, max_length: int | None = None,
                 text_field: str = "text") -> Iterator[str | list[int]]:
    """Documents (``str``) and pre-tokenized windows (``list[int]``), in file order; ids are
    validated as rows stream (``check_token_ids``), errors name file and line."""
    for path in files:
        kind = corpus_format(path)
        if kind in ("parquet", "datasets"):
            for where, row in _table_rows(path, text_field):
                yield _row_record(row, where, text_field, vocab_size, max_length)
            continue
        for line_no, line in text_lines(path):
            line = line.strip()
            if not line:
                continue
            if kind.startswith("txt"):
                yield line
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnmemorizeError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            yield _row_record(row, f"{path}:{line_no}", text_field, vocab_size, max_length)


def listing_fingerprint(files: list[Path], seq_len: int, max_tokens: int | None, text_field: str = "text") -> str:
    """sha256 over the sources' names and sizes (no content: bounded start-up whatever the corpus size)
    plus the windowing, the budget and the text field. What a run *read* is fingerprinted as it reads
    (``curvature.collect.WindowSteps``)."""
    digest = hashlib.sha256()
    for source in files:
        members = [source] if source.is_file() else [p for folder, _, names in sorted_walk(source) for p in (folder / n for n in names)]
        for path in members:
            digest.update(os.fsencode(path.relative_to(source.parent)) + b"\0" + str(path.stat().st_size).encode() + b"\0")
    digest.update(f"seq_len={seq_len};max_tokens={max_tokens};text_field={text_field}".encode())
    return digest.hexdigest()


def data_fingerprint(files: list[Path], seq_len: int, max_tokens: int | None) -> str:
    """sha256 over the sources' names and bytes (every file of a datasets folder) plus the windowing and the budget."""
    digest = hashlib.sha256()
    for source in files:
        members = [source] if source.is_file() else [p for folder, _, names in sorted_walk(source) for p in (folder / n for n in names)]
        for path in members:
            digest.update(os.fsencode(path.relative_to(source.parent)) + b"\0")  # any file name, UTF-8 or not
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    digest.update(f"seq_len={seq_len};max_tokens={max_tokens}".encode())
    return digest.hexdigest()
