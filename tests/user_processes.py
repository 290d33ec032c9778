"""Commands run in processes of their own, as a user runs them, at a fraction of the start-up cost.

A server process (``python -c SERVER``) imports ``unmemorize.cli`` and the libraries most commands
load (``WARM``) once, then forks one child per command, two at a time: the child gets stdin from /dev/null, stdout and stderr into files (file descriptors 1 and
2, so C-level and library output is caught as a terminal would show it), default signal handlers,
the case's folder and environment, and, for ``unprivileged`` cases started as root, no capability
that bypasses file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER: root then obeys a
file's mode as its owner, so a read-only folder is really read-only; the uid stays 0, since the
interpreter and the sources may sit in a folder only root may enter, as a CI clone in ``mktemp -d``
does), then runs ``main(argv)`` and exits with its status (an unexpected exception prints its
traceback, as it would for a user). What the fork skips is the interpreter's start and the imports, whose own output
``tests/test_as_a_user.py`` checks once with plain ``python -m unmemorize`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PARALLEL = 2  # children at once: the machines the suite must pass on have 2 cores
WARM = ("transformers", "transformers.models.llama.modeling_llama", "transformers.models.auto.tokenization_auto", "datasets",
        "matplotlib.pyplot", "safetensors.torch")

SERVER = r"""
import importlib, json, os, signal, sys
cases, folder, warm = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3].split(",")
from unmemorize.cli import main
for name in filter(None, warm):  # what most children would import again, each on its own, imported once here
    importlib.import_module(name)
codes, running = [None] * len(cases), {}


def drop_permission_overrides():
    # root keeps its uid (the interpreter and sources may sit in a folder only root may enter) but loses the
    # capabilities that bypass file modes: CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3)
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def child(k, case):
    code = 70
    try:
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(f"{folder}/{k}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(f"{folder}/{k}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for source, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(source, target)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.update(case["env"])
        os.chdir(case["cwd"])
        if case["unprivileged"] and os.geteuid() == 0:
            drop_permission_overrides()
        try:
            code = main(case["argv"])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()  # what a user would see; the test then shows it
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


for k, case in enumerate(cases):
    if len(running) == %(parallel)d:  # one child per core, each on one thread
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    pid = os.fork()
    if pid == 0:
        child(k, case)
    running[pid] = k
while running:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
""" % {"parallel": PARALLEL}


def run_as_user(cases: list[dict], folder: Path, env: dict | None = None, timeout: float = 600, warm: tuple = WARM) -> list[dict]:
    """Run each case ({"argv", "cwd", "env", "unprivileged"}) in its own forked process; returns
    [{"code", "stdout", "stderr"}] in order. ``folder`` receives the cases file and the outputs; ``warm``:
    the modules the server imports before it forks (none for cases that load nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "cases.json"
    listing.write_text(json.dumps([{"env": {}, "unprivileged": False, **case} for case in cases]))
    server = subprocess.run([sys.executable, "-c", SERVER, str(listing), str(folder), ",".join(warm)], capture_output=True, text=True,
                            timeout=timeout,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    assert server.returncode == 0, server.stderr[-3000:]
    codes = json.loads(server.stdout.strip().splitlines()[-1])
    return [{"code": code, "stdout": (folder / f"{k}.out").read_text(), "stderr": (folder / f"{k}.err").read_text()}
            for k, code in enumerate(codes)]
