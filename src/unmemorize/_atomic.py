"""Outputs that can never destroy data: checked first, claimed, built aside, swapped in.

Every folder or file a command writes goes through ``claim_output`` (``atomic_dir`` and
``atomic_file`` claim for you; a claim is re-entrant within one process):

1. **Checked before any work.** The path is not empty, not the folder the command runs in (nor
   one above it), not a symbolic link; its parent is a folder (created if missing).
2. **Claimed atomically.** An exclusive ``flock`` on ``.<name>.lock`` beside the output, held for
   the whole run: a concurrent run writing the same output fails at once, naming the holder's pid.
   The kernel drops the lock when a process dies, even by SIGKILL, so a crash never leaves a
   stale claim; the lock file is removed when the claim ends. The lock file is opened with
   O_NOFOLLOW (a planted symbolic link is refused, never written through). On a file system
   without flock (some NFS, FUSE and cluster mounts) the claim is ``.<name>.claim`` created with
   O_EXCL instead; it outlives a crashed holder, so its refusal names the file to remove.
3. **Leftovers recovered.** Holding the claim, the run finishes what a killed run of the same
   output left: ``.<name>.tmp-*`` folders are removed; an overwrite killed between its two renames
   (``out`` missing) is completed from the finished new copy, or rolled back to the old one.
4. **An existing output is refused** unless ``overwrite``; even then only a folder this tool
   wrote (its marker ``.unmemorize-output.json``, or, for folders of earlier versions, its
   metadata file: ``LEGACY_MARKERS``), a PNG it wrote (``Software: unmemorize`` in its metadata)
   or a JSON file it wrote (an ``unmemorize_version`` key) is ever replaced.
5. **Built aside, swapped in.** The new content is built in ``.<name>.tmp-*`` (mode from the
   umask); the marker is written last, so a temporary folder with a marker is complete. Then
   ``out -> .<name>.old-*``, ``tmp -> out``, the old copy is removed. At every instant ``out`` is
   the old complete output, the new complete output, or (between the two renames) missing with
   both complete copies beside it, which the next run writing ``out`` resolves (step 3).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import UnmemorizeError
from .jsonio import strict_dumps

MARKER = ".unmemorize-output.json"
# folders of earlier versions, before the marker: their metadata file and a key only unmemorize writes there
LEGACY_MARKERS = {"factors.json": "unmemorize_version", "unmemorize_edit.json": "unmemorize_version", "testbed.json": "key",
                  "vision.json": "key", "results.json": "wall_seconds", "analysis.json": "counted_positions"}
PNG_SOFTWARE = "unmemorize"
_HELD: dict[str, list] = {}  # real path of the output -> [lock fd, depth]


def umask() -> int:
    """The process umask (read without changing it for other threads for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_path(out: str | Path, option: str = "--out") -> Path:
    """Step 1: the output as an absolute path, or an error naming what is wrong with it."""
    if out is None or str(out).strip() == "":
        raise UnmemorizeError(f"{option} is empty; name the output to write")
    path = Path(os.path.abspath(os.path.expanduser(str(out))))
    cwd = Path.cwd().resolve()
    if path == Path(path.anchor):
        raise UnmemorizeError(f"{option} {str(out)!r} is the file-system root; name a new folder")
    if path.is_symlink():
        raise UnmemorizeError(f"{option} {str(out)!r} is a symbolic link; give the real path")
    real = path.resolve()
    if real == cwd or real in cwd.parents:
        raise UnmemorizeError(f"{option} {str(out)!r} is the current folder or contains it; name a new folder")
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UnmemorizeError(f"{option} {str(out)!r}: {str(ancestor)!r} is a file, not a folder")
            break
    return path


def written_by_unmemorize(path: Path) -> bool:
    """True for a folder, PNG or JSON file this tool wrote (see the module docstring, step 4)."""
    if path.is_dir():
        if (path / MARKER).is_file():
            return True
        for name, key in LEGACY_MARKERS.items():
            try:
                info = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and key in info:
                return True
        return False
    if path.is_file() and path.suffix.lower() == ".json" and path.stat().st_size < 64 * 2**20:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(info, dict) and "unmemorize_version" in info
    if path.is_file() and path.suffix.lower() == ".png":
        try:
            from PIL import Image

            with Image.open(path) as image:
                return image.info.get("Software") == PNG_SOFTWARE
        except Exception:  # noqa: BLE001 - any unreadable file is not ours
            return False
    return False


def _lock(path: Path) -> int:
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        try:  # O_NOFOLLOW: a symlink planted at the lock's name is never followed into someone's file
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~umask())
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnmemorizeError(f"{str(lock_path)!r} is a symbolic link; remove it (unmemorize never writes through one)") from None
            raise UnmemorizeError(f"cannot write in {str(path.parent)!r}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UnmemorizeError(f"another unmemorize run ({holder}) is writing {str(path)!r}; wait for it or choose another output") from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
            os.close(fd)  # a file system without flock (some NFS, FUSE and cluster mounts): an exclusive claim file instead
            return _claim_without_flock(path, lock_path)
        try:  # the previous holder may have removed the lock file between our open and flock
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            return fd
        os.close(fd)


NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def _claim_without_flock(path: Path, lock_path: Path) -> int:
    """Where flock is not supported: ``.<name>.claim`` created with O_EXCL (atomic on local and NFSv3+ file
    systems). Unlike a flock it outlives a crashed holder, so a refusal names the file to remove."""
    claim = path.with_name(f".{path.name}.claim")
    try:
        fd = os.open(claim, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~umask())
    except FileExistsError:
        try:
            holder = claim.read_text(errors="replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise UnmemorizeError(f"another unmemorize run ({holder}) is writing {str(path)!r} (this file system has no flock, so the "
                              f"claim is the file {str(claim)!r}: if that run is gone, remove it)") from None
    except OSError as exc:
        raise UnmemorizeError(f"cannot write in {str(path.parent)!r}: {exc.strerror}") from None
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (claim file: no flock here)".encode(), 0)
    lock_path.unlink(missing_ok=True)  # the flock file opened before is not used
    _CLAIM_FILES[fd] = claim
    return fd


_CLAIM_FILES: dict[int, Path] = {}  # fd -> claim file, for outputs claimed without flock


def _unlock(path: Path, fd: int) -> None:
    claim = _CLAIM_FILES.pop(fd, None)
    try:
        os.unlink(claim if claim is not None else path.with_name(f".{path.name}.lock"))
    except OSError:
        pass
    os.close(fd)


def _leftovers(path: Path, kind: str) -> list[Path]:
    prefix = f".{path.name}.{kind}-"
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix)) if path.parent.is_dir() else []


def _recover(path: Path) -> None:
    """Step 3: resolve what killed runs of this output left (the claim is held)."""
    temps, olds = _leftovers(path, "tmp"), _leftovers(path, "old")
    if not path.exists():
        complete = [t for t in temps if t.is_dir() and (t / MARKER).is_file()]
        if complete:  # killed between the renames: the new copy is whole, finish the swap
            complete[-1].rename(path)
            temps.remove(complete[-1])
        elif olds:  # killed with the old copy set aside and no whole new copy: put it back
            olds[-1].rename(path)
            olds.pop()
    for leftover in temps + olds:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def check_existing(path: Path, overwrite: bool, kind: str) -> None:
    """Step 4."""
    if not path.exists():
        return
    if kind == "dir" and not path.is_dir():
        raise UnmemorizeError(f"output {str(path)!r} exists and is not a folder")
    if kind == "file" and path.is_dir():
        raise UnmemorizeError(f"output {str(path)!r} is a folder; give a file name")
    if kind == "dir" and not any(path.iterdir()):
        return  # an empty folder holds nothing to lose
    if not overwrite:
        what = "folder" if kind == "dir" else "file"
        raise UnmemorizeError(f"output {what} {str(path)!r} already exists; pass --overwrite to replace it")
    if not written_by_unmemorize(path):
        raise UnmemorizeError(f"--overwrite only replaces outputs unmemorize wrote, and {str(path)!r} is not one "
                              f"(no {MARKER}); move it away or choose another output")


@contextmanager
def _held(path: Path):
    """The claim's lock on ``path`` (``_HELD`` counts this process's re-entries: only the first takes it)."""
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = _lock(path)
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        _unlock(path, fd)


@contextmanager
def claim_output(out: str | Path, overwrite: bool = False, kind: str = "dir", option: str = "--out"):
    """Steps 1-4 for ``out`` (``kind`` 'dir' or 'file'); yields the absolute path, claimed until exit."""
    path = output_path(out, option)
    if str(path) in _HELD:  # this process claimed it already (its checks were made then)
        with _held(path):
            yield path
        return
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _held(path):
            _recover(path)
            check_existing(path, overwrite, kind)
            yield path
    finally:
        if not path.exists():  # nothing was written: remove the (empty) parent folders the claim made
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break


@contextmanager
def hold_claim(path: str | Path):
    """Hold the claim of an existing output without its checks: a run that writes inside it (decompose's
    cache in a factor folder) keeps a concurrent ``--overwrite`` of that folder from replacing it meanwhile,
    and waits for no one (a run writing it already makes this one fail at once, naming it)."""
    path = Path(path).resolve()  # a linked --factors locks the folder a collect writes, by its real name
    with _held(path):
        yield path


def _marker(kind: str) -> str:
    from ._version import __version__

    return strict_dumps({"unmemorize_version": __version__, "kind": kind, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=None)


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False, kind: str = "output"):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` (step 5), on error it is removed."""
    with claim_output(out, overwrite, "dir") as path:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            yield tmp
            _apply_umask(tmp)
            (tmp / MARKER).write_text(_marker(kind))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        check_existing(path, overwrite, "dir")  # nothing new appeared while we worked (we hold the claim)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
            path.rename(old)
            try:
                _fault_point("between-renames")
            finally:  # a signal arriving here (SIGTERM, Ctrl-C) still finds the swap finished, never --out missing
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)


def _apply_umask(folder: Path) -> None:
    """Give the folder and everything in it the modes the umask asks for (mkdtemp makes 0700, and
    some writers, safetensors among them, make 0600 files)."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_file(out: str | Path, overwrite: bool = False, option: str = "--out"):
    """Yield a temporary file path next to ``out``; on success it replaces ``out`` in one rename."""
    with claim_output(out, overwrite, "file", option) as path:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~umask())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)


def save_figure(fig, path: str | Path, dpi: int = 120, overwrite: bool = True) -> Path:
    """Save a matplotlib figure through a temporary sibling (never a half-written image), tagged as ours, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_file(path, overwrite) as tmp:
            metadata = {"Software": PNG_SOFTWARE} if path.suffix.lower() == ".png" else None
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", metadata=metadata)
    finally:
        plt.close(fig)
    return path


_FAULT_COUNTS: dict[str, int] = {}


def _fault_point(name: str) -> None:
    """Crash-safety tests stop a run here: with UNMEMORIZE_FAULT_PAUSE=<name> the process writes
    ``$UNMEMORIZE_FAULT_FILE`` and waits to be killed, at the point's ``$UNMEMORIZE_FAULT_AT``-th
    passage (default: the first). Does nothing otherwise."""
    if os.environ.get("UNMEMORIZE_FAULT_PAUSE") != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] != int(os.environ.get("UNMEMORIZE_FAULT_AT", "1")):
        return
    Path(os.environ["UNMEMORIZE_FAULT_FILE"]).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


def disk_error(exc: OSError) -> str:
    """One line for a file-system error (full disk, permissions, read-only folder)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; nothing was written"
    return f"{exc.strerror or exc}{where}"
