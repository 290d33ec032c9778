"""``unmemorize compare`` (and ``unmemorize demo --baselines``): K-FAC against SVD truncation and
BalancedSubnet on the testbed, the paper's Table 1 with what it left out.

Per seed:

1. load (or train) the testbed, evaluate the baseline, collect K-FAC factors on the factor data
   (``--factor-data``, as the demo);
2. **sweep every method**, scoring each candidate with ``suite.quick`` only (the *tuning*
   memorized split and ``heldout_tuning.txt``):

   * K-FAC: layer sets x projection sets x ``--rhos`` (the demo's grid, ``edit/search.py``);
   * SVD truncation: the same layer and projection sets x ``--energies`` (a finer grid than K-FAC's rhos);
   * BSN (``baselines/bsn.py``): ``--bsn-projections`` (every MLP matrix; up and down only) x ``--bsn-ratios``
     (up to 0.3) x ``--bsn-alphas`` x ``--bsn-lrs`` x ``--bsn-epochs`` (up to 10), forget set = the tuning
     split (BSN's own forget set: it is trained on it; never the validation split or the quotes), retain
     set = the first ``--retain-tokens`` of the same factor data K-FAC sees;

3. **choose each method by the same rule** (``choices.choose_candidate``): among candidates whose
   sweep perplexity is <= (1 + ``--ppl-budget``) x baseline, the lowest tuning strict accuracy
   (ties: lower loose, then lower perplexity). "Matched perplexity" here means: the same
   perplexity budget for every method; each chosen point's perplexity is reported beside it.
   For the Pareto front every candidate is *also* scored on the validation split and the quotes
   (``reported``); the rule never reads those fields (tested by scrambling the files). The same rule
   also picks each method at every ``--matched-budgets`` (+2%, +10%, +25%): ``by_budget`` compares
   the methods at matched perplexity along the trade-off, on the sweep's scores;
4. for the baseline and each chosen method: the full suite (memorization, perplexity, tasks and
   retention with intervals), the stress test on validation items and quotes (``t = --stress-t``;
   the paper's t = 20 is for 64-token prefixes, the testbed's are 12 tokens), nDCG@10 against the
   baseline on the reported held-out text, sampled extraction (validation, quotes and both
   never-trained control sets), 4- and 8-bit weight quantization (optimum-quanto; Zhang et al., ICLR
   2025), a bf16 round trip, and relearning at each ``--relearn-lrs``: k AdamW steps on (a) clean text
   -- the factor data, which holds no memorized item -- (``--relearn-clean-steps``), (b) the tuning
   half of the memorized items and (c) the never-trained control sequences, the positive control
   (``--relearn-steps``, 1 to 1,000), each followed by recitation of the relearned items *and* of the
   validation half, the quotes and the controls; and each edit's size (relative Frobenius change and
   fraction of entries changed, per matrix).

``--seeds 0,1,2`` writes ``seed-<k>/results.json`` per seed and one ``report.md`` and
``results.json`` whose cells are the mean over seeds, the 95% t interval over seeds and each seed's
value, with paired t tests over seeds (``compare_report.py``), plus ``pareto.png``.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .._atomic import atomic_dir
from ..baselines import BSNConfig, balanced_subnet
from ..basis import decompose_factors
from ..curvature import CollectConfig, collect_from_files
from ..data import iter_windows, list_data_files
from ..edit import EditConfig, edited
from ..edit.plan import rho_list
from ..edit.search import candidate_plans
from ..errors import UnmemorizeError, check_seed
from ..jsonio import strict_loads
from ..evaluate.attacks import ExtractionConfig, RelearnConfig, bf16_attack, item_sequences, relearning_attack, sampled_extraction
from ..evaluate.quantization import quantization_attack
from ..evaluate.coherence import NDCGConfig, ndcg, top_k_ids
from ..evaluate.coherence import ndcg_windows as ndcg_windows_of
from ..evaluate.memorization import evaluate_memorization
from ..evaluate.stress import StressConfig, stress_test
from ..models import load_model
from ..targets import resolve_targets
from .._timing import Laps
from .choices import choose_candidate, parse_seeds
from .compare_report import candidate_setting
from .suite import TestbedSuite, _scores, add_retention
from .train import TrainConfig, load_or_train, quick_configs
from .world import FACTOR_DATA, WorldConfig

METHODS = ("kfac", "svd", "bsn")
RECITED = ("memorized_validation", "quotes", "control_sequences", "control_quotes")  # measured after every attack


@dataclass
class CompareConfig:
    """Settings of ``unmemorize compare`` (saved in results.json)."""

    out: str = field(default="runs/compare", metadata={"help": "Output folder for report.md, results.json and pareto.png."})
    quick: bool = field(default=False, metadata={"help": "Tiny world, model and grids (seconds): checks the pipeline, not the science."})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma list of testbed seeds; one testbed each (seed-<k>/)."})
    factor_data: Literal["mixture", "general"] = field(default="mixture", metadata={
        "help": "K-FAC factor data and BSN retain set: 'mixture' (training mixture without memorized items or evaluation rows) "
                "or 'general' (grammar text only)."})
    factor_tokens: int = field(default=100_000, metadata={"help": "Tokens for the K-FAC factors."})
    fisher: Literal["true", "empirical"] = field(default="true", metadata={"help": "Fisher type of the K-FAC factors."})
    rhos: str = field(default="0.8,0.9,0.95,0.98,0.99,0.995", metadata={"help": "K-FAC rho grid (the demo's)."})
    energies: str = field(default="0.3,0.5,0.6,0.7,0.8,0.85,0.9,0.93,0.95,0.97,0.98,0.99,0.995", metadata={
        "help": "SVD energy grid: finer than --rhos (SVD gets at least K-FAC's candidate budget; a coarse grid left SVD's "
                "best point within the budget a near-null edit at one seed of world v5)."})
    bsn_ratios: str = field(default="0.03,0.1,0.3", metadata={"help": "BSN: fractions of each masked matrix removed (the "
                                                                     "authors sweep up to 0.5; 0.3 reaches the perplexity budget here)."})
    bsn_alphas: str = field(default="0.7", metadata={"help": "BSN: retain-loss weights (0.7: the paper's best run and the K-FAC paper's "
                                                            "BSN setting; world v5's sweep of 0.5, 0.7, 0.9 chose 0.7 or 0.9)."})
    bsn_epochs: str = field(default="3,10", metadata={"help": "BSN: epochs. One run of the largest count serves every count: the "
                                                             "masks after epoch e are those of an e-epoch run (bsn.balanced_subnet on_epoch)."})
    bsn_lrs: str = field(default="0.1,1", metadata={"help": "BSN: SGD learning rates of the scores (the authors' 0.1; at 0.1 the "
                                                             "testbed's masks barely move in 60 steps, benchmarks/probes/bsn_lr_probe.py)."})
    bsn_projections: str = field(default="gate,up,down;up,down", metadata={
        "help": "BSN: the matrices masked, variants separated by ';' (gate,up,down: the authors' every MLP matrix; up,down: the "
                "K-FAC paper's OLMo-2 variant)."})
    retain_tokens: int = field(default=100_000, metadata={"help": "BSN retain set: tokens of the factor data (as many as K-FAC's factors)."})
    ppl_budget: float = field(default=0.10, metadata={"help": "Largest relative perplexity increase a chosen candidate may have "
                                                                 "(the budget whose choices get the full evaluation and every attack)."})
    matched_budgets: str = field(default="0.02,0.1,0.25", metadata={
        "help": "Budgets at which every method is also chosen by the same rule from its sweep, compared on the validation items "
                "and quotes its sweep scored (matched perplexity at several points of the trade-off)."})
    stress_t: int = field(default=4, metadata={"help": "Stress-test depth t (paper: 20 for 64-token prefixes; 4 ~ 20 x 12/64 here)."})
    relearn_steps: str = field(default="1,10,100,1000", metadata={
        "help": "Relearning on memorized items (the tuning half; and the never-trained control sequences, the positive control): "
                "AdamW step counts k after which recitation is measured (one run, measured at each k)."})
    relearn_clean_steps: str = field(default="10,50,200", metadata={
        "help": "Relearning on clean text (the factor data: 128-token windows, the costliest): its step counts."})
    relearn_lrs: str = field(default="1e-4,1e-3", metadata={"help": "Relearning: learning rates (one run each; the testbed trained at 2e-3)."})
    relearn_batch_size: int = field(default=8, metadata={"help": "Relearning: sequences per step."})
    samples: int = field(default=20, metadata={"help": "Sampled extraction: samples per item (temperature 1, top-k 40)."})
    reuse: str = field(default="", metadata={"help": "Comma list of earlier compare output folders: a seed whose seed-<k>/results.json "
                                                     "is there, made with the same settings, is read instead of run again."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder (only one an earlier run wrote)."})

    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds, 0)

    def grids(self) -> dict:
        def floats(text: str, option: str, low: float, high: float) -> list[float]:
            try:
                values = [float(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise UnmemorizeError(f"{option} must be a comma list of numbers, got {text!r}") from None
            if not values or not all(low < v <= high for v in values):
                raise UnmemorizeError(f"{option} values must be in ({low:g}, {high:g}], got {text!r}")
            return values

        def ints(text: str, option: str, low: int) -> list[int]:
            try:
                values = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise UnmemorizeError(f"{option} must be a comma list of integers, got {text!r}") from None
            if not values or min(values) < low:
                raise UnmemorizeError(f"{option} values must be integers >= {low}, got {text!r}")
            return values

        return {"rhos": list(rho_list(self.rhos, "--rhos")), "energies": floats(self.energies, "--energies", 0, 1),
                "bsn_ratios": floats(self.bsn_ratios, "--bsn-ratios", 0, 1), "bsn_alphas": floats(self.bsn_alphas, "--bsn-alphas", -1e-12, 1),
                "bsn_epochs": ints(self.bsn_epochs, "--bsn-epochs", 1),
                "bsn_lrs": floats(self.bsn_lrs, "--bsn-lrs", 0, 1e6), "bsn_projections": self.projection_variants(),
                "relearn_steps": ints(self.relearn_steps, "--relearn-steps", 0),
                "relearn_clean_steps": ints(self.relearn_clean_steps, "--relearn-clean-steps", 0),
                "relearn_lrs": floats(self.relearn_lrs, "--relearn-lrs", 0, 1),
                "matched_budgets": floats(self.matched_budgets, "--matched-budgets", 0, 100)}

    def projection_variants(self) -> list[str]:
        from ..targets import parse_projections

        variants = [part.strip() for part in self.bsn_projections.split(";") if part.strip()]
        if not variants:
            raise UnmemorizeError(f"--bsn-projections must name at least one set of projections, got {self.bsn_projections!r}")
        for variant in variants:
            parse_projections(variant)
        return variants

    def validate(self) -> None:
        for seed in self.seed_list():
            check_seed(seed, "--seeds")
        grids = self.grids()
        if len(grids["energies"]) < len(grids["rhos"]):
            raise UnmemorizeError(f"--energies must list at least as many values as --rhos (SVD gets at least K-FAC's candidate "
                                  f"budget): {len(grids['energies'])} vs {len(grids['rhos'])}")
        if self.factor_data not in FACTOR_DATA:
            raise UnmemorizeError(f"--factor-data must be one of {', '.join(FACTOR_DATA)}, got {self.factor_data!r}")
        for option, value in (("--factor-tokens", self.factor_tokens), ("--retain-tokens", self.retain_tokens),
                              ("--relearn-batch-size", self.relearn_batch_size), ("--samples", self.samples)):
            if value < 1:
                raise UnmemorizeError(f"{option} must be positive, got {value}")
        if not self.ppl_budget > 0:
            raise UnmemorizeError(f"--ppl-budget must be > 0 (a relative increase, e.g. 0.10), got {self.ppl_budget}")
        StressConfig(t=self.stress_t).validate()


QUICK_GRIDS = dict(rhos="0.9,0.99", energies="0.9,0.99", bsn_ratios="0.01,0.05", bsn_alphas="0.5", bsn_epochs="1,2", bsn_lrs="1",
                   factor_tokens=5_000, retain_tokens=5_000, relearn_steps="2,5",
                   relearn_clean_steps="2", relearn_lrs="1e-3", samples=4)


# ---------------------------------------------------------------------------------------------- sweep
def reported_scores(suite: TestbedSuite, model) -> dict:
    """Validation and quotes recitation of a candidate: for the Pareto plot only, never for a choice."""
    return {name: _scores(evaluate_memorization(model, suite.sets[name], suite.pad_id, suite.batch_size))
            for name in ("memorized_validation", "quotes")}


def _candidate(method: str, setting: dict, score: dict, reported: dict, seconds: float) -> dict:
    return {"method": method, **setting, **score, "reported": reported, "seconds": round(seconds, 2)}


def sweep_kfac(model, suite, factors, bases, rhos, layer_sets: dict[str, list[int]] | None = None) -> list[dict]:
    """Every K-FAC candidate plan (``candidate_plans``: layer sets x projection sets x rho) scored by ``suite.quick``."""
    candidates = []
    for layers, projections, rho, plan in candidate_plans(model, factors, rhos, layer_sets):
        start = time.perf_counter()
        with edited(model, plan, factors, bases=bases):
            score, reported = suite.quick(model), reported_scores(suite, model)
        candidates.append(_candidate("kfac", {"layers": layers, "projections": projections, "rho": rho, "plan": plan}, score, reported,
                                     time.perf_counter() - start))
    return candidates


def sweep_svd(model, suite, factors, energies) -> list[dict]:
    """SVD truncation on the same layer x projection sets as K-FAC, one energy grid per set."""
    candidates = []
    for layers, projections, _, plan in candidate_plans(model, factors, energies[:1]):
        for energy in energies:
            start = time.perf_counter()
            svd_plan = {name: energy for name in plan}
            with edited(model, svd_plan, config=EditConfig(method="svd")):
                score, reported = suite.quick(model), reported_scores(suite, model)
            candidates.append(_candidate("svd", {"layers": layers, "projections": projections, "energy": energy, "plan": svd_plan},
                                         score, reported, time.perf_counter() - start))
    return candidates


def apply_masks(model, masks: dict[str, torch.Tensor]):
    """A copy of ``model`` with each mask's entries zeroed."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight[mask] = 0
    return masked


def sweep_bsn(model, suite, forget, retain, grids: dict, seed: int, pad_id: int) -> tuple[list[dict], dict]:
    """Every BSN setting, trained on a copy: per (projections, ratio, alpha, lr) one run of the largest epoch count,
    whose masks after each listed epoch count are candidates of their own; returns the candidates and each one's
    removal masks."""
    candidates, masks = [], {}
    for variant, ratio, alpha, lr in itertools.product(grids["bsn_projections"], grids["bsn_ratios"], grids["bsn_alphas"],
                                                       grids["bsn_lrs"]):
        names = resolve_targets(model, projections=variant)
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        wanted = set(grids["bsn_epochs"])

        def keep(epoch: int, removed: dict[str, torch.Tensor]) -> None:
            if epoch in wanted:
                snapshots[epoch] = removed

        config = BSNConfig(ratio=ratio, alpha=alpha, epochs=max(wanted), lr=lr, seed=seed, progress=False)
        _, record = balanced_subnet(copy.deepcopy(model), forget, retain, config, targets=names, pad_id=pad_id, on_epoch=keep)
        per_epoch = record.steps // config.epochs
        for epochs in sorted(wanted):
            begin = time.perf_counter()
            masked = apply_masks(model, snapshots[epochs])
            score, reported = suite.quick(masked), reported_scores(suite, masked)
            key = f"{variant.replace(',', '+')} ratio={ratio:g} alpha={alpha:g} epochs={epochs} lr={lr:g}"
            masks[key] = snapshots[epochs]
            last = record.history[epochs * per_epoch - 1]
            candidates.append(_candidate("bsn", {"projections": variant.replace(",", "+"), "ratio": ratio, "alpha": alpha,
                                                 "epochs": epochs, "lr": lr, "key": key, "steps": epochs * per_epoch,
                                                 "train_seconds": round(record.wall_seconds * epochs / config.epochs, 2),
                                                 "final_forget_ce": last.get("forget_ce"), "final_retain_ce": last.get("retain_ce")},
                                         score, reported, time.perf_counter() - begin))
            del masked
    return candidates, masks


def sweep_all(model, suite, factors, bases, forget, retain, grids: dict, seed: int, lap=lambda name: None):
    """Every candidate of every method, scored by ``suite.quick`` (and ``reported_scores`` for the plot)."""
    candidates = {"kfac": sweep_kfac(model, suite, factors, bases, grids["rhos"])}
    lap("kfac: sweep")
    candidates["svd"] = sweep_svd(model, suite, factors, grids["energies"])
    lap("svd: sweep")
    candidates["bsn"], bsn_masks = sweep_bsn(model, suite, forget, retain, grids, seed, suite.pad_id)
    lap("bsn: sweep (training every setting)")
    return candidates, bsn_masks


def choose_all(candidates: dict, baseline_sweep_perplexity: float, budget: float) -> tuple[dict, dict]:
    """Each method's candidate by the one rule (``choices.choose_candidate``): it reads only
    ``memorized_tuning`` and ``perplexity``, never ``reported``."""
    chosen, rule_met = {}, {}
    for method in METHODS:
        chosen[method], rule_met[method] = choose_candidate(candidates[method], baseline_sweep_perplexity, budget)
    return chosen, rule_met


# ---------------------------------------------------------------------------------------------- checks
@dataclass
class Checks:
    """What every chosen method is put through (besides the suite)."""

    stress: StressConfig
    ndcg: NDCGConfig
    extraction: ExtractionConfig
    relearn: list[RelearnConfig]        # on memorized items: the tuning half, and the never-trained controls (positive control)
    relearn_clean: list[RelearnConfig]  # on clean text
    reference_top_k: torch.Tensor
    ndcg_windows: list[list[int]]
    clean_sequences: list[list[int]]
    tuning_sequences: list[list[int]]
    control_sequences: list[list[int]]


RELEARN_MEASURED = ("memorized_tuning",) + RECITED  # after relearning: the relearned items too, not only the held-out ones


def run_checks(model, suite: TestbedSuite, checks: Checks) -> dict:
    """Stress test, nDCG@10, sampled extraction, 4- and 8-bit quantization, the bf16 round trip and relearning, each
    re-measuring recitation. Relearning runs on three sources -- clean text, the tuning half of the memorized items
    (then the relearned items themselves are measured as well as the held-out ones) and the never-trained control
    sequences (the positive control: how fast the model learns new random sequences) -- at every learning rate."""
    sets = {name: suite.sets[name] for name in RECITED}
    measured = {name: suite.sets[name] for name in RELEARN_MEASURED}
    result = {
        "stress": {name: stress_test(model, suite.sets[name], suite.pad_id, checks.stress).to_dict(per_item=False)
                   for name in ("memorized_validation", "quotes")},
        "ndcg": ndcg(model, checks.reference_top_k, checks.ndcg_windows, checks.ndcg).to_dict(),
        "sample": {name: {k: v for k, v in sampled_extraction(model, items, checks.extraction).items() if k != "per_item"}
                   for name, items in sets.items()},
        "quantization": quantization_attack(model, measured, suite.pad_id),
        "bf16": bf16_attack(model, sets, suite.pad_id),
        "relearn": {},
    }
    for config in checks.relearn_clean:
        result["relearn"][f"clean@lr={config.learning_rate:g}"] = relearning_attack(model, checks.clean_sequences, measured,
                                                                                    suite.pad_id, config)
    for config in checks.relearn:
        for source, sequences in (("tuning_items", checks.tuning_sequences), ("control_items", checks.control_sequences)):
            result["relearn"][f"{source}@lr={config.learning_rate:g}"] = relearning_attack(model, sequences, measured, suite.pad_id,
                                                                                           config)
    return result


def edit_size(reference: dict[str, torch.Tensor], model, names: list[str]) -> dict:
    """How much an edit changed each target matrix: relative Frobenius change ||W' - W||_F / ||W||_F and the
    fraction of entries changed, per matrix, with their mean, min and max over the matrices."""
    modules = dict(model.named_modules())
    per_matrix = {}
    for name in names:
        before, after = reference[name].double(), modules[name].weight.detach().double()
        per_matrix[name] = {"relative_frobenius": float((after - before).norm() / before.norm()),
                            "entries_changed": float((after != before).double().mean())}
    values = {k: [m[k] for m in per_matrix.values()] for k in ("relative_frobenius", "entries_changed")}
    return {"per_matrix": per_matrix, **{f"{k}_{stat}": fn(v) for k, v in values.items()
                                          for stat, fn in (("mean", lambda x: sum(x) / len(x)), ("min", min), ("max", max))}}


def choose_at_budgets(candidates: dict, baseline_sweep_perplexity: float, budgets: list[float]) -> dict:
    """Each method chosen by the same rule at every budget, with the validation and quotes strict accuracy its
    sweep measured (``reported``: never read by the rule) and its sweep perplexity ratio."""
    by_budget = {}
    for budget in budgets:
        row = {}
        for method in METHODS:
            pick, met = choose_candidate(candidates[method], baseline_sweep_perplexity, budget)
            row[method] = {"setting": candidate_setting(pick), "rule_met": met,
                           "perplexity_ratio": pick["perplexity"] / baseline_sweep_perplexity,
                           "memorized_tuning": pick["memorized_tuning"]["strict"],
                           **{name: pick["reported"][name]["strict"] for name in ("memorized_validation", "quotes")},
                           "n": {name: pick["reported"][name]["n"] for name in ("memorized_validation", "quotes")}}
        by_budget[f"{budget:g}"] = row
    return by_budget


# ---------------------------------------------------------------------------------------------- one seed
def compare_seed(config: CompareConfig, seed: int) -> dict:
    grids = config.grids()
    lap = Laps()
    walls = lap.walls

    world_config, train_config = quick_configs(seed) if config.quick else (WorldConfig(seed=seed), TrainConfig(seed=seed))
    folder = load_or_train(world_config, train_config)
    model, tokenizer = load_model(str(folder / "model"))
    torch.manual_seed(seed)
    suite = TestbedSuite.for_demo(folder, tokenizer, config.quick)
    baseline = suite.baseline(model)
    lap("testbed + baseline evaluation")
    factor_file = folder / "data" / f"factors_{config.factor_data}.txt"
    factors = collect_from_files(model, tokenizer, str(factor_file), resolve_targets(model),
                                 CollectConfig(fisher=config.fisher, seq_len=128, max_tokens=config.factor_tokens, batch_size=16, progress=False))
    bases = decompose_factors(factors)
    lap("kfac: factors + eigendecomposition")
    forget = item_sequences(suite.sets["memorized_tuning"])
    retain = list(iter_windows(list_data_files(factor_file), tokenizer, train_config.seq_len, config.retain_tokens))
    candidates, bsn_masks = sweep_all(model, suite, factors, bases, forget, retain, grids, seed, lap)
    chosen, rule_met = choose_all(candidates, baseline["sweep_perplexity"], config.ppl_budget)

    ndcg_config = NDCGConfig(seq_len=train_config.seq_len, max_tokens=2_000 if config.quick else 40_000, batch_size=16)
    ndcg_windows = ndcg_windows_of(folder / "data" / "heldout.txt", tokenizer, ndcg_config.seq_len, ndcg_config.max_tokens)
    relearn = [RelearnConfig(steps=tuple(grids["relearn_steps"]), learning_rate=lr, batch_size=config.relearn_batch_size, seed=seed)
               for lr in grids["relearn_lrs"]]
    checks = Checks(stress=StressConfig(t=config.stress_t), ndcg=ndcg_config, extraction=ExtractionConfig(samples=config.samples, seed=seed),
                    relearn=relearn, relearn_clean=[RelearnConfig(steps=tuple(grids["relearn_clean_steps"]), learning_rate=r.learning_rate,
                                                                  batch_size=r.batch_size, seed=seed) for r in relearn],
                    reference_top_k=top_k_ids(model, ndcg_windows, ndcg_config.k, ndcg_config.batch_size), ndcg_windows=ndcg_windows,
                    clean_sequences=retain, tuning_sequences=forget, control_sequences=item_sequences(suite.sets["control_sequences"]))
    methods = {"baseline": {**baseline, "checks": run_checks(model, suite, checks)}}
    lap("baseline checks")
    targets = resolve_targets(model)
    modules = dict(model.named_modules())
    reference = {name: modules[name].weight.detach().clone() for name in targets}
    edit_start = time.perf_counter()
    with edited(model, chosen["kfac"]["plan"], factors, bases=bases):
        kfac_edit_seconds = round(time.perf_counter() - edit_start, 2)
        methods["kfac"] = {**suite.evaluate(model), "checks": run_checks(model, suite, checks), "edit_size": edit_size(reference, model, targets)}
    with edited(model, chosen["svd"]["plan"], config=EditConfig(method="svd")):
        methods["svd"] = {**suite.evaluate(model), "checks": run_checks(model, suite, checks), "edit_size": edit_size(reference, model, targets)}
    masked = apply_masks(model, bsn_masks[chosen["bsn"]["key"]])
    methods["bsn"] = {**suite.evaluate(masked), "checks": run_checks(masked, suite, checks), "edit_size": edit_size(reference, masked, targets)}
    del masked
    lap("chosen methods: evaluation + stress, nDCG, attacks")
    for method in METHODS:
        methods[method]["setting"] = candidate_setting(chosen[method])
        methods[method]["rule_met"] = rule_met[method]
        add_retention(methods[method], baseline)
    bsn_train = sum(c["train_seconds"] for c in candidates["bsn"])
    timing = {"kfac_pipeline_seconds": round(walls["kfac: factors + eigendecomposition"] + walls["kfac: sweep"], 2),
              "kfac_factors_seconds": walls["kfac: factors + eigendecomposition"],
              "kfac_chosen_edit_seconds": kfac_edit_seconds,  # applying the chosen plan given the eigenbases, no scoring
              "bsn_sweep_seconds": walls["bsn: sweep (training every setting)"], "bsn_training_seconds_all_settings": round(bsn_train, 2),
              "bsn_chosen_training_seconds": chosen["bsn"]["train_seconds"], "bsn_settings": len(candidates["bsn"])}
    info = __import__("json").loads((folder / "testbed.json").read_text())
    results = {
        "config": {**asdict(config), "seed": seed, "grids": grids, "testbed_key": info["key"], "testbed": str(folder),
                   "factor_tokens_collected": factors.metadata["tokens"], "retain_sequences": len(retain), "forget_sequences": len(forget),
                   "selection_rule": f"min tuning strict (then loose, then ppl) with sweep perplexity <= {1 + config.ppl_budget:g} x baseline"},
        "baseline_sweep_perplexity": baseline["sweep_perplexity"],
        "rule_met": rule_met,
        "by_budget": choose_at_budgets(candidates, baseline["sweep_perplexity"], grids["matched_budgets"]),
        "chosen": {m: {k: v for k, v in chosen[m].items() if k != "plan"} for m in METHODS},
        "methods": methods,
        "candidates": {m: [{k: v for k, v in c.items() if k != "plan"} for c in candidates[m]] for m in METHODS},
        "timing": timing,
        "wall_seconds": walls,
    }
    return results


def run_comparison(config: CompareConfig | None = None) -> dict:
    """Every seed, then one report; ``config.out`` is claimed first and written atomically at the end."""
    config = config or CompareConfig()
    config.validate()
    start = time.perf_counter()
    with atomic_dir(config.out, config.overwrite, kind="compare") as tmp:
        summary = compare_into(config, tmp)
    print(f"\nreport: {Path(config.out) / 'report.md'}   total {time.perf_counter() - start:.1f} s")
    return summary


SETTINGS_IGNORED_ON_REUSE = ("out", "seeds", "reuse", "overwrite")


def reusable(config: CompareConfig, seed: int) -> Path | None:
    """The first ``--reuse`` folder's seed-<seed>/results.json whose settings equal ``config``'s, else None."""
    wanted = {k: v for k, v in asdict(config).items() if k not in SETTINGS_IGNORED_ON_REUSE}
    for folder in filter(None, (part.strip() for part in config.reuse.split(","))):
        path = Path(folder) / f"seed-{seed}" / "results.json"
        if path.is_file():
            saved = read_reusable(path)["config"]
            defaults = asdict(CompareConfig())  # a setting added after that run takes its default
            compared = dict(wanted)
            if "factor_tokens_collected" not in saved:  # runs before it was recorded apart stored the collected count here
                compared.pop("factor_tokens")
            if {k: saved.get(k, defaults[k]) for k in compared} == compared:
                return path
    return None


def read_reusable(path: Path) -> dict:
    """A seed's results.json from an earlier run, checked to be one (its config and methods are objects, the
    baseline's counts present), or an error naming the file."""
    def refuse(why: str):
        raise UnmemorizeError(f"--reuse: {path} is not the results.json of a seed of unmemorize compare ({why}); rerun that "
                              "seed without --reuse")

    try:
        record = strict_loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        refuse(f"not strict JSON: {exc}")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or not isinstance(record.get("methods"), dict):
        refuse("it needs 'config' and 'methods' objects")
    baseline = record["methods"].get("baseline")
    if not all(isinstance(m, dict) for m in record["methods"].values()) or not isinstance(baseline, dict) or not all(
            isinstance(baseline.get(k), dict) and "n" in baseline[k] for k in ("memorized_validation", "quotes", "memorized_tuning")):
        refuse("its methods lack the baseline's measured sets")
    return record


def compare_into(config: CompareConfig, folder: Path) -> dict:
    """Run every seed of ``config`` and write seed-<k>/results.json, report.md, results.json and
    pareto.png into ``folder`` (an already claimed temporary folder; ``demo --baselines`` uses it)."""
    from ..jsonio import write_json
    from ..provenance import provenance
    from .compare_report import write_compare_report

    config.validate()
    for folder_ in filter(None, (part.strip() for part in config.reuse.split(","))):
        if not Path(folder_).is_dir():
            raise UnmemorizeError(f"--reuse {folder_!r} is not a folder")
    if config.quick:
        defaults = CompareConfig()
        for name, value in QUICK_GRIDS.items():  # the quick grids replace only settings left at their defaults
            if getattr(config, name) == getattr(defaults, name):
                setattr(config, name, value)
    folder.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    earlier = {seed: reusable(config, seed) for seed in config.seed_list()}  # every reused file read and checked first
    for seed in config.seed_list():
        print(f"compare: seed {seed}" + (f" (reused from {earlier[seed]})" if earlier[seed] else ""), flush=True)
        per_seed[seed] = read_reusable(earlier[seed]) if earlier[seed] else {**compare_seed(config, seed), "provenance": provenance()}
        (folder / f"seed-{seed}").mkdir(exist_ok=True)
        write_json(folder / f"seed-{seed}" / "results.json", per_seed[seed])
    reused = [str(path) for path in earlier.values() if path]
    try:
        return write_compare_report(per_seed, folder, config)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        if not reused:
            raise
        raise UnmemorizeError(f"--reuse: {', '.join(reused)} do not hold what this unmemorize's report reads ({type(exc).__name__}: "
                              f"{exc}); rerun those seeds without --reuse") from None
