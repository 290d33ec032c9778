"""The ``unmemorize`` command: the entry point, the parser assembled from ``commands/`` and the error handling.

    unmemorize collect  --model M --data PATH --out DIR [--targets GLOB]... [--fisher true|empirical] ...
    unmemorize edit     --model M --factors DIR --out DIR (--rho X | --plan FILE) [--method kfac|svd|random] ...
    unmemorize spectrum --factors DIR [--out PNG] [--rhos 0.9,0.99]
    unmemorize analyze  --model M --factors DIR --clean FILE --memorized FILE [--tasks FILE] [--retention JSON] --out DIR
    unmemorize demo     [--out DIR] [--seeds 0,1,2] [--baselines]
    unmemorize compare  [--seeds 0,1,2] [--out DIR]   (K-FAC vs SVD vs BSN with stress test, nDCG and attacks)
    unmemorize decompose --factors DIR [--device cuda] [--dtype float64|float32]
    unmemorize eval     --model DIR --lm-eval TASKS [--factors DIR --edit-plan FILE | --edit-rho X]
    unmemorize stress   --model DIR --items FILE [--controls FILE] [--checks stress,ndcg,relearn,sample,bf16] ... --out JSON
    unmemorize unlearn bsn --model M --forget FILE --retain FILE --out DIR [--ratio R] [--alpha A] ...
    unmemorize testbed  train|info [--quick] [--seed K]

Each command lives in ``commands/<name>.py`` (see ``commands/__init__.py``). Errors in the input
print one line, ``unmemorize: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ._version import __version__
from .commands import COMMANDS
from .errors import UnmemorizeError


def build_parser() -> argparse.ArgumentParser:
    """The ``unmemorize`` parser: one subcommand per module of ``commands/``, in ``COMMANDS`` order."""
    parser = argparse.ArgumentParser(prog="unmemorize", description="Find and remove verbatim memorization by editing weights "
                                     "in the K-FAC curvature eigenbasis (arXiv 2510.24256).")
    parser.add_argument("--version", action="version", version=f"unmemorize {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(subparsers)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the process is so that temporary outputs are removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(signum)


def _install_handlers() -> dict:
    """SIGTERM always; SIGHUP (the terminal closed) unless it is ignored, as ``nohup`` asks. Returns what to restore."""
    import signal

    if not _main_thread():
        return {}
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_signal)}
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _on_signal)
    return previous


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 bad input (one ``unmemorize: error:`` line),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP, unless ignored as under ``nohup``);
    an interrupted run leaves no partial output."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _install_handlers()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar and messages are enough
        COMMANDS[args.command].run(args)
    except UnmemorizeError as exc:
        print(f"unmemorize: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unmemorize: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Terminated as stop:
        hangup = stop.signum == getattr(signal, "SIGHUP", None)
        print(f"unmemorize: {'hung up (SIGHUP)' if hangup else 'terminated'}; no partial output was left", file=sys.stderr)
        return 128 + stop.signum
    except OSError as exc:  # full disk, read-only folder, permissions: the environment, not a bug
        from ._atomic import disk_error

        print(f"unmemorize: error: {disk_error(exc)}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
