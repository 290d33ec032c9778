"""``unmemorize demo --world quotes``: memorization against duplication on real text, and membership inference.

Per seed (``--seeds 0,1,2``: one world and two trainings each, then one report over seeds):

1. the quotes testbed (``train.py``): the model trained with the quotes, and its twin retrained
   without any quote (same documents, order, tokenizer, seed and settings);
2. true-Fisher K-FAC factors of every MLP projection on ``factors.txt`` (training prose without
   any insertion);
3. choices, from the *tuning* half of the inserted quotes and ``heldout_tuning.txt`` alone, by the
   testbed's one rule (``choices.choose_candidate``: lowest tuning strict accuracy within the
   perplexity budget): the K-FAC plan (layer sets x projection sets x rho), SVD at the K-FAC edit's
   perplexity (``choices.svd_matched``: the energy grid, then bisection) and BalancedSubnet
   (``BSN_GRID``: forget set = the tuning quotes, retain set = training prose);
4. every model -- baseline, K-FAC, SVD, BSN, retrained -- measured on the *reported* half and the
   controls: recitation (strict, loose, Levenshtein; prefix = all but the last 8 tokens of the
   body) per duplication count, perplexity on ``heldout.txt``, and membership inference
   (``evaluate.membership``: loss, zlib ratio, Min-K% and Min-K%++ scores of ``<EOS> body -- author``;
   AUC of the reported quotes of each count against every control; and MUSE's PrivLeak, the
   relative distance of each AUC from the retrained model's);
5. the band analysis (paper Figure 2) per duplication count: band activation ratios of the reported
   quotes of each count against held-out prose and against the controls, in the K-FAC and SVD bases;
6. attacks on each edit (K-FAC, SVD, BSN) and on the references (the baseline, the retrained twin): relearning -- ``RELEARN_STEPS`` AdamW steps on clean
   prose or on the tuning quotes -- and 4-/8-bit quantization, each re-measuring recitation of the
   reported quotes per count.

Nothing of steps 4-6 feeds back into a choice: the reported half, ``heldout.txt`` and the controls
are read only after step 3.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..._atomic import atomic_dir
from ..._timing import Laps
from ...basis import decompose_factors
from ...curvature import CollectConfig, collect_from_files
from ...data import iter_windows, list_data_files
from ...edit import EditConfig, edited
from ...edit.plan import rho_list
from ...errors import UnmemorizeError, check_seed
from ...evaluate import evaluate_memorization, perplexity
from ...evaluate.attacks import RelearnConfig, relearning_attack
from ...evaluate.memorization import MemorizationItem
from ...evaluate.membership import auc_interval, membership_scores, privacy_leak, roc_auc, token_log_probs
from ...evaluate.quantization import quantization_attack
from ...models import load_model
from ...provenance import provenance
from ...targets import preset_modules
from ..choices import choose_candidate, parse_seeds, svd_matched
from ..compare import apply_masks, sweep_bsn, sweep_kfac
from ..suite import _scores
from .train import load_or_train_quotes, quotes_configs
from .world import build_quotes_world

METHODS = ("baseline", "kfac", "svd", "bsn", "retrained")
EDITS = ("kfac", "svd", "bsn")
BSN_GRID = {"bsn_projections": ["gate,up,down"], "bsn_ratios": [0.03, 0.1, 0.3], "bsn_alphas": [0.7], "bsn_lrs": [0.1, 1.0],
            "bsn_epochs": [3, 10]}
RELEARN_STEPS = (10, 100)
RELEARN_LR = 1e-3
MIA_K = 0.2  # Min-K%++ (Zhang et al. 2024)
MUSE_K = 0.4  # Min-K% at 40%: MUSE's PrivLeak score ('forget_holdout_Min-40%')


@dataclass
class QuotesDemoConfig:
    """Settings of ``unmemorize demo --world quotes`` (saved in results.json)."""

    out: str = "runs/demo-quotes"
    quick: bool = False
    seed: int = 0
    seeds: str = ""
    size: str = "cpu"
    corpus: str = ""
    quotes: str = ""
    factor_tokens: int = 100_000
    retain_tokens: int = 30_000
    rhos: str = "0.8,0.9,0.95,0.98,0.99,0.995"
    ppl_budget: float = 0.10
    attacks: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        for seed in parse_seeds(self.seeds, self.seed):
            check_seed(seed)
        rho_list(self.rhos, "--rhos")
        if not 0 < self.ppl_budget:
            raise UnmemorizeError(f"--ppl-budget must be > 0, got {self.ppl_budget}")


def _item(row: dict, index: int) -> MemorizationItem:
    return MemorizationItem(str(index), row["prefix_ids"], row["suffix_ids"])


class QuotesSuite:
    """The evaluation sets of a quotes testbed folder. ``sets`` holds what the shared sweeps read
    (``compare.sweep_*``): ``memorized_tuning`` (tuning quotes, every count), ``memorized_validation`` (reported
    quotes) and ``quotes`` (the controls), the last two for plots only; ``quick`` scores only the tuning half and
    the tuning perplexity slice."""

    def __init__(self, folder: Path, tokenizer, quick: bool, batch_size: int = 64):
        data = Path(folder) / "data"
        self.rows = [json.loads(line) for line in (data / "quotes.jsonl").read_text().splitlines()]
        self.tokenizer, self.pad_id, self.batch_size = tokenizer, tokenizer.pad_token_id, batch_size
        self.counts = sorted({row["count"] for row in self.rows if row["count"]})
        indexed = list(enumerate(self.rows))
        self.sets = {"memorized_tuning": [_item(r, i) for i, r in indexed if r["split"] == "tuning"],
                     "memorized_validation": [_item(r, i) for i, r in indexed if r["split"] == "reported"],
                     "quotes": [_item(r, i) for i, r in indexed if r["split"] == "control"]}
        self.windows = list(iter_windows(list_data_files(data / "heldout.txt"), tokenizer, 128, 4_000 if quick else 40_000))
        self.sweep_windows = list(iter_windows(list_data_files(data / "heldout_tuning.txt"), tokenizer, 128, 4_000 if quick else 10_000))

    def by_count(self, split: str) -> dict[str, list[MemorizationItem]]:
        """{'count=<c>': items of that split and count} plus {'controls': the controls}."""
        sets = {f"count={c}": [_item(r, i) for i, r in enumerate(self.rows) if r["split"] == split and r["count"] == c]
                for c in self.counts}
        sets["controls"] = self.sets["quotes"]
        return sets

    def quick(self, model) -> dict:
        tuning = evaluate_memorization(model, self.sets["memorized_tuning"], self.pad_id, self.batch_size)
        return {"memorized_tuning": _scores(tuning), "perplexity": perplexity(model, self.sweep_windows, 32).perplexity}

    def membership(self, model) -> dict:
        """Membership scores of every row (the caller groups them): {score name: [value per row]} (higher: member)."""
        sequences, texts = [row["text_ids"] for row in self.rows], [row["body"] for row in self.rows]
        statistics = token_log_probs(model, sequences)  # one forward pass serves both k
        scores = membership_scores(model, sequences, texts, k=MIA_K, statistics=statistics).scores()
        muse = membership_scores(model, sequences, texts, k=MUSE_K, statistics=statistics).scores()["min_k"]
        return {"loss": scores["loss"], "zlib": scores["zlib"], "min_k_plus_plus": scores["min_k_plus_plus"], "min_k_40": muse}

    def evaluate(self, model) -> dict:
        start = time.perf_counter()
        result = {"recitation": {split: {name: _scores(evaluate_memorization(model, items, self.pad_id, self.batch_size))
                                         for name, items in self.by_count(split).items()} for split in ("reported", "tuning")}}
        ppl = perplexity(model, self.windows, 32)
        result["perplexity"], result["perplexity_detail"] = ppl.perplexity, ppl.to_dict()
        result["membership_scores"] = self.membership(model)
        result["eval_seconds"] = round(time.perf_counter() - start, 2)
        return result


def _subset(scores: dict[str, list[float]], indices: list[int]) -> dict[str, list[float]]:
    return {name: [values[i] for i in indices] for name, values in scores.items()}


def membership_aucs(rows: list[dict], scores: dict[str, list[float]], counts: list[int]) -> dict:
    """AUC of every score name for the reported quotes of each count (and all counts pooled) against every control, and
    its 95% stratified percentile bootstrap interval (``evaluate.membership.auc_interval``, 2,000 resamples)."""
    controls = [i for i, row in enumerate(rows) if row["split"] == "control"]
    groups = {f"count={c}": [i for i, row in enumerate(rows) if row["split"] == "reported" and row["count"] == c] for c in counts}
    groups["all counts"] = [i for i, row in enumerate(rows) if row["split"] == "reported"]
    negatives = _subset(scores, controls)
    return {group: {name: roc_auc(values, negatives[name]) for name, values in _subset(scores, members).items()}
            for group, members in groups.items()}, {
        group: {name: auc_interval(values, negatives[name], seed=index) for name, values in _subset(scores, members).items()}
        for index, (group, members) in enumerate(groups.items())}


def muse_privacy_leak(auc: float, retrained_auc: float) -> float | None:
    """MUSE's PrivLeak from AUCs of members-vs-non-members (ours): MUSE's AUC ranks non-members above members, 1 - ours
    (``evaluate.membership``), so this is privacy_leak(1 - auc, 1 - retrained_auc); None where the retrained model's
    AUC is 1 (MUSE's denominator 0)."""
    return None if retrained_auc >= 1 else privacy_leak(1 - auc, 1 - retrained_auc)


def band_by_count(model, tokenizer, folder: Path, suite: QuotesSuite, modules, bases, quick: bool) -> dict:
    """Paper Figure 2 per duplication count: mean over modules of the separation ln r(bottom 50%) - ln r(top 10%) of
    the reported quotes of each count against held-out prose and against the controls, per basis."""
    from ...analysis import add_comparison, band_analysis
    from ...analysis.inputs import TokenSequence, sequence_batches, text_sources
    from ...data import pad_token_id

    sources = text_sources({"clean": folder / "data" / "heldout_tuning.txt"}, tokenizer, "next_token", 128, 4_000 if quick else 20_000, 16)
    pad = pad_token_id(tokenizer)

    def batches(rows):
        return sequence_batches([TokenSequence(row["text_ids"]) for row in rows], "next_token", 16, pad)

    for count in suite.counts:
        sources[f"count={count}"] = batches([r for r in suite.rows if r["split"] == "reported" and r["count"] == count])
    sources["controls"] = batches([r for r in suite.rows if r["split"] == "control"])
    result = band_analysis(model, modules, bases, sources, "clean")
    keys = {f"count={c}": add_comparison(result, f"count={c}", "controls") for c in suite.counts}
    summary: dict = {}
    for kind in ("pairs", "whitened", "svd"):
        per = {}
        for source in [f"count={c}" for c in suite.counts] + ["controls"]:
            against_clean = [e["bases"][kind]["separation"][source] for e in result["modules"].values() if kind in e["bases"]]
            entry = {"vs_clean": _finite_mean(against_clean)}
            if source in keys:
                entry["vs_controls"] = _finite_mean([e["bases"][kind]["separation"][keys[source]] for e in result["modules"].values()
                                                     if kind in e["bases"]])
            per[source] = entry
        summary[kind] = per
    return {"separation": summary, "counted_positions": result["counted_positions"]}


def _finite_mean(values: list[float]) -> float | None:
    """The mean over the finite separations (``analysis.separation_mean``), None if there is none."""
    from ...analysis.run import separation_mean

    stats = separation_mean(values)
    return stats["mean"] if stats["in_mean"] else None


def attacks(model, suite: QuotesSuite, clean_sequences: list[list[int]], seed: int, steps: tuple[int, ...] = RELEARN_STEPS) -> dict:
    """Relearning (on clean prose; on the tuning quotes) and quantization, each re-measuring recitation of the reported
    quotes per count; after relearning also of the tuning quotes (all counts): for the run on them, the positive
    control that the attack teaches what it trains on."""
    sets = suite.by_count("reported")
    measured = {**sets, "tuning quotes": suite.sets["memorized_tuning"]}
    tuning = [row["text_ids"] for row in suite.rows if row["split"] == "tuning"]
    config = RelearnConfig(steps=steps, learning_rate=RELEARN_LR, batch_size=8, seed=seed)
    return {"relearn": {"clean_prose": relearning_attack(model, clean_sequences, measured, suite.pad_id, config),
                        "tuning_quotes": relearning_attack(model, tuning, measured, suite.pad_id, config)},
            "quantization": quantization_attack(model, sets, suite.pad_id)}


def tune_quotes(model, suite: QuotesSuite, factors, bases, config: QuotesDemoConfig, clean: list[list[int]], seed: int) -> dict:
    """Every choice of the experiment, from the tuning quotes and ``heldout_tuning.txt`` only (tested by scrambling the
    reported half, the controls and ``heldout.txt``): the K-FAC plan, SVD's matched energy and the BSN setting (forget
    set: the tuning quotes; retain set: ``clean``, training prose)."""
    baseline_ppl = suite.quick(model)["perplexity"]
    layer_sets = {"all": list(range(model.config.num_hidden_layers))} if config.quick else None  # quick: the pipeline, not the science
    kfac_candidates = sweep_kfac(model, suite, factors, bases, rho_list(config.rhos, "--rhos"), layer_sets)
    kfac, kfac_rule = choose_candidate(kfac_candidates, baseline_ppl, config.ppl_budget)
    svd_point, svd_points = svd_matched(model, suite, kfac["plan"], kfac["perplexity"])
    forget = [row["text_ids"] for row in suite.rows if row["split"] == "tuning"]
    grid = BSN_GRID if not config.quick else {**BSN_GRID, "bsn_ratios": [0.1], "bsn_lrs": [1.0], "bsn_epochs": [1, 2]}
    bsn_candidates, bsn_masks = sweep_bsn(model, suite, forget, clean, grid, seed, suite.pad_id)
    bsn, bsn_rule = choose_candidate(bsn_candidates, baseline_ppl, config.ppl_budget)
    return {"kfac": kfac, "svd": svd_point, "bsn": bsn, "bsn_masks": bsn_masks, "rule_met": {"kfac": kfac_rule, "bsn": bsn_rule},
            "baseline_tuning_perplexity": baseline_ppl, "candidates": {"kfac": kfac_candidates, "svd": svd_points, "bsn": bsn_candidates}}


def run_quotes_seed(config: QuotesDemoConfig, seed: int, out: Path) -> dict:
    """The whole experiment for one seed (module doc) into ``out``; returns its results."""
    lap = Laps()
    world_config, train = quotes_configs(seed, "quick" if config.quick else config.size, config.corpus, config.quotes)
    world = build_quotes_world(world_config)
    command = f"unmemorize testbed train --world quotes --seed {seed}" + (" --quick" if config.quick else f" --size {config.size}")
    folder = load_or_train_quotes(world_config, train, True, world=world, command=command)
    retrained_folder = load_or_train_quotes(world_config, train, False, world=world, command=command)
    lap("testbeds (train or load): with and without the quotes")
    model, tokenizer = load_model(str(folder / "model"))
    retrained, retrained_tokenizer = load_model(str(retrained_folder / "model"))
    if retrained_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UnmemorizeError(f"the retrained model's tokenizer differs from the model's ({retrained_folder}, {folder})")
    torch.manual_seed(seed)
    suite = QuotesSuite(folder, tokenizer, config.quick)
    targets = preset_modules(model)
    factors = collect_from_files(model, tokenizer, str(folder / "data" / "factors.txt"), targets,
                                 CollectConfig(fisher="true", seq_len=128, max_tokens=5_000 if config.quick else config.factor_tokens,
                                               batch_size=16, progress=False))
    bases = decompose_factors(factors)
    lap("K-FAC factors + eigendecomposition")
    clean = list(iter_windows(list_data_files(folder / "data" / "factors.txt"), tokenizer, 128, 2_000 if config.quick else config.retain_tokens))
    choice = tune_quotes(model, suite, factors, bases, config, clean, seed)
    kfac, svd_point, bsn = choice["kfac"], choice["svd"], choice["bsn"]
    lap("choices: K-FAC sweep, SVD at matched perplexity, BSN sweep (tuning quotes + heldout_tuning only)")

    edits = {"kfac": lambda: edited(model, kfac["plan"], factors, bases=bases),
             "svd": lambda: edited(model, {name: svd_point["energy"] for name in kfac["plan"]}, config=EditConfig(method="svd"))}
    methods = {"baseline": suite.evaluate(model), "retrained": suite.evaluate(retrained)}
    bsn_model = apply_masks(model, choice["bsn_masks"][bsn["key"]])
    for name, context in edits.items():
        with context():
            methods[name] = suite.evaluate(model)
    methods["bsn"] = suite.evaluate(bsn_model)
    settings = {"kfac": f"{kfac['layers']} {kfac['projections']} rho={kfac['rho']}",
                "svd": f"{kfac['layers']} {kfac['projections']} energy={svd_point['energy']}", "bsn": bsn["key"],
                "baseline": "-", "retrained": "trained without any inserted quote"}
    for name, entry in methods.items():
        entry["setting"] = settings[name]
        entry["membership_auc"], entry["membership_auc_interval"] = membership_aucs(suite.rows, entry["membership_scores"], suite.counts)
    for name in methods:
        methods[name]["privacy_leak"] = {group: {score: muse_privacy_leak(auc, methods["retrained"]["membership_auc"][group][score])
                                                 for score, auc in table.items()}
                                         for group, table in methods[name]["membership_auc"].items()}
    lap("evaluations: recitation per count, perplexity, membership inference")
    bands = band_by_count(model, tokenizer, folder, suite, targets, bases, config.quick)
    lap("band analysis per duplication count")
    attacked = {}
    if config.attacks:  # the baseline and the retrained twin are the references: what the attacks do to no edit / no quote
        steps = (2, 10) if config.quick else RELEARN_STEPS
        attacked["baseline"] = attacks(model, suite, clean, seed, steps)
        for name, context in edits.items():
            with context():
                attacked[name] = attacks(model, suite, clean, seed, steps)
        attacked["bsn"] = attacks(bsn_model, suite, clean, seed, steps)
        attacked["retrained"] = attacks(retrained, suite, clean, seed, steps)
        lap("attacks: relearning and quantization")
    info = {name: json.loads((f / "testbed.json").read_text()) for name, f in (("model", folder), ("retrained", retrained_folder))}
    results = {
        "config": {**asdict(config), "seed": seed, "world": info["model"]["world"], "train": info["model"]["train"],
                   "selection_rule": f"min tuning strict (then loose, then ppl) with tuning perplexity <= {1 + config.ppl_budget:g} x baseline"},
        "testbeds": {name: {k: record[k] for k in ("key", "variant", "parameters", "tokens", "steps", "seconds", "threads", "sha256",
                                                   "command", "corpus_sha256", "stream_scan")} | {"final_loss": record["loss_curve"][-1]}
                     for name, record in info.items()},
        "counts": suite.counts,
        "rule_met": choice["rule_met"],
        "methods": methods,
        "chosen": {"kfac": {k: v for k, v in kfac.items() if k != "plan"}, "svd": svd_point, "bsn": bsn},
        "sweeps": {"kfac": [{k: v for k, v in c.items() if k != "plan"} for c in choice["candidates"]["kfac"]],
                   "svd": choice["candidates"]["svd"], "bsn": choice["candidates"]["bsn"]},
        "bands": bands,
        "attacks": attacked,
        "wall_seconds": lap.walls,
        "provenance": provenance(),
    }
    from .report import write_seed_report

    write_seed_report(results, out)
    return results


def run_quotes_demo(config: QuotesDemoConfig) -> dict:
    """Every seed into ``<out>/seed-<k>/`` (one seed: into ``<out>``), then the report over seeds; written atomically."""
    config.validate()
    from .report import write_seeds_report

    seeds = parse_seeds(config.seeds, config.seed)
    start = time.perf_counter()
    with atomic_dir(config.out, config.overwrite, kind="demo") as tmp:
        if config.seeds.strip():
            per_seed = {}
            for seed in seeds:
                (tmp / f"seed-{seed}").mkdir()
                per_seed[seed] = run_quotes_seed(replace(config, seed=seed), seed, tmp / f"seed-{seed}")
            results = write_seeds_report(per_seed, tmp, config)
        else:
            results = run_quotes_seed(config, config.seed, tmp)
    print(f"\nreport: {Path(config.out) / 'report.md'}   total {time.perf_counter() - start:.1f} s")
    return results
