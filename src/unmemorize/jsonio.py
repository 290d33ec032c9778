"""Strict JSON: every file unmemorize writes parses with a strict parser.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which are not JSON
(RFC 8259) and break ``jq``, JavaScript and most other readers. ``strict_dumps`` replaces every
non-finite float (also inside numpy scalars and nested containers) by ``null`` and then serialises
with ``allow_nan=False``, so a non-finite value that slipped through raises instead of being
written. ``strict_loads`` is the matching strict reader (it refuses ``NaN`` and friends).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, recursively (tuples become lists)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return finite_or_none(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return finite_or_none(value.tolist())
    return value


def strict_dumps(value: Any, indent: int | None = 2, **kwargs) -> str:
    """JSON text with NaN/Inf written as ``null``; refuses anything else that is not JSON."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False, **kwargs)


def _refuse_constant(name: str):
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str) -> Any:
    """Parse JSON, refusing the non-standard constants NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_refuse_constant)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Write strict JSON to ``path`` (inside a folder being built aside, or a plain file)."""
    path = Path(path)
    path.write_text(strict_dumps(value, indent=indent) + "\n")
    return path
