"""Reading evaluation .jsonl files: one JSON object per non-empty line, errors as file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..data import text_lines
from ..errors import UnmemorizeError


def read_jsonl(path: str | Path, what: str) -> Iterator[tuple[str, dict]]:
    """(location "file:line", row) for each non-empty line; ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise UnmemorizeError(f"{what} {str(path)!r} does not exist or is not a file")
    found = False
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnmemorizeError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UnmemorizeError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
        found = True
        yield where, row
    if not found:
        raise UnmemorizeError(f"{what} {str(path)!r} holds no rows")


def id_list(value, where: str, field: str) -> list[int]:
    """A non-empty list of non-negative ints, or an error naming the row and field."""
    if not isinstance(value, list) or not value or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                           for t in value):
        raise UnmemorizeError(f"{where}: {field!r} must be a non-empty list of non-negative token ids")
    return list(value)
