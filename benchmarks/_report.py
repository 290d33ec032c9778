"""Shared by the benchmarks: where results go, machine facts, other processes' CPU use, results files.

Every results file lives in ``docs/results/benchmarks/`` (``RESULTS``), never beside the scripts.

``update``: ``docs/results/benchmarks/results-collect.md`` holds one section per collect-scale
benchmark (collect_ideal.py, collect_peers.py, collect_slice.py, collect_gloo.py,
selection_under_load.py) between HTML comment markers, so each script replaces only its own
section (and only its key of ``results-collect.json``); every section starts with the exact
command that produced it.

``write_results``: a whole-file result, ``docs/results/benchmarks/<stem>.md`` and ``.json``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

from unmemorize.jsonio import strict_dumps, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ROOT / "docs" / "results" / "benchmarks"  # every results file; none beside the scripts
MARKDOWN = RESULTS / "results-collect.md"
JSON = RESULTS / "results-collect.json"
TITLE = ("# Collection at the users' scale (issue 10)\n\nEach section below starts with the command that produced it; "
         "JSON: `docs/results/benchmarks/results-collect.json`.\n")
ORDER = ["selection", "ideal", "peers", "slice", "gloo"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def command_line() -> str:
    return " ".join([".venv/bin/python", *map(shlex.quote, [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])])


def machine() -> dict:
    import numpy as np
    import torch

    from unmemorize.provenance import cpu_name

    return {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "python": platform.python_version()}


class ForeignLoad:
    """CPU time other processes use while a block runs, as a fraction of all CPUs (from /proc/stat).

    The machine may be shared: with torch at one thread per core, foreign work stalls its
    parallel regions and makes timings several times slower, so every timed run records it."""

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        end = self._sample()
        self.fraction = None
        if self.start is not None and end is not None:
            (busy0, own0, t0), (busy1, own1, t1) = self.start, end
            self.fraction = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * (os.cpu_count() or 1))

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        return busy, sum(os.times()[:4]), time.perf_counter()


def foreign_load(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs used by other processes over ``seconds``."""
    with ForeignLoad() as load:
        time.sleep(seconds)
    return load.fraction


def wait_for_quiet(limit: float = 0.05, max_wait_s: float = 300.0) -> float | None:
    """Wait (up to ``max_wait_s``) until other processes use under ``limit`` of the CPUs; the last reading."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        load = foreign_load(1.0)
        if load is None or load < limit or time.perf_counter() > deadline:
            return load
        log(f"  waiting: other processes use {load:.0%} of the CPUs")
        time.sleep(10.0)


def percent(fraction: float | None) -> str:
    return "unknown" if fraction is None else f"{fraction:.0%}"


def update(part: str, markdown: str, data: dict, quick: bool = False) -> None:
    """Replace ``part``'s section of results-collect.md and its key in results-collect.json
    (results-collect-quick.* for smoke runs, so they never overwrite full results)."""
    markdown_path = MARKDOWN.with_name("results-collect-quick.md") if quick else MARKDOWN
    json_path = JSON.with_name("results-collect-quick.json") if quick else JSON
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown_path.read_text() if markdown_path.exists() else TITLE
    sections = dict(re.findall(r"<!-- begin (\w+) -->\n(.*?)<!-- end \1 -->\n", text, flags=re.S))
    sections[part] = markdown.rstrip("\n") + "\n"
    parts = [p for p in ORDER if p in sections] + sorted(p for p in sections if p not in ORDER)
    markdown_path.write_text(TITLE + "".join(f"\n<!-- begin {p} -->\n{sections[p]}<!-- end {p} -->\n" for p in parts))
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results[part] = data
    json_path.write_text(strict_dumps(results, indent=1, default=str) + "\n")  # strict JSON: NaN/Inf as null


def provenance() -> dict:
    """What made a results file (``unmemorize.provenance``), with this benchmark's command line."""
    from unmemorize.provenance import provenance as record

    return record(command_line())


def write_results(stem: str, lines: list[str], record) -> None:
    """A whole-file benchmark result: ``docs/results/benchmarks/<stem>.md`` (the lines) and ``<stem>.json``
    (``{"provenance": ..., "results": record}``); the table is printed too."""
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text)
    write_json(RESULTS / f"{stem}.json", {"provenance": provenance(), "results": record})
    print(text)
