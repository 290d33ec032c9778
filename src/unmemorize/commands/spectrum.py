"""``unmemorize spectrum``: per-module spectra of a factor folder, a table and a plot (``basis/spectrum.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..curvature.factors import factor_modules
from ..errors import UnmemorizeError
from ..jsonio import strict_dumps


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``unmemorize spectrum``."""
    spectrum = subparsers.add_parser("spectrum", help="Per-module spectra table and plot.",
                                     description="Eigendecompose the factors and print, per module, effective ranks, "
                                     "ranks at 90/99% of each trace and the fraction of pairs each rho keeps; save a PNG plot.")
    spectrum.add_argument("--factors", required=True, help="Factor folder.")
    spectrum.add_argument("--out", help="PNG file for the plot (default: <factors>/spectrum.png, the one file a command adds "
                          "beside an input).")
    spectrum.add_argument("--overwrite", action="store_true", help="Replace an existing plot (only a PNG unmemorize wrote).")
    spectrum.add_argument("--rhos", default="0.6,0.8,0.9,0.95,0.99", help="rho values for the kept-pairs columns.")
    spectrum.add_argument("--json", action="store_true", help="Print the table as JSON instead of Markdown.")
    return spectrum


def run(args) -> None:
    """Decompose the factors (or read their cache), print the table, save the plot."""
    from ..basis import decompose_factors
    from ..curvature import load_factors
    from ..edit.plan import rho_list
    from ..paths import check_output, command_output
    from ..basis.spectrum import format_table, plot_spectra, spectrum_rows

    rhos = rho_list(args.rhos, "--rhos")
    factor_modules(args.factors)
    default = args.out is None
    out = Path(args.factors) / "spectrum.png" if default else Path(args.out)
    # the default plot sits beside the factors: the input may not be replaced, but it may hold this one new file
    inputs = {} if default else {"--factors": args.factors}
    check_output(out, inputs)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UnmemorizeError(f"--out {str(out)!r} must end in .png, .pdf or .svg")
    with command_output(out, args.overwrite, inputs, kind="file"):
        factors = load_factors(args.factors)
        bases = decompose_factors(factors)
        rows = spectrum_rows(bases, rhos)
        png = plot_spectra(bases, out, overwrite=args.overwrite)
    print(strict_dumps(rows) if args.json else format_table(rows))
    print(f"plot: {png}", file=sys.stderr)
