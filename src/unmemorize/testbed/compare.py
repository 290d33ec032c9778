"""``unmemorize compare`` (and ``unmemorize demo --baselines``): K-FAC against SVD truncation and
BalancedSubnet on the testbed, the paper's Table 1 with what it left out.

Per seed:

1. load (or train) the testbed, evaluate the baseline, collect K-FAC factors on the factor data
   (``--factor-data``, as the demo);
2. **sweep every method**, scoring each candidate with ``suite.quick`` only (the *tuning*
   memorized split and ``heldout_tuning.txt``):

   * K-FAC: layer sets x projection sets x ``--rhos`` (the demo's grid, ``edit/search.py``);
   * SVD truncation: the same layer and projection sets x ``--energies`` (a grid of the same size);
   * BSN (``baselines/bsn.py``): ``--bsn-ratios`` x ``--bsn-alphas`` x ``--bsn-epochs`` x ``--bsn-lrs`` on every
     MLP matrix, forget set = the tuning split (never the validation split or the quotes),
     retain set = the first ``--retain-tokens`` of the same factor data K-FAC sees;

3. **choose each method by the same rule** (``choices.choose_candidate``): among candidates whose
   sweep perplexity is <= (1 + ``--ppl-budget``) x baseline, the lowest tuning strict accuracy
   (ties: lower loose, then lower perplexity). "Matched perplexity" here means: the same
   perplexity budget for every method; each chosen point's perplexity is reported beside it.
   For the Pareto plot every candidate is *also* scored on the validation split and the quotes
   (``reported``); the rule never reads those fields (tested by scrambling the files);
4. for the baseline and each chosen method: the full suite (memorization, perplexity, tasks and
   retention with intervals), the stress test on validation items and quotes (``t = --stress-t``;
   the paper's t = 20 is for 64-token prefixes, the testbed's are 12 tokens), nDCG@10 against the
   baseline on the reported held-out text, sampled extraction (validation, quotes and both
   never-trained control sets), a bf16 round trip, and relearning: k AdamW steps (``--relearn-steps``)
   at each ``--relearn-lrs`` on (a) clean text -- the factor data, which holds no memorized item --
   and (b) the tuning half of the memorized items, then recitation of the validation half, the
   quotes and the controls.

``--seeds 0,1,2`` writes ``seed-<k>/results.json`` per seed and one ``report.md`` and
``results.json`` with mean +- std per cell and pooled 95% Wilson intervals
(``compare_report.py``), plus ``pareto.png``.
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
from ..evaluate.coherence import NDCGConfig, ndcg, top_k_ids
from ..evaluate.coherence import ndcg_windows as ndcg_windows_of
from ..evaluate.memorization import evaluate_memorization
from ..evaluate.stress import StressConfig, stress_test
from ..models import load_model
from ..targets import resolve_targets
from .._timing import Laps
from .choices import choose_candidate, parse_seeds
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
    energies: str = field(default="0.5,0.7,0.8,0.9,0.95,0.99", metadata={"help": "SVD energy grid (as many values as --rhos)."})
    bsn_ratios: str = field(default="0.01,0.03", metadata={"help": "BSN: fractions of each MLP matrix removed."})
    bsn_alphas: str = field(default="0.5,0.7,0.9", metadata={"help": "BSN: retain-loss weights (the paper's sweep)."})
    bsn_epochs: str = field(default="1,3", metadata={"help": "BSN: epochs."})
    bsn_lrs: str = field(default="0.1,1", metadata={"help": "BSN: SGD learning rates of the scores (the authors' 0.1; at 0.1 the "
                                                             "testbed's masks barely move in 60 steps, benchmarks/probes/bsn_lr_probe.py)."})
    retain_tokens: int = field(default=100_000, metadata={"help": "BSN retain set: tokens of the factor data (as many as K-FAC's factors)."})
    ppl_budget: float = field(default=0.10, metadata={"help": "Largest relative perplexity increase a chosen candidate may have."})
    stress_t: int = field(default=4, metadata={"help": "Stress-test depth t (paper: 20 for 64-token prefixes; 4 ~ 20 x 12/64 here)."})
    relearn_steps: str = field(default="10,50,200", metadata={"help": "Relearning: AdamW step counts k after which recitation is measured."})
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
                "bsn_lrs": floats(self.bsn_lrs, "--bsn-lrs", 0, 1e6), "relearn_steps": ints(self.relearn_steps, "--relearn-steps", 0),
                "relearn_lrs": floats(self.relearn_lrs, "--relearn-lrs", 0, 1)}

    def validate(self) -> None:
        for seed in self.seed_list():
            check_seed(seed, "--seeds")
        grids = self.grids()
        if len(grids["energies"]) != len(grids["rhos"]):
            raise UnmemorizeError(f"--energies must list as many values as --rhos (SVD gets the same candidate budget as K-FAC): "
                                  f"{len(grids['energies'])} vs {len(grids['rhos'])}")
        if self.factor_data not in FACTOR_DATA:
            raise UnmemorizeError(f"--factor-data must be one of {', '.join(FACTOR_DATA)}, got {self.factor_data!r}")
        for option, value in (("--factor-tokens", self.factor_tokens), ("--retain-tokens", self.retain_tokens),
                              ("--relearn-batch-size", self.relearn_batch_size), ("--samples", self.samples)):
            if value < 1:
                raise UnmemorizeError(f"{option} must be positive, got {value}")
        if not self.ppl_budget > 0:
            raise UnmemorizeError(f"--ppl-budget must be > 0 (a relative increase, e.g. 0.10), got {self.ppl_budget}")
        StressConfig(t=self.stress_t).validate()


QUICK_GRIDS = dict(rhos="0.9,0.99", energies="0.9,0.99", bsn_ratios="0.01,0.05", bsn_alphas="0.5", bsn_epochs="1", bsn_lrs="1",
                   factor_tokens=5_000, retain_tokens=5_000, relearn_steps="2,5", relearn_lrs="1e-3", samples=4)


# ---------------------------------------------------------------------------------------------- sweep
def reported_scores(suite: TestbedSuite, model) -> dict:
    """Validation and quotes recitation of a candidate: for the Pareto plot only, never for a choice."""
    return {name: _scores(evaluate_memorization(model, suite.sets[name], suite.pad_id, suite.batch_size))
            for name in ("memorized_validation", "quotes")}


def _candidate(method: str, setting: dict, score: dict, reported: dict, seconds: float) -> dict:
    return {"method": method, **setting, **score, "reported": reported, "seconds": round(seconds, 2)}


def sweep_kfac(model, suite, factors, bases, rhos) -> list[dict]:
    candidates = []
    for layers, projections, rho, plan in candidate_plans(model, factors, rhos):
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


def removal_masks(model, names: list[str]) -> dict[str, torch.Tensor]:
    """Per module, the entries BSN zeroed (zero now, nonzero in ``model``'s original is implied by the caller)."""
    modules = dict(model.named_modules())
    return {name: (modules[name].weight.detach() == 0).clone() for name in names}


def apply_masks(model, masks: dict[str, torch.Tensor]):
    """A copy of ``model`` with each mask's entries zeroed."""
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight[mask] = 0
    return masked


def sweep_bsn(model, suite, forget, retain, grids: dict, seed: int, pad_id: int) -> tuple[list[dict], dict]:
    """Every BSN setting trained on a copy; returns the candidates and each one's removal masks."""
    names = resolve_targets(model)
    candidates, masks = [], {}
    for ratio, alpha, epochs, lr in itertools.product(grids["bsn_ratios"], grids["bsn_alphas"], grids["bsn_epochs"], grids["bsn_lrs"]):
        start = time.perf_counter()
        config = BSNConfig(ratio=ratio, alpha=alpha, epochs=epochs, lr=lr, seed=seed, progress=False)
        masked, record = balanced_subnet(copy.deepcopy(model), forget, retain, config, targets=names, pad_id=pad_id)
        score, reported = suite.quick(masked), reported_scores(suite, masked)
        key = f"ratio={ratio:g} alpha={alpha:g} epochs={epochs} lr={lr:g}"
        masks[key] = removal_masks(masked, names)
        last = record.history[-1] if record.history else {}
        candidates.append(_candidate("bsn", {"ratio": ratio, "alpha": alpha, "epochs": epochs, "lr": lr, "key": key, "steps": record.steps,
                                             "train_seconds": round(record.wall_seconds, 2),
                                             "final_forget_ce": last.get("forget_ce"), "final_retain_ce": last.get("retain_ce")},
                                     score, reported, time.perf_counter() - start))
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
    relearn: list[RelearnConfig]
    reference_top_k: torch.Tensor
    ndcg_windows: list[list[int]]
    clean_sequences: list[list[int]]
    tuning_sequences: list[list[int]]


def run_checks(model, suite: TestbedSuite, checks: Checks) -> dict:
    sets = {name: suite.sets[name] for name in RECITED}
    result = {
        "stress": {name: stress_test(model, suite.sets[name], suite.pad_id, checks.stress).to_dict(per_item=False)
                   for name in ("memorized_validation", "quotes")},
        "ndcg": ndcg(model, checks.reference_top_k, checks.ndcg_windows, checks.ndcg).to_dict(),
        "sample": {name: {k: v for k, v in sampled_extraction(model, items, checks.extraction).items() if k != "per_item"}
                   for name, items in sets.items()},
        "bf16": bf16_attack(model, sets, suite.pad_id),
        "relearn": {},
    }
    for config in checks.relearn:
        for source, sequences in (("clean", checks.clean_sequences), ("tuning_items", checks.tuning_sequences)):
            result["relearn"][f"{source}@lr={config.learning_rate:g}"] = relearning_attack(model, sequences, sets, suite.pad_id, config)
    return result


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
    checks = Checks(stress=StressConfig(t=config.stress_t), ndcg=ndcg_config, extraction=ExtractionConfig(samples=config.samples, seed=seed),
                    relearn=[RelearnConfig(steps=tuple(grids["relearn_steps"]), learning_rate=lr, batch_size=config.relearn_batch_size,
                                           seed=seed) for lr in grids["relearn_lrs"]],
                    reference_top_k=top_k_ids(model, ndcg_windows, ndcg_config.k, ndcg_config.batch_size), ndcg_windows=ndcg_windows,
                    clean_sequences=retain, tuning_sequences=forget)
    methods = {"baseline": {**baseline, "checks": run_checks(model, suite, checks)}}
    lap("baseline checks")
    edit_start = time.perf_counter()
    with edited(model, chosen["kfac"]["plan"], factors, bases=bases):
        kfac_edit_seconds = round(time.perf_counter() - edit_start, 2)
        methods["kfac"] = {**suite.evaluate(model), "checks": run_checks(model, suite, checks)}
    with edited(model, chosen["svd"]["plan"], config=EditConfig(method="svd")):
        methods["svd"] = {**suite.evaluate(model), "checks": run_checks(model, suite, checks)}
    masked = apply_masks(model, bsn_masks[chosen["bsn"]["key"]])
    methods["bsn"] = {**suite.evaluate(masked), "checks": run_checks(masked, suite, checks)}
    del masked
    lap("chosen methods: evaluation + stress, nDCG, attacks")
    for method in METHODS:
        c = chosen[method]
        methods[method]["setting"] = (f"{c['layers']} {c['projections']} rho={c['rho']}" if method == "kfac" else
                                      f"{c['layers']} {c['projections']} energy={c['energy']}" if method == "svd" else c["key"])
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
