"""Tables and plots of a band analysis: Figure 2 (ratios per layer and band) and Figure 4 (loading vs retention)."""

from __future__ import annotations

import math
from pathlib import Path

from .._atomic import save_figure

BASIS_TITLES = {"whitened": "K-FAC (whitened weight)", "pairs": "K-FAC (A eigenbasis, lambda*mu pairs)", "svd": "SVD of W"}


def _fmt(value: float) -> str:
    """'-' for undefined (NaN or missing), '+inf' / '-inf' as such (a band ratio of exactly 0 is a measurement)."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+}" if math.isinf(value) else f"{value:.3f}"


def ratio_table(result: dict, source: str) -> str:
    """Markdown: one row per module, per basis the four band ratios and the separation score."""
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    header = "| module | " + " | ".join(f"{b}: {' / '.join(result['bands'])} | {b}: sep." for b in basis_names) + " |"
    lines = [header, "|---|" + "---|---|" * len(basis_names)]
    for name, entry in result["modules"].items():
        cells = []
        for kind in basis_names:
            ratios = entry["bases"][kind]["ratio"][source]
            cells += [" / ".join(_fmt(r) for r in ratios), _fmt(entry["bases"][kind]["separation"][source])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_label(source: str, reference: str = "clean") -> str:
    """'memorized / clean' for a source, 'memorized / control' for an ``add_comparison`` key."""
    return source.replace("/", " / ") if "/" in source else f"{source} / {reference}"


def verdict_table(result: dict, source: str) -> str:
    """Markdown, one row per module: does each basis show bottom-50% > 1 and top-10% < 1, its
    separation, and whether each K-FAC basis separates more than the SVD basis."""
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    kfac = [b for b in basis_names if b != "svd"]
    header = ["module", *[f"{b}: bottom50 > 1 and top10 < 1" for b in basis_names], *[f"{b} sep." for b in basis_names]]
    if "svd" in basis_names:
        header += [f"{b} sep. > svd sep." for b in kfac]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in result["modules"].items():
        stats = entry["bases"]
        cells = [name]
        for kind in basis_names:
            ratios = stats[kind]["ratio"][source]
            cells.append("yes" if ratios[-1] > 1 and ratios[0] < 1 else "no")
        cells += [_fmt(stats[kind]["separation"][source]) for kind in basis_names]
        if "svd" in basis_names:
            cells += ["yes" if stats[k]["separation"][source] > stats["svd"]["separation"][source] else "no" for k in kfac]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_band_ratios(result: dict, source: str, path: str | Path) -> Path:
    """Figure 2 analogue: rows = projections, columns = bases; one line per band across layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    basis_names = list(next(iter(result["modules"].values()))["bases"])
    projections = list(dict.fromkeys(e["projection"] for e in result["modules"].values()))
    fig, axes = plt.subplots(len(projections), len(basis_names), figsize=(4.2 * len(basis_names), 2.8 * len(projections)),
                             squeeze=False, sharey="row")
    for row, projection in enumerate(projections):
        entries = sorted((e for e in result["modules"].values() if e["projection"] == projection), key=lambda e: e["layer"] or 0)
        layers = [e["layer"] if e["layer"] is not None else k for k, e in enumerate(entries)]
        for col, kind in enumerate(basis_names):
            ax = axes[row][col]
            for b, band in enumerate(result["bands"]):
                ax.plot(layers, [e["bases"][kind]["ratio"][source][b] for e in entries], marker="o", ms=3, label=band)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"{projection} input: {BASIS_TITLES.get(kind, kind)}", fontsize=8)
            ax.set_xlabel("layer")
            ax.set_xticks(layers)
            if col == 0:
                ax.set_ylabel(comparison_label(source, result['reference']))
    axes[0][0].legend(fontsize=7, title="band", title_fontsize=7)
    numerator = source.split("/")[0]
    fig.suptitle(f"Mean band activation, {comparison_label(source, result['reference'])} (> 1: the band is used more by {numerator})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loading_vs_retention(correlation: dict, path: str | Path, title: str = "") -> Path:
    """Figure 4 made quantitative: low-curvature loading (x) vs retention after the edit (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for point in correlation["points"]:
        ax.scatter(point["loading"], point["retention"], s=40)
        ax.annotate(point["source"], (point["loading"], point["retention"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("low-curvature loading: ln(r_bottom50) - ln(r_top10) vs clean")
    ax.set_ylabel("retention after the edit")
    ax.set_title(title or f"Spearman rho = {correlation['spearman']:.2f} (n = {correlation['n']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
