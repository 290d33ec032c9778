"""Cost of the band analysis per module: building each read-out, and projecting hidden states.

    .venv/bin/python benchmarks/analysis_readouts.py [--big]

Read-out construction (float64, CPU) for gate/up-like (d_out > d_in) and down-like (d_out < d_in)
shapes, given the eigendecompositions (their cost is in benchmarks/results.md, "Edit per
module"); then band activations of 4,096 hidden states per basis (float64 on CPU, as
``band_analysis`` runs there). ``--big`` adds the 7B shapes (11008, 4096) and (4096, 11008).
Output: a Markdown table on stdout (quoted in benchmarks/results-analysis.md).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from unmemorize.analysis.bands import build_readout
from unmemorize.basis import ModuleBasis, decompose


def random_psd(d: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(d, 2 * d, generator=generator, dtype=torch.float64) / (2 * d) ** 0.5
    return x @ x.T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also the 7B MLP shapes (several minutes on 2 cores)")
    args = parser.parse_args(argv)
    shapes = [(2048, 512), (512, 2048), (4096, 1024), (1024, 4096)] + ([(11008, 4096), (4096, 11008)] if args.big else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n")
    print("| shape (d_out, d_in) | whitened build | pairs build | svd build | band activations, 4,096 states (each basis) |")
    print("|---|---|---|---|---|")
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
        print(f"| ({d_out}, {d_in}) | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
