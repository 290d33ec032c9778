"""Every command's paths, checked in one place before any work.

``command_output(out, overwrite, inputs)`` is how a command starts: the inputs it names exist and
are readable, the output is not, does not contain and does not sit inside any input (so that not
even ``--overwrite`` can ever remove or change an input), and the output is then claimed
(``_atomic.claim_output``: a concurrent run fails at once, leftovers of killed runs are
recovered, an existing output is refused unless ``--overwrite``, and even then only one this tool
wrote is replaced). The claim is held until the command ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ._atomic import check_existing, claim_output, output_path
from .errors import UnmemorizeError


def local_inputs(inputs: Mapping[str, str | Path | None]) -> dict[str, Path]:
    """option -> resolved path for every input that is a local path (hub ids and None are skipped).

    A path that looks local (starts with '.', '/' or '~', or has more than one '/') must exist."""
    found = {}
    for option, value in inputs.items():
        if value is None or str(value) == "":
            continue
        text = str(value)
        path = Path(os.path.expanduser(text))
        if not path.exists():
            if option == "--model" and not text.startswith((".", "/", "~")) and text.count("/") <= 1:
                continue  # a hub id
            raise UnmemorizeError(f"{option} {text!r} does not exist")
        if not os.access(path, os.R_OK):
            raise UnmemorizeError(f"{option} {text!r} is not readable")
        found[option] = path.resolve()
        for link, target in linked_targets(path):  # what the input's links point to is input too
            found[f"{option} (through its link {str(link)!r})"] = target
    return found


def linked_targets(path: Path) -> list[tuple[Path, Path]]:
    """(link, real path) for every symbolic link inside a folder input (a model whose weights link into
    a cache, a data folder with a member linked from elsewhere), inside linked subfolders too (the
    corpus reader enters them): an output may overlap none of those either, or --overwrite could delete
    them through the link. Broken links point to nothing to protect; a folder is entered once."""
    if not path.is_dir():
        return []
    links, entered, pending = [], set(), [path]
    while pending:
        folder = pending.pop()
        real = folder.resolve()
        if real in entered:
            continue
        entered.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: the command's own read says so
        for entry in entries:
            if entry.is_symlink():
                try:
                    target = Path(entry.path).resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                links.append((Path(entry.path), target))
                if target.is_dir():
                    pending.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
    return links


def check_no_overlap(out: Path, inputs: Mapping[str, Path], option: str = "--out") -> None:
    """An output may never be, contain, or sit inside an input."""
    real_out = out.resolve()
    for name, path in inputs.items():
        if real_out == path:
            raise UnmemorizeError(f"{option} {str(out)!r} is the input {name}; an output may never replace an input")
        if real_out in path.parents:
            raise UnmemorizeError(f"{option} {str(out)!r} contains the input {name} ({str(path)!r}); choose an output outside it")
        if path in real_out.parents:
            raise UnmemorizeError(f"{option} {str(out)!r} is inside the input {name} ({str(path)!r}); choose an output outside it")


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None], option: str = "--out") -> Path:
    """The inputs exist and are readable; the output is a usable path overlapping none of them."""
    path = output_path(out, option)
    check_no_overlap(path, local_inputs(inputs), option)
    return path


@contextmanager
def command_output(out: str | Path, overwrite: bool, inputs: Mapping[str, str | Path | None], kind: str = "dir",
                   option: str = "--out") -> Iterator[Path]:
    """Check the inputs and the output, then hold the output's claim (see module docstring)."""
    path = check_output(out, inputs, option)
    with claim_output(path, overwrite, kind, option) as claimed:
        yield claimed


def check_planned_output(out: str | Path, overwrite: bool, inputs: Mapping[str, str | Path | None], kind: str = "dir",
                         option: str = "--out") -> Path:
    """Every refusal ``command_output`` would make, checked without claiming or writing anything: a dry
    run never plans a run that would be refused."""
    path = check_output(out, inputs, option)
    check_existing(path, overwrite, kind)
    return path
