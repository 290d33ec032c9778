"""Inspecting the curvature spectrum: how concentrated A and G are, and what a rho keeps.

Use it to choose rho: the table gives, per module, each factor's effective rank (participation
ratio), the number of eigenvalues holding 90% / 99% of its trace, and the fraction of (i, j)
pairs the exact pair selection keeps at each requested rho. The plot shows eigenvalue decay
per factor, cumulative mass curves, and the kept-pair fraction as a function of rho.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._atomic import save_figure
from ..edit.selection import select_pairs
from .eigen import ModuleBasis

DEFAULT_RHOS = (0.6, 0.8, 0.9, 0.95, 0.99)


def spectrum_rows(bases: dict[str, ModuleBasis], rhos=DEFAULT_RHOS) -> list[dict]:
    rows = []
    for name, basis in bases.items():
        g, a = basis.gradient, basis.activation
        row = {
            "module": name,
            "d_out": g.eigenvalues.numel(),
            "d_in": a.eigenvalues.numel(),
            "G_trace": float(g.eigenvalues.sum()),
            "A_trace": float(a.eigenvalues.sum()),
            "G_effective_rank": g.effective_rank,
            "A_effective_rank": a.effective_rank,
            "G_rank_90": g.rank_for_mass(0.9),
            "G_rank_99": g.rank_for_mass(0.99),
            "A_rank_90": a.rank_for_mass(0.9),
            "A_rank_99": a.rank_for_mass(0.99),
            "clamped_negatives": g.clamped + a.clamped,
        }
        for rho in rhos:
            row[f"kept_pairs@{rho:g}"] = select_pairs(g.eigenvalues, a.eigenvalues, rho).kept_fraction
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of ``spectrum_rows``."""
    if not rows:
        return "(no modules)"
    columns = list(rows[0])

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot_spectra(bases: dict[str, ModuleBasis], path: str | Path, overwrite: bool = True) -> Path:
    """Four panels: G and A eigenvalue decay (normalized, log scale), cumulative trace mass of
    both factors (solid: G, dashed: A), and the fraction of (i, j) pairs each rho keeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    axes = axes.ravel()
    grid = np.linspace(0.05, 0.995, 40)
    for k, (name, basis) in enumerate(bases.items()):
        color = plt.cm.viridis(k / max(1, len(bases) - 1))
        for ax, eig in ((axes[0], basis.gradient), (axes[1], basis.activation)):
            values = eig.eigenvalues.cpu().numpy()
            top = values[0] if values[0] > 0 else 1.0
            ax.semilogy(np.arange(1, len(values) + 1) / len(values), np.maximum(values / top, 1e-16), label=name, lw=1, color=color)
        for eig, style in ((basis.gradient, "-"), (basis.activation, "--")):
            values = eig.eigenvalues.cpu().numpy()
            total = values.sum() if values.sum() > 0 else 1.0
            axes[2].plot(np.arange(1, len(values) + 1) / len(values), np.cumsum(values) / total, style, lw=1, color=color)
        kept = [select_pairs(basis.gradient.eigenvalues, basis.activation.eigenvalues, r).kept_fraction for r in grid]
        axes[3].semilogy(grid, kept, label=name, lw=1, color=color)
    axes[0].set(title="G eigenvalues (lambda / lambda_max)", xlabel="index / d_out")
    axes[1].set(title="A eigenvalues (mu / mu_max)", xlabel="index / d_in")
    axes[2].set(title="cumulative trace mass (solid: G, dashed: A)", xlabel="leading eigenvalues / dimension", ylim=(0, 1.01))
    axes[3].set(title="fraction of (i, j) pairs kept", xlabel="rho (curvature mass kept)")
    if len(bases) <= 12:
        axes[3].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, overwrite=overwrite)
