"""``unmemorize decompose``: eigendecompose every factor of a folder once and store the bases beside it
(``basis/decomposition.py``; under torchrun the modules are split over the ranks)."""

from __future__ import annotations

import argparse
import json
import os

from ..basis.cache import INDEX_FILE
from ..basis.decomposition import DecomposeConfig, decompose_to_cache


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize decompose``."""
    parser = subparsers.add_parser(
        "decompose", help="Eigendecompose the factors once and store the bases beside them.",
        description="Run eigh on every A and G of a factor folder (on the GPU when there is one; modules split over "
        "ranks under torchrun) and write <factors>/eigen-<dtype>/ (safetensors, one shard per module, with factor "
        "fingerprints). edit, spectrum and analyze then reuse it instead of recomputing.")
    parser.add_argument("--factors", required=True, help="Factor folder from 'unmemorize collect'.")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help=DecomposeConfig.__dataclass_fields__["dtype"].metadata["help"] + " (default: float64)")
    parser.add_argument("--device", default="auto", help=DecomposeConfig.__dataclass_fields__["device"].metadata["help"] + " (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing cache of this dtype.")
    parser.add_argument("--quiet", action="store_true", help="No per-module timing lines.")
    return parser


def run(args) -> None:
    """The ``decompose`` command: ``decompose_to_cache`` and a one-line summary."""
    config = DecomposeConfig(dtype=args.dtype, device=args.device)
    out = decompose_to_cache(args.factors, config, overwrite=args.overwrite, progress=not getattr(args, "quiet", False))
    if int(os.environ.get("RANK", "0")) == 0:
        index = json.loads((out / INDEX_FILE).read_text())
        print(f"wrote {out}: {len(index['modules'])} modules, {index['dtype']} on {index['device']} x{index['world_size']}, "
              f"{index['seconds']:.1f} s")
