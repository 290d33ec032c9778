"""``unmemorize demo --vision``: remove memorized noisy labels from a ViT, the paper's Table 2.

1. train (or load) the vision testbed: a small ViT on images with 10% wrong training labels;
   split the noised images in a *tuning* and a *validation* half (``metrics.split_noised``);
2. collect K-FAC factors of every MLP linear (fc1, fc2) on the training images, CLS token only,
   labels sampled from the model (true Fisher);
3. tune K-FAC and SVD with the same candidates and the same rule (``tune``): each single block
   (fc1 + fc2) at each value of the method's grid (K-FAC rho, SVD kept energy; equal sizes), the
   best block per block, then the two best blocks together at each value. Rule: lowest memorized %
   on the *tuning half* among edits that keep clean-train accuracy within ``clean_budget`` of the
   baseline (ties: higher clean-train). When no candidate meets the budget the lowest memorized %
   is taken anyway and ``rule_met`` is false. The validation half and the held-out images are never
   read by a choice;
4. report baseline, K-FAC, SVD (own tuning), SVD matched (K-FAC's blocks, the energy whose
   clean-train accuracy is closest to K-FAC's) and the random-pairs control on every split, with
   95% Wilson intervals; the held-out accuracy change has a paired bootstrap interval;
5. activation-ratio analysis (paper Figure 2, ViT panels) in ``analysis/``;
6. with several seeds: one folder per seed and a combined report (mean +- std, pooled Wilson).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .._atomic import atomic_dir
from .._timing import Laps
from ..analysis import band_analysis, image_batches
from ..analysis.report import write_analysis
from ..basis import decompose_factors
from ..curvature import CollectConfig, ImageClassificationObjective, collect_factors
from ..edit import EditConfig, edited
from ..edit.plan import rho_list
from ..errors import UnmemorizeError, check_seed
from ..jsonio import write_json
from ..targets import preset_modules
from .metrics import heldout_correct, paired_bootstrap_difference, score_training, split_noised
from .report import write_combined_report, write_vision_report
from .train import VisionConfig, load_vision

QUICK_VISION = dict(hidden_size=32, layers=2, heads=2, intermediate_size=64, epochs=40)
FASHION_VISION = dict(patch_size=7, epochs=150)  # 28x28 in 16 patches; 150 epochs memorize the noised labels (report)
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
VALUE_NAME = {"kfac": "rho", "svd": "energy", "random": "rho"}


@dataclass
class VisionDemoConfig:
    out: str = field(default="runs/demo-vision", metadata={"help": "Output folder (claimed first, written atomically)."})
    quick: bool = field(default=False, metadata={"help": "A 2-block ViT trained 40 epochs: seconds, for tests."})
    seed: int = field(default=0, metadata={"help": "Seed of split, noise, halves, init and data order (when seeds is empty)."})
    seeds: str = field(default="", metadata={"help": "Comma list like '0,1,2': one run per seed in <out>/seed-<k>/ plus a combined report."})
    dataset: str = field(default="digits", metadata={"help": "'digits', 'fashion-mnist' (Debian's folder) or a folder of Fashion-MNIST IDX files."})
    train_limit: int = field(default=2000, metadata={"help": "Fashion-MNIST: the first this many training images (the held-out set is all of t10k)."})
    epochs: int = field(default=0, metadata={"help": "Training epochs; 0: 300 on digits, 150 on Fashion-MNIST, 40 with quick."})
    noise_fraction: float = field(default=0.1, metadata={"help": "Fraction of training labels replaced by a wrong class."})
    fisher: str = field(default="true", metadata={"help": "K-FAC labels: 'true' (sampled from the model) or 'empirical'."})
    positions: str = field(default="cls", metadata={"help": "K-FAC positions: 'cls' (the paper) or 'all' tokens."})
    rhos: str = field(default="0.9,0.95,0.98,0.99,0.995,0.999", metadata={"help": "K-FAC grid: kept curvature mass rho."})
    energies: str = field(default="0.5,0.7,0.8,0.9,0.95,0.98", metadata={"help": "SVD grid: kept fraction of sum(s^2); as many values as rhos."})
    clean_budget: float = field(default=0.05, metadata={"help": "Rule: clean-train accuracy at least baseline minus this (a fraction)."})
    command: str = field(default="", metadata={"help": "The command line recorded in the report (default: this process's argv)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder this tool wrote."})


def seed_list(config: VisionDemoConfig) -> list[int]:
    """The seeds to run: ``seeds`` parsed ('0,1,2'), or ``[seed]`` when it is empty."""
    if not str(config.seeds).strip():
        return [check_seed(config.seed)]
    try:
        seeds = [int(s) for s in str(config.seeds).split(",") if s.strip()]
    except ValueError:
        raise UnmemorizeError(f"--seeds {config.seeds!r} is not a comma-separated list of integers") from None
    if len(set(seeds)) != len(seeds):
        raise UnmemorizeError(f"--seeds {config.seeds!r} repeats a seed")
    return [check_seed(s, "--seeds") for s in seeds]


def grids(config: VisionDemoConfig) -> tuple[list[float], list[float]]:
    rhos, energies = rho_list(config.rhos, "--rhos"), rho_list(config.energies, "--energies")
    if len(rhos) != len(energies):
        raise UnmemorizeError(f"the SVD energy grid needs as many values as the K-FAC rho grid (same candidate budget): "
                              f"{len(energies)} energies ({config.energies}) vs {len(rhos)} rhos ({config.rhos})")
    return rhos, energies


def vision_config(config: VisionDemoConfig) -> VisionConfig:
    dataset = FASHION_MNIST_DEBIAN if config.dataset == "fashion-mnist" else config.dataset
    sizes = {} if dataset == "digits" else {**FASHION_VISION, "train_limit": config.train_limit}
    sizes.update(QUICK_VISION if config.quick else {})
    if config.epochs:
        sizes["epochs"] = config.epochs
    return VisionConfig(dataset=dataset, noise_fraction=config.noise_fraction, seed=config.seed, **sizes)


def _modules(model, blocks: list[int]) -> list[str]:
    return preset_modules(model, blocks, ["fc1", "fc2"])


@contextmanager
def _edit(model, method: str, blocks: list[int], value: float, factors=None, bases=None, seed: int = 0):
    """The model with fc1+fc2 of ``blocks`` edited by ``method`` at ``value`` (rho or kept energy); restored on exit."""
    plan = {name: value for name in _modules(model, blocks)}
    if method == "kfac":
        context = edited(model, plan, factors, bases=bases)
    elif method == "svd":
        context = edited(model, plan, config=EditConfig(method="svd"))
    else:
        context = edited(model, plan, factors, EditConfig(method="random", seed=seed), bases=bases)
    with context:
        yield model


def choose(points: list[dict], baseline: dict, budget: float) -> dict:
    """The rule on the tuning half: lowest memorized_tuning among points with clean_train >= baseline - budget
    (ties: higher clean_train). No point within budget: the same minimum over all points, ``rule_met`` False."""
    allowed = [p for p in points if p["clean_train"] >= baseline["clean_train"] - budget]
    best = min(allowed or points, key=lambda p: (p["memorized_tuning"], -p["clean_train"]))
    return {**best, "rule_met": bool(allowed)}


def tune(model, testbed, halves, factors, bases, rhos: list[float], energies: list[float], budget: float) -> dict:
    """K-FAC and SVD tuned alike: per-block sweep, best pair, ``choose``; reads training images only.

    Returns {"baseline", "kfac", "svd", "svd_matched", "per_block": {method: [...]}, "candidates": {method: count},
    "sweep": [...]} with training scores (both halves are scored, only the tuning half is compared)."""
    baseline = score_training(model, testbed, halves)
    blocks = list(range(model.config.num_hidden_layers))
    scored: dict[tuple, dict] = {}

    def score(method, which, value):
        key = (method, tuple(which), value)
        if key not in scored:
            with _edit(model, method, list(which), value, factors, bases):
                scored[key] = {"method": method, "blocks": list(which), VALUE_NAME[method]: value, **score_training(model, testbed, halves)}
        return scored[key]

    result = {"baseline": baseline, "per_block": {}, "candidates": {}}
    for method, grid in (("kfac", rhos), ("svd", energies)):
        per_block = [choose([score(method, [b], v) for v in grid], baseline, budget) for b in blocks]
        candidates = list(per_block)
        if len(blocks) > 1:
            ranked = sorted(blocks, key=lambda b: (per_block[b]["memorized_tuning"], -per_block[b]["clean_train"]))
            candidates += [score(method, sorted(ranked[:2]), v) for v in grid]
        result[method] = choose(candidates, baseline, budget)
        result["per_block"][method] = per_block
        result["candidates"][method] = len(blocks) * len(grid) + (len(grid) if len(blocks) > 1 else 0)
    kfac = result["kfac"]
    matched = [score("svd", kfac["blocks"], e) for e in energies]
    result["svd_matched"] = min(matched, key=lambda p: (abs(p["clean_train"] - kfac["clean_train"]), p["memorized_tuning"]))
    result["sweep"] = list(scored.values())
    return result


def _band_analysis(model, testbed, modules, bases, out: Path, positions: str) -> dict:
    """Figure 2 for the ViT: noisy-label (memorized) training images vs clean-label training images,
    and held-out images vs clean training images, at the factors' positions (CLS by default)."""
    images = testbed.train.images
    tokens = (model.config.image_size // model.config.patch_size) ** 2 + 1
    groups = {"clean": images[~testbed.noised], "memorized": images[testbed.noised], "validation": testbed.validation.images}
    sources = {name: (lambda pixels=pixels: image_batches(pixels, tokens, positions, 256)) for name, pixels in groups.items()}
    result = band_analysis(model, modules, bases, sources, "clean")
    extra = write_analysis(result, out / "analysis", ["memorized", "validation"])
    layers = {name: {kind: stats["ratio"]["memorized"] for kind, stats in entry["bases"].items()} for name, entry in result["modules"].items()}
    return {"summary": extra["summary"], "memorized_ratios": layers, "counted_positions": result["counted_positions"], "folder": "analysis"}


def _command(config: VisionDemoConfig) -> str:
    from ..provenance import command_line

    return config.command or command_line()


def run_vision_demo(config: VisionDemoConfig | None = None) -> dict:
    """The vision experiment for every seed; ``config.out`` is claimed before any work and written atomically at the end.

    One seed: report.md, results.json, plots and analysis/ in ``out``. Several: the same in
    ``out/seed-<k>/`` for each, plus a combined report.md and results.json in ``out``."""
    config = config or VisionDemoConfig()
    seeds = seed_list(config)
    grids(config)
    config = replace(config, command=_command(config))
    with atomic_dir(config.out, config.overwrite, kind="demo-vision") as tmp:
        if len(seeds) == 1:
            results = _run_one(replace(config, seed=seeds[0], seeds=""), tmp)
            total = sum(results["wall_seconds"].values())
        else:
            runs = {s: _run_one(replace(config, seed=s), tmp / f"seed-{s}") for s in seeds}
            results = write_combined_report(config, runs, tmp)
            total = sum(results["wall_seconds"].values())
    print(f"\nreport: {Path(config.out) / 'report.md'}   total {total:.1f} s")
    return results


def _run_one(config: VisionDemoConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    lap = Laps()
    testbed = load_vision(vision_config(config))
    model = testbed.model
    halves = split_noised(testbed.noised, config.seed)
    lap("vision testbed (train or load)")
    targets = _modules(model, None)
    images = testbed.train.images
    batches = [{"pixel_values": images[i : i + 256], "labels": testbed.noisy_labels[i : i + 256]} for i in range(0, len(images), 256)]
    objective = ImageClassificationObjective(model, config.positions)
    factors = collect_factors(model, batches, targets, CollectConfig(fisher=config.fisher, seed=config.seed, progress=False), objective)
    bases = decompose_factors(factors)
    lap("K-FAC factors (CLS) + eigendecomposition")
    rhos, energies = grids(config)
    tuned = tune(model, testbed, halves, factors, bases, rhos, energies, config.clean_budget)
    lap("tuning: K-FAC and SVD sweeps (tuning half + clean training images)")
    kfac = tuned["kfac"]
    with _edit(model, "random", kfac["blocks"], kfac["rho"], factors, bases, config.seed):
        random_point = {"method": "random", "blocks": kfac["blocks"], "rho": kfac["rho"], **score_training(model, testbed, halves)}
    baseline_correct = heldout_correct(model, testbed)

    def reported(point: dict | None) -> tuple[dict, torch.Tensor]:
        """``point`` with its held-out accuracy (evaluated under its edit; the baseline when None)."""
        if point is None:
            return {**tuned["baseline"], "heldout": float(baseline_correct.float().mean())}, baseline_correct
        method = point["method"]
        with _edit(model, method, point["blocks"], point[VALUE_NAME[method]], factors, bases, config.seed):
            correct = heldout_correct(model, testbed)
        return {**point, "heldout": float(correct.float().mean())}, correct

    methods, differences = {"baseline": reported(None)[0]}, {}
    for name, point in (("kfac", kfac), ("svd", tuned["svd"]), ("svd_matched", tuned["svd_matched"]), ("random", random_point)):
        methods[name], correct = reported(point)
        differences[name] = paired_bootstrap_difference(baseline_correct, correct, seed=config.seed)
    per_block = {m: [reported(p)[0] for p in points] for m, points in tuned["per_block"].items()}
    lap("held-out accuracy of the reported points, random control")
    analysis = _band_analysis(model, testbed, targets, bases, out, config.positions)
    lap("activation-ratio analysis (bands, K-FAC vs SVD)")
    counts = {**halves.counts(), "heldout": len(testbed.validation.labels)}
    results = {
        "config": {**asdict(config), "vision": testbed.info, "targets": targets, "rho_grid": rhos, "energy_grid": energies,
                   "train_subset": testbed.info["train_images"], "candidates": tuned["candidates"],
                   "selection_rule": f"lowest memorized % on the tuning half of the noised images (ties: higher clean-train) among "
                                     f"edits with clean-train accuracy >= baseline - {config.clean_budget}; the validation half "
                                     f"and the held-out images are never read by a choice"},
        "n": counts,
        "rule_met": {"kfac": kfac["rule_met"], "svd": tuned["svd"]["rule_met"]},
        "methods": methods,
        "heldout_difference": differences,
        "per_block": per_block,
        "sweep": tuned["sweep"] + [random_point],
        "analysis": analysis,
        "wall_seconds": lap.walls,
    }
    table = write_vision_report(results, out)
    lap("report")
    write_json(out / "results.json", results)
    print(table)
    return results
