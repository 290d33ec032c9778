"""``unmemorize demo --vision``: remove memorized noisy labels from a ViT, the paper's Table 2.

1. train (or load) the vision testbed: a small ViT on images with 10% wrong training labels;
2. collect K-FAC factors of every MLP linear (fc1, fc2) on the training images, CLS token only,
   labels sampled from the model (true Fisher);
3. per-block sweep: each single block (fc1 + fc2) at each rho, then the best pair -- scored on
   the *training* set only (memorized % and clean-train accuracy); validation is never used for a
   choice. Rule: lowest memorized % among edits that keep clean-train accuracy within
   ``clean_budget`` of the baseline;
4. evaluate baseline, K-FAC, SVD on the same modules at matched clean-train accuracy, and the
   random-pairs control;
5. activation-ratio analysis (paper Figure 2, ViT panels): band ratios of noisy-label vs
   clean-label training images in every fc1/fc2, K-FAC and SVD bases (``analysis/``);
6. write report.md, results.json and plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..analysis import band_analysis, image_batches
from ..analysis.report import summary_table, write_analysis
from ..basis import decompose_factors
from ..curvature import CollectConfig, ImageClassificationObjective, collect_factors
from .._atomic import atomic_dir
from ..edit import EditConfig, edited
from ..edit.plan import rho_list
from ..errors import check_seed
from ..targets import preset_modules
from .metrics import evaluate_vision
from .train import VisionConfig, load_vision

QUICK_VISION = dict(hidden_size=32, layers=2, heads=2, intermediate_size=64, epochs=40)


@dataclass
class VisionDemoConfig:
    out: str = "runs/demo-vision"
    quick: bool = False
    seed: int = 0
    dataset: str = "digits"
    noise_fraction: float = 0.1
    fisher: str = "true"
    positions: str = "cls"
    rhos: str = "0.9,0.95,0.98,0.99,0.995,0.999"
    clean_budget: float = 0.05
    overwrite: bool = False


def _plan(model, blocks: list[int], rho: float) -> dict[str, float]:
    return {name: rho for name in preset_modules(model, blocks, ["fc1", "fc2"])}


def _choose(points: list[dict], baseline: dict, budget: float) -> dict:
    allowed = [p for p in points if p["clean_train"] >= baseline["clean_train"] - budget] or points
    return min(allowed, key=lambda p: (p["memorized"], -p["clean_train"]))


def _band_analysis(model, testbed, modules, bases, out: Path, positions: str) -> dict:
    """Figure 2 for the ViT: noisy-label (memorized) training images vs clean-label training images,
    and validation images vs clean training images, at the factors' positions (CLS by default)."""
    images = testbed.train.images
    tokens = (model.config.image_size // model.config.patch_size) ** 2 + 1
    groups = {"clean": images[~testbed.noised], "memorized": images[testbed.noised], "validation": testbed.validation.images}
    sources = {name: (lambda pixels=pixels: image_batches(pixels, tokens, positions, 256)) for name, pixels in groups.items()}
    result = band_analysis(model, modules, bases, sources, "clean")
    extra = write_analysis(result, out / "analysis", ["memorized", "validation"])
    layers = {name: {kind: stats["ratio"]["memorized"] for kind, stats in entry["bases"].items()} for name, entry in result["modules"].items()}
    return {"summary": extra["summary"], "memorized_ratios": layers, "counted_positions": result["counted_positions"], "folder": "analysis"}


def run_vision_demo(config: VisionDemoConfig | None = None) -> dict:
    """The vision experiment; ``config.out`` is claimed before any work and written atomically at the end."""
    config = config or VisionDemoConfig()
    check_seed(config.seed)
    rho_list(config.rhos, "--rhos")
    with atomic_dir(config.out, config.overwrite, kind="demo-vision") as tmp:
        results = _run_vision_demo(config, tmp)
    print(f"\nreport: {Path(config.out) / 'report.md'}   total {sum(results['wall_seconds'].values()):.1f} s")
    return results


def _run_vision_demo(config: VisionDemoConfig, out: Path) -> dict:
    walls, clock = {}, time.perf_counter()

    def lap(name):
        nonlocal clock
        walls[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    sizes = {**(QUICK_VISION if config.quick else {}), **({} if config.dataset == "digits" else {"patch_size": 4})}  # 28x28: 49 patches
    vision_config = VisionConfig(dataset=config.dataset, noise_fraction=config.noise_fraction, seed=config.seed, **sizes)
    testbed = load_vision(vision_config)
    model = testbed.model
    lap("vision testbed (train or load)")
    baseline = evaluate_vision(model, testbed)
    targets = preset_modules(model, None, ["fc1", "fc2"])
    images = testbed.train.images
    batches = [{"pixel_values": images[i : i + 256], "labels": testbed.noisy_labels[i : i + 256]} for i in range(0, len(images), 256)]
    objective = ImageClassificationObjective(model, config.positions)
    factors = collect_factors(model, batches, targets, CollectConfig(fisher=config.fisher, seed=config.seed, progress=False), objective)
    bases = decompose_factors(factors)
    lap("K-FAC factors (CLS) + eigendecomposition")
    rhos = rho_list(config.rhos, "--rhos")
    blocks = list(range(model.config.num_hidden_layers))
    sweep = []
    for block in blocks:
        for rho in rhos:
            with edited(model, _plan(model, [block], rho), factors, bases=bases):
                sweep.append({"blocks": [block], "rho": rho, "method": "kfac", **evaluate_vision(model, testbed)})
    best_per_block = {b: _choose([p for p in sweep if p["blocks"] == [b]], baseline, config.clean_budget) for b in blocks}
    ranked = sorted(blocks, key=lambda b: (best_per_block[b]["memorized"], -best_per_block[b]["clean_train"]))
    candidates = [best_per_block[b] for b in blocks]
    if len(blocks) > 1:
        pair = sorted(ranked[:2])
        for rho in rhos:
            with edited(model, _plan(model, pair, rho), factors, bases=bases):
                point = {"blocks": pair, "rho": rho, "method": "kfac", **evaluate_vision(model, testbed)}
            sweep.append(point)
            candidates.append(point)
    chosen = _choose(candidates, baseline, config.clean_budget)
    plan = _plan(model, chosen["blocks"], chosen["rho"])
    lap("per-block sweep (training set only)")
    svd_points = []
    for energy in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99):
        with edited(model, {n: energy for n in plan}, config=EditConfig(method="svd")):
            svd_points.append({"blocks": chosen["blocks"], "energy": energy, "method": "svd", **evaluate_vision(model, testbed)})
    svd = min(svd_points, key=lambda p: abs(p["clean_train"] - chosen["clean_train"]))
    svd_per_block = []
    for block in blocks:
        with edited(model, {n: svd["energy"] for n in _plan(model, [block], 1.0)}, config=EditConfig(method="svd")):
            svd_per_block.append({"blocks": [block], "energy": svd["energy"], "method": "svd", **evaluate_vision(model, testbed)})
    with edited(model, plan, factors, EditConfig(method="random", seed=config.seed), bases=bases):
        random_point = evaluate_vision(model, testbed)
    lap("SVD, random control")
    analysis = _band_analysis(model, testbed, targets, bases, out, config.positions)
    lap("activation-ratio analysis (bands, K-FAC vs SVD)")
    label = f"blocks {'+'.join(map(str, chosen['blocks']))}, fc1+fc2"
    results = {
        "config": {**asdict(config), "vision": testbed.info, "targets": targets,
                   "selection_rule": f"lowest memorized % with clean-train accuracy >= baseline - {config.clean_budget}; validation never used"},
        "methods": {
            "baseline": {**baseline, "setting": "-"},
            "kfac": {**{k: chosen[k] for k in ("memorized", "recovery", "clean_train", "validation")}, "setting": f"{label}, rho={chosen['rho']}"},
            "svd": {**{k: svd[k] for k in ("memorized", "recovery", "clean_train", "validation")}, "setting": f"{label}, energy={svd['energy']}"},
            "random": {**random_point, "setting": f"{label}, rho={chosen['rho']}, random pairs"},
        },
        "per_block": {"kfac": [best_per_block[b] for b in blocks], "svd": svd_per_block},
        "sweep": sweep + svd_points,
        "analysis": analysis,
        "wall_seconds": walls,
    }
    table = write_vision_report(results, out)
    lap("report")
    print(table)
    return results


def _analysis_lines(results: dict) -> list[str]:
    analysis = results.get("analysis")
    if not analysis:
        return []
    lines = ["## Activation-ratio analysis (paper Figure 2, ViT panels)", "",
             "fc1/fc2 inputs at the factors' positions, projected on curvature-ordered bands; ratio = mean band activation on "
             "noisy-label (memorized) training images / on clean-label training images. Separation = ln(r_bottom50) - ln(r_top10).", "",
             *summary_table(analysis["summary"], unit="blocks x fc")]
    lines += ["", "![bands](analysis/bands_memorized.png)", "", "Per-module tables: [analysis/analysis.md](analysis/analysis.md).", ""]
    return lines


def write_vision_report(results: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| method | setting | memorized noisy labels % | ground-truth recovery % | clean-train acc % | validation acc % |",
             "|---|---|---|---|---|---|"]
    for name, r in results["methods"].items():
        lines.append(f"| {name} | {r['setting']} | {100 * r['memorized']:.1f} | {100 * r['recovery']:.1f} | {100 * r['clean_train']:.1f} | "
                     f"{100 * r['validation']:.1f} |")
    table = "\n".join(lines)
    kfac, svd = results["per_block"]["kfac"], results["per_block"]["svd"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    x = np.arange(len(kfac))
    for ax, key, title in zip(axes, ("memorized", "recovery", "validation"), ("memorized noisy labels", "ground-truth recovery", "validation")):
        ax.bar(x - 0.2, [100 * p[key] for p in kfac], 0.4, label="K-FAC (best rho)")
        ax.bar(x + 0.2, [100 * p[key] for p in svd], 0.4, label="SVD")
        ax.axhline(100 * results["methods"]["baseline"][key], color="grey", ls="--", lw=0.8, label="baseline")
        ax.set(title=f"{title} %, single block edited", xlabel="block", xticks=x)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "per_block.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, marker in (("kfac", "o"), ("svd", "s")):
        points = [p for p in results["sweep"] if p["method"] == method]
        ax.scatter([100 * p["memorized"] for p in points], [100 * p["validation"] for p in points], marker=marker, alpha=0.6, label=method)
    base = results["methods"]["baseline"]
    ax.scatter([100 * base["memorized"]], [100 * base["validation"]], color="black", marker="*", s=90, label="baseline")
    ax.set(xlabel="memorized noisy labels %", ylabel="validation accuracy %", title="Memorization vs validation (all sweep points)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memorized_vs_validation.png", dpi=120)
    plt.close(fig)
    info = results["config"]["vision"]
    text = ["# unmemorize vision demo report", "",
            f"ViT with {info['parameters']:,} parameters on {results['config']['dataset']} ({info['train_images']} training images, "
            f"{info['noised_images']} with a wrong label); trained to {100 * info['train_accuracy_noised_subset']:.1f}% on the noised subset "
            f"and {100 * info['train_accuracy_clean_subset']:.1f}% on the clean subset in {info['seconds']:.0f} s. Factors on the CLS "
            f"token, {results['config']['fisher']} Fisher. Rule: {results['config']['selection_rule']}.", "",
            "## Paper Table 2 analogue", "", table, "", "## Per block", "", "![per block](per_block.png)", "",
            "| block | K-FAC rho | memorized % | recovery % | clean-train % | validation % | SVD memorized % | SVD validation % |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {k['blocks'][0]} | {k['rho']} | {100 * k['memorized']:.1f} | {100 * k['recovery']:.1f} | {100 * k['clean_train']:.1f} | "
              f"{100 * k['validation']:.1f} | {100 * s['memorized']:.1f} | {100 * s['validation']:.1f} |" for k, s in zip(kfac, svd)],
            "", "![memorized vs validation](memorized_vs_validation.png)", "", *_analysis_lines(results), "## Wall times", "", "| stage | seconds |", "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in results["wall_seconds"].items()], ""]
    (out / "report.md").write_text("\n".join(text))
    return table
