"""What does the band analysis cost per module: building each read-out, and projecting hidden states?

    .venv/bin/python benchmarks/analysis_readouts.py          # about a minute on 2 cores; writes results-analysis-quick.md
    .venv/bin/python benchmarks/analysis_readouts.py --big    # ~12 min on 2 cores; writes results-analysis.md

Read-out construction (float64, CPU) for gate/up-like (d_out > d_in) and down-like (d_out < d_in)
shapes, given the eigendecompositions (their cost: benchmarks/edit_per_module.py); then band
activations of 4,096 hidden states per basis (float64 on CPU, as ``band_analysis`` runs there).
``--big`` adds the 7B shapes (11008, 4096) and (4096, 11008); most of the time goes to building the
random factors' eigendecompositions, which are not timed.

Output: a Markdown table on stdout, also written with its command to
``docs/results/benchmarks/results-analysis.md`` (with ``--big``; without it
``results-analysis-quick.md``, so a run without the 7B shapes never overwrites the full results).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, command_line  # noqa: E402

from unmemorize.analysis.bands import build_readout  # noqa: E402
from unmemorize.basis import ModuleBasis, decompose  # noqa: E402

NOTE = ("Read-out build times are for one module given the eigendecompositions of A and G (float64, CPU). Band activations: "
        "one basis, 4,096 hidden states, float64 on CPU; on an accelerator band_analysis uses float32.")


def random_psd(d: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(d, 2 * d, generator=generator, dtype=torch.float64) / (2 * d) ** 0.5
    return x @ x.T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also the 7B MLP shapes (several minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown results (default docs/results/benchmarks/"
                        "results-analysis.md with --big, results-analysis-quick.md without)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    printed = []

    def emit(line: str) -> None:  # the table on stdout as it grows, kept for the results file
        print(line, flush=True)
        printed.append(line)

    shapes = [(2048, 512), (512, 2048), (4096, 1024), (1024, 4096)] + ([(11008, 4096), (4096, 11008)] if args.big else [])
    emit(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    emit("| shape (d_out, d_in) | whitened build | pairs build | svd build | band activations, 4,096 states (each basis) |")
    emit("|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for d_out, d_in in shapes:
        weight = torch.randn(d_out, d_in, generator=generator) / d_in**0.5
        basis = ModuleBasis(gradient=decompose(random_psd(d_out, generator)), activation=decompose(random_psd(d_in, generator)))
        states = torch.randn(4096, d_in, generator=generator, dtype=torch.float64)
        cells = []
        for kind in ("whitened", "pairs", "svd"):
            start = time.perf_counter()
            readout = build_readout(kind, weight, basis)
            cells.append(f"{time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        readout.band_activations(states)
        cells.append(f"{1000 * (time.perf_counter() - start):.0f} ms")
        emit(f"| ({d_out}, {d_in}) | " + " | ".join(cells) + " |")
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    out = args.out or RESULTS / ("results-analysis.md" if args.big else "results-analysis-quick.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([f"# Band analysis cost per module ({os.cpu_count()}-core CPU)", "",
                              f"Command: `{command_line()}` ({minutes} min {seconds} s in all, most of it building the random "
                              "factors' eigendecompositions, which are not timed here).", "", *printed, "", NOTE, ""]))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
