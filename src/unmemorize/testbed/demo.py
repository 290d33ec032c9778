"""``unmemorize demo``: the paper's experiment end to end on the built-in testbed.

1. train (or load from the cache) the testbed: a Llama-style model on a generated world;
2. collect true-Fisher K-FAC factors for every MLP projection on the factor data
   (``--factor-data mixture``: the training mixture without memorized items and without any
   evaluation row; ``general``: grammar text only);
3. sweep plans -- layer sets x projection sets x rho -- scoring each candidate ONLY on the
   *tuning* memorized split and ``heldout_tuning.txt`` (a held-out text disjoint from the
   reported one). Rule: among candidates whose perplexity stays within ``ppl_budget`` of the
   baseline, take the lowest tuning strict accuracy; ties go to the lower tuning loose
   accuracy, then to the lower perplexity. If no candidate meets the budget, the least-bad
   candidate is taken and ``rule_met: false`` is written to results.json and the report;
4. apply the chosen K-FAC edit; evaluate baseline, K-FAC, SVD on the same modules at matched
   perplexity (the SVD energy whose sweep perplexity is closest to K-FAC's), and the random
   control (as many pairs as K-FAC drops, chosen at random) on every set and task;
5. label-free tuning: search the most aggressive plan whose perplexity on clean held-out text
   stays within the same budget, using no memorized example (``edit/search.py``), and evaluate it;
6. activation-ratio analysis (paper Figures 2 and 4, ``analysis/``): band ratios of memorized,
   quote, never-trained control and task inputs against clean held-out text in every MLP layer,
   in the K-FAC and SVD bases; memorized vs control; task loading vs retention after the edit;
7. write ``report.md``, ``results.json`` (strict JSON) and plots (``analysis/`` holds the band
   analysis), and print the main table.

Every choice (steps 3-5) is made by ``tune`` from the tuning split and ``heldout_tuning.txt``
alone; ``tests/test_testbed.py`` scrambles the validation files and checks the choices do not
move. ``--seeds 0,1,2`` runs the whole experiment per seed into ``seed-<k>/`` and writes one
report with mean +- std per cell (``report.write_seeds_report``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from ..analysis import add_comparison, band_analysis
from ..analysis.inputs import sequence_batches, text_sources
from ..analysis.report import write_analysis
from ..analysis.retention import example_retention, task_sequences
from ..basis import decompose_factors
from ..curvature import CollectConfig, collect_from_files
from ..data import pad_token_id
from ..edit import EditConfig, edited
from ..edit.plan import rho_list
from ..edit.search import candidate_plans, search_plan
from ..errors import UnmemorizeError, check_seed
from .._atomic import atomic_dir
from .._timing import Laps
from ..evaluate import evaluate_tasks, load_tasks
from ..models import load_model
from ..basis.spectrum import plot_spectra
from ..targets import preset_modules
from .choices import choose_candidate, parse_seeds, svd_matched
from .report import write_report, write_seeds_report
from .suite import TestbedSuite, add_retention
from .train import TrainConfig, load_or_train, quick_configs
from .world import FACTOR_DATA, WorldConfig


QUOTES_OPTIONS = ("world", "size", "corpus", "quotes")


@dataclass
class DemoConfig:
    """Settings of ``unmemorize demo`` (saved in results.json)."""

    out: str = field(default="runs/demo", metadata={"help": "Output folder for report.md, results.json and plots."})
    quick: bool = field(default=False, metadata={"help": "Tiny world and model (seconds): checks the pipeline, not the science."})
    seed: int = field(default=0, metadata={"help": "World and training seed."})
    seeds: str = field(default="", metadata={"help": "Comma list of seeds, e.g. 0,1,2: one testbed each (seed-<k>/) and one "
                                                     "report with mean +- std per cell. Empty: --seed alone."})
    factor_data: Literal["mixture", "general"] = field(default="mixture", metadata={
        "help": "K-FAC factor data: 'mixture' (training mixture without memorized items or evaluation rows) or 'general' "
                "(grammar text only)."})
    fisher: Literal["true", "empirical"] = field(default="true", metadata={"help": "Fisher type of the factors: true or empirical."})
    factor_tokens: int = field(default=100_000, metadata={"help": "Clean tokens for K-FAC factors."})
    rhos: str = field(default="0.8,0.9,0.95,0.98,0.99,0.995", metadata={"help": "rho values the sweep tries."})
    ppl_budget: float = field(default=0.10, metadata={"help": "Largest allowed relative perplexity increase in the sweep."})
    vision: bool = field(default=False, metadata={"help": "Run the vision demo instead: noisy-label memorization in a ViT "
                                                          "(output: runs/demo-vision unless --out is given)."})
    vision_dataset: str = field(default="digits", metadata={"help": "Vision demo: 'digits', 'fashion-mnist' (Debian's dataset-fashion-mnist) or a folder of Fashion-MNIST IDX files."})
    noise_fraction: float = field(default=0.1, metadata={"help": "Vision demo: fraction of training labels made wrong."})
    vision_positions: Literal["cls", "all"] = field(default="cls", metadata={"help": "Vision demo: K-FAC positions, 'cls' (the paper) or 'all' tokens."})
    baselines: bool = field(default=False, metadata={"help": "Also compare K-FAC with SVD and BalancedSubnet (sweeps, stress test, "
                                                             "nDCG@10, attacks; ``unmemorize compare``) into <out>/baselines/ "
                                                             "(about 15 min more per seed on 2 cores)."})
    world: Literal["generated", "quotes"] = field(default="generated", metadata={
        "help": "generated: the generated world (default); quotes: real prose with real quotes inserted 1-64 times, a model "
                "retrained without them, membership inference (testbed/quotes/; output: runs/demo-quotes unless --out is given)."})
    size: Literal["cpu", "gpu"] = field(default="cpu", metadata={"help": "--world quotes: 'cpu' (3.3M parameters, minutes a model on "
                                                                    "2 cores) or 'gpu' (85M parameters, 4 passes)."})
    corpus: str = field(default="", metadata={"help": "--world quotes: a folder of .txt prose instead of Debian's texts."})
    quotes: str = field(default="", metadata={"help": "--world quotes: a .jsonl of {'body', 'author'} quotes instead of fortunes."})
    experts: int = field(default=0, metadata={"help": "0: the dense testbed. N > 0: its mixture-of-experts twin (N experts a "
                                                      "block, top-2, the same world and active width) and the edit per expert."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output folder (only one an earlier demo wrote)."})

    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds, self.seed)

    def record(self) -> dict:
        """The settings results.json records: every field, less the --world quotes options on the generated world (whose
        results.json, digit for digit the committed one, predates them)."""
        return {k: v for k, v in asdict(self).items() if self.world == "quotes" or k not in QUOTES_OPTIONS}

    def validate(self) -> None:
        check_seed(self.seed)
        for seed in self.seed_list():
            check_seed(seed)
        if self.factor_data not in FACTOR_DATA:
            raise UnmemorizeError(f"--factor-data must be one of {', '.join(FACTOR_DATA)}, got {self.factor_data!r}")
        rho_list(self.rhos, "--rhos")
        if not 0 < self.ppl_budget:
            raise UnmemorizeError(f"--ppl-budget must be > 0 (a relative increase, e.g. 0.10), got {self.ppl_budget}")
        if self.factor_tokens < 1:
            raise UnmemorizeError(f"--factor-tokens must be positive, got {self.factor_tokens}")
        if not 0 <= self.noise_fraction < 1:
            raise UnmemorizeError(f"--noise-fraction must be in [0, 1), got {self.noise_fraction}")
        if self.experts < 0 or self.experts == 1:
            raise UnmemorizeError(f"--experts must be 0 (dense) or at least 2, got {self.experts}")
        if self.world == "quotes" and (self.vision or self.baselines or self.experts or self.factor_data != "mixture" or self.fisher != "true"):
            raise UnmemorizeError("--world quotes runs its own comparison (K-FAC, SVD, BSN, the retrained model) on the true Fisher of "
                                  "training prose; it does not combine with --vision, --baselines, --experts, --factor-data or --fisher")
        if (self.corpus or self.quotes or self.size != "cpu") and self.world != "quotes":
            raise UnmemorizeError("--corpus, --quotes and --size belong to --world quotes")
        if self.experts and (self.vision or self.baselines):
            raise UnmemorizeError("--experts runs the language-model demo; it does not combine with --vision or --baselines")


def _sweep(model, suite, factors, bases, rhos):
    """Every candidate plan scored on the tuning split and the perplexity slice (``suite.quick``)."""
    candidates = []
    for layer_name, proj_name, rho, plan in candidate_plans(model, factors, rhos):
        with edited(model, plan, factors, bases=bases) as edit:
            score = suite.quick(model)
        kept = sum(s.kept_pairs for s in edit.modules.values()) / sum(s.total_pairs for s in edit.modules.values())
        candidates.append({"method": "kfac", "layers": layer_name, "projections": proj_name, "rho": rho, "plan": plan,
                           "kept_fraction": kept, **score})
    return candidates


def _band_analysis(model, tokenizer, folder: Path, modules, bases, factors, plan, kfac: dict, out: Path, quick: bool) -> dict:
    """Step 6: sources from the testbed's files; retention of the label-tuned K-FAC edit, per task and per row."""
    data = folder / "data"
    budget = 4_000 if quick else 20_000
    files = {"clean": data / "heldout_tuning.txt", "memorized": data / "memorized_validation.jsonl", "quotes": data / "quotes.jsonl",
             "control": data / "control_sequences.jsonl"}
    sources = text_sources(files, tokenizer, "next_token", 128, budget, 16)
    rows = load_tasks(data / "tasks.jsonl")
    tasks = task_sequences(rows, tokenizer)
    for task, members in tasks.items():
        sources[task] = sequence_batches([sequence for _, sequence in members], "next_token", 16, pad_token_id(tokenizer))
    result = band_analysis(model, modules, bases, sources, "clean", per_sequence=list(tasks))
    compared = ["memorized", "quotes", "control", add_comparison(result, "memorized", "control")]
    retention = {name: task["retention"] for name, task in kfac["tasks"].items() if task["learned"]}
    retention.update(memorized=kfac["category_retention"]["memorized_validation"], quotes=kfac["category_retention"]["quotes"])
    before = evaluate_tasks(model, tokenizer, rows).correct
    with edited(model, plan, factors, bases=bases):
        after = evaluate_tasks(model, tokenizer, rows).correct
    examples = example_retention(result, tasks, before, after, list(plan))
    extra = write_analysis(result, out / "analysis", compared, list(tasks), retention, list(plan), examples)
    layers = {name: {kind: stats["ratio"]["memorized"] for kind, stats in entry["bases"].items()} for name, entry in result["modules"].items()}
    return {"summary": extra["summary"], "correlation": extra["correlation"], "examples": examples, "memorized_ratios": layers,
            "counted_positions": result["counted_positions"], "folder": "analysis"}


def expert_summary(module_stats: dict, factors) -> dict:
    """Per block and expert of the chosen K-FAC edit: kept pairs / total pairs of each matrix, and the tokens routed."""
    import re

    table: dict = {}
    for name, stats in module_stats.items():
        match = re.search(r"layers\.(\d+)\..*experts\.(\d+)\.(\w+)$", name)
        if match:
            block, expert, matrix = match.groups()
            table.setdefault(block, {}).setdefault(expert, {})[matrix] = {"kept": stats["kept_pairs"], "total": stats["total_pairs"],
                                                                         "relative_change": round(stats["relative_change"], 4)}
    positions = factors.metadata.get("expert_positions", {})
    for name, count in positions.items():
        match = re.search(r"layers\.(\d+)\..*experts\.(\d+)\.gate_proj$", name)
        if match and match.group(1) in table and match.group(2) in table[match.group(1)]:
            table[match.group(1)][match.group(2)]["routed_positions"] = count
    return {"per_block": table, "unrouted": factors.metadata.get("unrouted_experts", [])}


def run_demo(config: DemoConfig | None = None) -> dict:
    """The whole experiment; ``config.out`` is claimed before any work and written atomically at the end."""
    config = config or DemoConfig()
    config.validate()
    if config.vision:
        from ..vision.demo import VisionDemoConfig, run_vision_demo

        out = "runs/demo-vision" if config.out == DemoConfig.out else config.out
        return run_vision_demo(VisionDemoConfig(out=out, quick=config.quick, seed=config.seed, seeds=config.seeds, fisher=config.fisher,
                                                dataset=config.vision_dataset, noise_fraction=config.noise_fraction,
                                                positions=config.vision_positions, overwrite=config.overwrite))
    if config.world == "quotes":
        from .quotes.demo import QuotesDemoConfig, run_quotes_demo

        out = "runs/demo-quotes" if config.out == DemoConfig.out else config.out
        return run_quotes_demo(QuotesDemoConfig(out=out, quick=config.quick, seed=config.seed, seeds=config.seeds, size=config.size, corpus=config.corpus,
                                                quotes=config.quotes, factor_tokens=config.factor_tokens, rhos=config.rhos,
                                                ppl_budget=config.ppl_budget, overwrite=config.overwrite))
    seeds = config.seed_list()
    start = time.perf_counter()
    with atomic_dir(config.out, config.overwrite, kind="demo") as tmp:
        if config.seeds.strip():
            per_seed = {seed: _run_demo(replace(config, seed=seed), tmp / f"seed-{seed}") for seed in seeds}
            results = write_seeds_report(per_seed, tmp, config)
        else:
            results = _run_demo(config, tmp)
        if config.baselines:
            from ..jsonio import write_json

            results["baselines"] = _baselines(config, tmp, seeds)
            write_json(tmp / "results.json", results)
    print(f"\nreport: {Path(config.out) / 'report.md'}   total {time.perf_counter() - start:.1f} s")
    return results


def _baselines(config: DemoConfig, tmp: Path, seeds: list[int]) -> dict:
    """``--baselines``: the comparison (``compare.py``) into baselines/, linked from report.md."""
    from .compare import CompareConfig, compare_into

    compare = CompareConfig(out=str(Path(config.out) / "baselines"), quick=config.quick, seeds=",".join(map(str, seeds)),
                            factor_data=config.factor_data, factor_tokens=config.factor_tokens, fisher=config.fisher,
                            rhos=config.rhos, ppl_budget=config.ppl_budget)
    record = compare_into(compare, tmp / "baselines")
    claim = record["paper_claim"]["over_seeds"]
    with (tmp / "report.md").open("a") as report:
        report.write("\n## Baselines: K-FAC vs SVD vs BalancedSubnet\n\nSweeps of every method chosen by the same rule, the stress "
                     "test, nDCG@10 and attacks on the edit: [baselines/report.md](baselines/report.md). With each method chosen by the "
                     "same rule and budget, by a paired t test over seeds (p < 0.05 in the claimed direction), K-FAC removes more "
                     f"quotes than BSN: {'yes' if claim['quotes_half_holds'] else 'not shown'}; BSN removes more of its forget set than "
                     f"K-FAC: {'yes' if claim['forget_half_holds'] else 'not shown'}.\n")
    return {"paper_claim": record["paper_claim"], "survival": record["survival"]}


def tune(model, suite: TestbedSuite, factors, bases, config: DemoConfig, baseline_sweep_perplexity: float) -> dict:
    """Every choice of the demo, from the tuning split and ``heldout_tuning.txt`` only:

    the K-FAC plan (sweep + rule), SVD's matched energy and the label-free plan. Nothing here
    reads the validation split, the reported held-out text or the tasks (tested by scrambling them).
    """
    rhos = rho_list(config.rhos, "--rhos")
    candidates = _sweep(model, suite, factors, bases, rhos)
    chosen, rule_met = choose_candidate(candidates, baseline_sweep_perplexity, config.ppl_budget)
    svd_point, svd_points = svd_matched(model, suite, chosen["plan"], chosen["perplexity"])
    label_free = search_plan(model, factors, bases, suite.sweep_windows, 1 + config.ppl_budget, rhos)
    return {"candidates": candidates, "chosen": chosen, "rule_met": rule_met, "svd_point": svd_point, "svd_points": svd_points,
            "label_free": label_free}


def _run_demo(config: DemoConfig, out: Path) -> dict:
    lap = Laps()
    walls = lap.walls

    world_config, train_config = quick_configs(config.seed) if config.quick else (WorldConfig(seed=config.seed), TrainConfig(seed=config.seed))
    train_config = replace(train_config, experts=config.experts)
    folder = load_or_train(world_config, train_config)
    lap("testbed (train or load)")
    model, tokenizer = load_model(str(folder / "model"))
    torch.manual_seed(config.seed)
    suite = TestbedSuite.for_demo(folder, tokenizer, config.quick)
    baseline = suite.baseline(model)
    lap("baseline evaluation")
    targets = preset_modules(model)
    factor_tokens = 5_000 if config.quick else config.factor_tokens
    factors = collect_from_files(model, tokenizer, str(folder / "data" / f"factors_{config.factor_data}.txt"), targets,
                                 CollectConfig(fisher=config.fisher, seq_len=128, max_tokens=factor_tokens, batch_size=16, progress=False))
    bases = decompose_factors(factors)
    lap("K-FAC factors + eigendecomposition")
    choice = tune(model, suite, factors, bases, config, baseline["sweep_perplexity"])
    candidates, chosen, svd_point, svd_points = choice["candidates"], choice["chosen"], choice["svd_point"], choice["svd_points"]
    label_free = choice["label_free"]
    lap("choices: sweep, SVD energy, label-free search (tuning split + heldout_tuning only)")
    plan = chosen["plan"]
    methods = {"baseline": baseline}
    with edited(model, plan, factors, bases=bases) as edit:
        methods["kfac"] = suite.evaluate(model)
        kfac_stats = {n: asdict(s) for n, s in edit.modules.items()}
    setting = f"{chosen['layers']} {chosen['projections']} rho={chosen['rho']}"
    methods["kfac"]["setting"] = setting
    with edited(model, {n: svd_point["energy"] for n in plan}, config=EditConfig(method="svd")):
        methods["svd"] = suite.evaluate(model)
    methods["svd"]["setting"] = f"{chosen['layers']} {chosen['projections']} energy={svd_point['energy']}"
    with edited(model, plan, factors, EditConfig(method="random", seed=config.seed), bases=bases):
        methods["random"] = suite.evaluate(model)
    methods["random"]["setting"] = f"{setting}, random pairs"
    if label_free.plan is not None:
        with edited(model, label_free.plan, factors, bases=bases):
            methods["kfac_label_free"] = suite.evaluate(model)
        picked = label_free.chosen
        methods["kfac_label_free"]["setting"] = f"{picked['layers']} {picked['projections']} rho={picked['rho']} (clean text only)"
    lap("final evaluations (kfac, svd, random, label-free)")
    for name in [m for m in methods if m != "baseline"]:
        add_retention(methods[name], baseline)
    experts = [n for n in targets if "experts" in n]
    if experts:  # the band analysis reads linear modules' inputs; an expert reads only its routed tokens
        analysis = {"skipped": "the band analysis does not read experts' inputs (docs/guides/architectures.md)"}
    else:
        analysis = _band_analysis(model, tokenizer, folder, targets, bases, factors, plan, methods["kfac"], out, config.quick)
    lap("activation-ratio analysis (bands, K-FAC vs SVD)")
    info = __import__("json").loads((folder / "testbed.json").read_text())
    results = {
        "config": {**config.record(), "testbed_key": info["key"], "testbed": str(folder), "parameters": info["parameters"],
                   "factor_tokens": factors.metadata["tokens"], "world": info["world"], "train": info["train"],
                   "selection_rule": f"min tuning strict (then loose, then ppl) with sweep perplexity <= {1 + config.ppl_budget:g} x baseline"},
        "rule_met": choice["rule_met"],
        "methods": methods,
        "chosen": {**{k: v for k, v in chosen.items() if k != "plan"}, "plan": plan,
                   "plan_short": {"layers": chosen["layers"], "projections": chosen["projections"], "rho": chosen["rho"]},
                   "module_stats": kfac_stats},
        "sweep": [{k: v for k, v in c.items() if k != "plan"} for c in candidates] + svd_points,
        "label_free": {"budget": 1 + config.ppl_budget, "baseline_perplexity": label_free.baseline_perplexity,
                       "chosen": None if label_free.chosen is None else {k: v for k, v in label_free.chosen.items() if k != "plan"},
                       "candidates": [{k: v for k, v in c.items() if k != "plan"} for c in label_free.candidates]},
        "analysis": analysis,
        **({"experts": expert_summary(kfac_stats, factors)} if experts else {}),
        "testbed_training": {"seconds": info["seconds"], "tokens": info["tokens"], "steps": info["steps"],
                             "source": info.get("source", "trained here (or cached from a training here)")},
        "leak_scan": info.get("leak_scan"),
        "wall_seconds": walls,
    }
    main = write_report(results, out)
    plot_spectra(bases, out / "spectrum.png")
    lap("report")
    results["wall_seconds"] = walls
    print(main)
    return results
