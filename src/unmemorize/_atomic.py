"""Write folders atomically: build in a temporary sibling, then rename into place."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UnmemorizeError


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output folder unless ``overwrite``; call before any work."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UnmemorizeError(f"output path {str(path)!r} exists and is not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UnmemorizeError(f"output folder {str(path)!r} already exists; pass --overwrite to replace it")
    return path


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out``, on error it is removed."""
    path = check_output_dir(out, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        path.rename(old / "x")
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure to ``path`` through a temporary sibling (never a half-written PNG) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path
