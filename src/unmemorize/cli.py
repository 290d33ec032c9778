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
    """SIGTERM, raised where the process is so that temporary outputs are removed on the way out."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 bad input (one ``unmemorize: error:`` line),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); an interrupted run leaves no partial output."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
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
    except Terminated:
        print("unmemorize: terminated; no partial output was left", file=sys.stderr)
        return 143
    except OSError as exc:  # full disk, read-only folder, permissions: the environment, not a bug
        from ._atomic import disk_error

        print(f"unmemorize: error: {disk_error(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
