"""Shared by the timing benchmarks (collection_overhead.py, selection_speed.py, edit_per_module.py, decompose_cache.py).

Moved from the former ``benchmarks/run_all.py`` unchanged: timing helpers, the CPU-contention
monitor, the machine record, Markdown tables, ``random_psd``; plus ``run_benchmark``, the part of
run_all's ``main`` that ran one section: machine facts, other processes' load before the start, the
section under a ``CpuMonitor``, the Markdown report (printed and written) and the JSON record.
Results go to ``docs/results/benchmarks/<stem>.md`` and ``<stem>.json`` (``<stem>-quick.*`` with
``--quick``, so a smoke run never overwrites full results).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

import unmemorize  # noqa: E402
from _report import RESULTS, log  # noqa: E402, F401  (log: re-exported for the benchmarks)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        seconds, result = timed(fn)
        times.append(seconds)
    return statistics.median(times), times, result


class CpuMonitor:
    """CPU time used by other processes while a section runs (the machine may be shared).

    With torch at one thread per core, any foreign load stalls its parallel regions and can make
    timings several times slower; a large ``foreign_cpu_s`` marks a section as untrustworthy.
    """

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _busy(self) -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        steal = fields[7] if len(fields) > 7 else 0
        return (sum(fields[:8]) - idle - steal) / self.tick

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy = self._busy()
        own = self._own() - self.own0
        foreign = None if busy is None or self.busy0 is None else max(0.0, busy - self.busy0 - own)
        return {"wall_s": wall, "own_cpu_s": own, "foreign_cpu_s": foreign,
                "foreign_fraction": None if foreign is None else foreign / max(wall * (os.cpu_count() or 1), 1e-9)}


def background_load(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs busy with other work over ``seconds`` (before the run starts)."""
    monitor = CpuMonitor().start()
    time.sleep(seconds)
    return monitor.stop()["foreign_fraction"]


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    import transformers

    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "numpy": np.__version__,
        "transformers": transformers.__version__,
        "unmemorize": unmemorize.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def random_psd(d: int, generator: torch.Generator) -> torch.Tensor:
    """X X^T / k with decaying column scales plus a small distinct ridge: symmetric PD, float32."""
    k = min(d, 1024)
    x = torch.randn(d, k, generator=generator) * (torch.arange(1, k + 1, dtype=torch.float32) ** -0.5)
    a = x @ x.T / k
    ridge = 1e-4 * float(a.diagonal().mean()) * torch.linspace(1.0, 0.01, d)
    a = a + torch.diag(ridge)
    return (a + a.T) / 2


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def report(results: dict, title: str, section: str, section_markdown) -> str:
    """run_all's report for one section: title, machine, ``section_markdown(results[section])`` (a list of
    blocks), other processes' CPU use, total time."""
    out = []
    mi = results["machine"]
    out.append(f"# {title}{' (quick)' if results['quick'] else ''}\n")
    out.append(f"Machine: {mi['cpu']}, {mi['logical_cpus']} logical CPUs, {mi['memory_gib']} GiB; torch {mi['torch']} "
               f"({mi['torch_threads']} threads, {mi['blas']}), numpy {mi['numpy']}, transformers {mi['transformers']}, "
               f"unmemorize {mi['unmemorize']}.\n")
    out.extend(section_markdown(results[section]))
    contention = results.get("cpu_contention", {})
    if contention:
        parts = [f"{k} {v['foreign_cpu_s']:.1f} CPU-s ({v['foreign_fraction']:.0%})" for k, v in contention.items()
                 if v.get("foreign_cpu_s") is not None]
        load = mi.get("background_load_before")
        out.append("Other processes' CPU use (should be ~0; otherwise rerun on an idle machine): "
                   + (f"before start {load:.0%}; " if load is not None else "") + ", ".join(parts) + ".\n")
    out.append(f"Total benchmark time: {results['total_seconds']:.1f} s.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def parser_for(doc: str, stem: str) -> argparse.ArgumentParser:
    """The arguments every timing benchmark takes: --quick and --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (writes the -quick results files)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results, Markdown beside it (default docs/results/benchmarks/{stem}.json, "
                             f"or {stem}-quick.json with --quick)")
    return parser


def run_benchmark(section: str, job, *, quick: bool, out: Path | None, stem: str, title: str, section_markdown) -> int:
    """Run ``job(started)`` as the section ``section`` of a results record, as run_all did for each section.

    Writes ``out`` (JSON; default ``docs/results/benchmarks/<stem>[-quick].json``) and the Markdown
    report beside it (``.md``); prints the report on stdout, progress on stderr."""
    out = out or RESULTS / (f"{stem}-quick.json" if quick else f"{stem}.json")
    started = time.perf_counter()
    results: dict = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info()}
    log(f"machine: {results['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    load = background_load()
    results["machine"]["background_load_before"] = load
    if load is not None and load > 0.05:
        log(f"WARNING: {load:.0%} of the CPUs are busy with other work; timings will be inflated and erratic")
    results["cpu_contention"] = {}
    monitor = CpuMonitor().start()
    results[section] = job(started)
    results["cpu_contention"][section] = usage = monitor.stop()
    if usage["foreign_fraction"] is not None and usage["foreign_fraction"] > 0.05:
        log(f"WARNING: other processes used {usage['foreign_cpu_s']:.1f} CPU-s during '{section}' "
            f"({usage['foreign_fraction']:.0%} of the machine); its timings are not trustworthy")
    gc.collect()
    results["total_seconds"] = time.perf_counter() - started

    text = report(results, title, section, section_markdown)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(text + "\n")
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
