"""``unmemorize compare``: K-FAC vs SVD vs BalancedSubnet on the quick testbed (structure, not the science)."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from unmemorize.jsonio import strict_loads


def _quick_setup(shared_testbed_cache, monkeypatch):
    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.evaluate.attacks import item_sequences
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets
    from unmemorize.testbed import load_or_train, quick_configs

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    folder = load_or_train(*quick_configs(0), progress=False)
    model, tokenizer = load_model(str(folder / "model"))
    factors = collect_from_files(model, tokenizer, str(folder / "data" / "factors_mixture.txt"), resolve_targets(model),
                                 CollectConfig(seq_len=64, max_tokens=2_000, batch_size=8, progress=False))
    return folder, model, tokenizer, factors, decompose_factors(factors), item_sequences


def _scrambled(folder, tmp_path, names):
    copy = tmp_path / f"scrambled-{'-'.join(names)}"
    shutil.copytree(folder, copy)
    rng = random.Random(1)
    for name in names:
        path = copy / "data" / name
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            for key in ("suffix_ids", "prefix_ids"):
                rng.shuffle(row[key])
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return copy


def test_every_method_is_chosen_without_reading_the_validation_split_or_the_quotes(tmp_path, monkeypatch, shared_testbed_cache):
    """Scrambling the validation split and the quotes leaves every method's choice (K-FAC, SVD, BSN)
    and every rule score identical, while the Pareto plot's ``reported`` scores move; scrambling the
    tuning split (the negative control) moves the rule's scores."""
    import torch

    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.evaluate import perplexity
    from unmemorize.testbed.compare import CompareConfig, QUICK_GRIDS, choose_all, sweep_all
    from unmemorize.testbed.suite import TestbedSuite

    folder, model, tokenizer, factors, bases, item_sequences = _quick_setup(shared_testbed_cache, monkeypatch)
    grids = CompareConfig(**{k: v for k, v in QUICK_GRIDS.items() if k in ("rhos", "energies", "bsn_ratios", "bsn_alphas", "bsn_epochs", "bsn_lrs")}).grids()
    retain = list(iter_windows(list_data_files(folder / "data" / "factors_mixture.txt"), tokenizer, 64, 2_000))

    def run(data_folder):
        torch.manual_seed(0)
        suite = TestbedSuite(data_folder, tokenizer, perplexity_tokens=2_000, sweep_perplexity_tokens=2_000)
        forget = item_sequences(suite.sets["memorized_tuning"])
        candidates, _ = sweep_all(model, suite, factors, bases, forget, retain, grids, 0)
        chosen, rule_met = choose_all(candidates, perplexity(model, suite.sweep_windows, 32).perplexity, 0.10)
        rule = {m: [(c["memorized_tuning"]["strict"], c["perplexity"]) for c in cs] for m, cs in candidates.items()}
        picked = {m: (c.get("rho"), c.get("energy"), c.get("key"), c.get("layers"), c.get("projections")) for m, c in chosen.items()}
        reported = {m: [c["reported"]["memorized_validation"]["loose"] + c["reported"]["quotes"]["loose"] for c in cs]
                    for m, cs in candidates.items()}
        return picked, rule_met, rule, reported

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    original = run(folder)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # every sweep restored the model exactly
    # BSN: 2 ratios x 2 mask variants x epochs 1 and 2 (one run each, snapshot after epoch 1); equal K-FAC and SVD grids here
    assert len(original[2]["bsn"]) == 8 and len(original[2]["svd"]) == len(original[2]["kfac"])
    picked, rule_met, rule, reported = run(_scrambled(folder, tmp_path, ["memorized_validation.jsonl", "quotes.jsonl"]))
    assert (picked, rule_met, rule) == original[:3]
    assert reported != original[3]  # the plot's scores do read the scrambled files
    control = run(_scrambled(folder, tmp_path, ["memorized_tuning.jsonl"]))
    assert control[2] != original[2]  # negative control: the rule reads the tuning split


def test_quick_comparison_writes_tables_plot_and_consistent_verdicts(tmp_path, monkeypatch, shared_testbed_cache):
    from unmemorize.testbed.compare import CompareConfig, run_comparison

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    out = tmp_path / "compare"
    run_comparison(CompareConfig(quick=True, seeds="0", out=str(out)))
    for name in ("report.md", "results.json", "pareto.png", "seed-0/results.json"):
        assert (out / name).stat().st_size > 500, name
    saved = strict_loads((out / "results.json").read_text())
    seed = strict_loads((out / "seed-0" / "results.json").read_text())
    assert saved["provenance"]["commit"] == seed["provenance"]["commit"] and len(saved["provenance"]["commit"]) == 40
    assert saved["provenance"]["versions"]["unmemorize"] and saved["provenance"]["machine"]["logical_cpus"] >= 1
    budget = 1 + seed["config"]["ppl_budget"]
    for method in ("kfac", "svd", "bsn"):
        chosen, met = seed["chosen"][method], seed["rule_met"][method]
        allowed = [c for c in seed["candidates"][method] if c["perplexity"] <= budget * seed["baseline_sweep_perplexity"]]
        assert met == bool(allowed)
        if met:  # the rule: lowest tuning strict within the budget
            assert chosen["memorized_tuning"]["strict"] == min(c["memorized_tuning"]["strict"] for c in allowed)
    bsn = seed["candidates"]["bsn"]
    assert {(c["projections"], c["ratio"], c["alpha"], c["epochs"], c["lr"]) for c in bsn} == {
        (p, r, 0.5, e, 1.0) for p in ("gate+up+down", "up+down") for r in (0.01, 0.05) for e in (1, 2)}
    methods = seed["methods"]
    for name in ("baseline", "kfac", "svd", "bsn"):
        checks = methods[name]["checks"]
        assert set(checks) == {"stress", "ndcg", "sample", "quantization", "bf16", "relearn"}
        assert set(checks["relearn"]) == {"clean@lr=0.001", "tuning_items@lr=0.001", "control_items@lr=0.001"}
        assert checks["relearn"]["clean@lr=0.001"]["steps"] == [2] and checks["relearn"]["tuning_items@lr=0.001"]["steps"] == [2, 5]
        # two-sided: the relearned items are measured beside the held-out ones
        assert set(checks["relearn"]["tuning_items@lr=0.001"]["sets"]) == {"memorized_tuning", "memorized_validation", "quotes",
                                                                          "control_sequences", "control_quotes"}
        assert set(checks["quantization"]["by_bits"]) == {"int4", "int8"}
    for name in ("kfac", "svd", "bsn"):  # each edit's size, recomputable: BSN zeroes exactly its ratio of each masked matrix
        size = methods[name]["edit_size"]
        assert size["relative_frobenius_min"] <= size["relative_frobenius_mean"] <= size["relative_frobenius_max"]
    bsn_ratio = seed["chosen"]["bsn"]["ratio"]
    masked = [m for m in methods["bsn"]["edit_size"]["per_matrix"].values() if m["entries_changed"] > 0]
    assert masked and all(abs(m["entries_changed"] - bsn_ratio) < 0.01 for m in masked)
    assert set(saved["by_budget"]) == {"0.02", "0.1", "0.25"}
    for budget, row in seed["by_budget"].items():  # the same rule at each budget, recomputed from the candidates
        for method in ("kfac", "svd", "bsn"):
            allowed = [c for c in seed["candidates"][method] if c["perplexity"] <= (1 + float(budget)) * seed["baseline_sweep_perplexity"]]
            if allowed:
                assert row[method]["memorized_tuning"] == min(c["memorized_tuning"]["strict"] for c in allowed)
    assert methods["baseline"]["checks"]["ndcg"]["ndcg"] == pytest.approx(1.0)  # the baseline against itself
    # the summary's cells are the per-seed values; one seed has no interval over seeds (never a pooled one)
    cell = saved["summary"]["kfac"]["cells"]["quotes strict"]
    quotes = methods["kfac"]["quotes"]
    assert cell["mean"] == pytest.approx(quotes["strict"]) and cell["per_seed"] == [pytest.approx(quotes["strict"])]
    assert cell["low"] is None and "pooled" not in cell and cell["n_per_seed"] == [quotes["n"]]
    # survival: restored = (after - edited) / (baseline - edited), recomputed from the per-seed file
    from unmemorize.testbed.compare_report import MIN_REMOVED

    base, n = methods["baseline"]["memorized_validation"]["strict"], methods["baseline"]["memorized_validation"]["n"]
    for method in ("kfac", "svd", "bsn"):
        edited = methods[method]["memorized_validation"]["strict"]
        after = methods[method]["checks"]["relearn"]["clean@lr=0.001"]["sets"]["memorized_validation"][-1]["strict"]
        row = saved["survival"][method]["memorized_validation clean@lr=0.001"]
        assert row["removed_items"]["0"] == round((base - edited) * n)
        if round((base - edited) * n) < MIN_REMOVED:
            assert row["mean"] is None and row["verdict"] == "undefined"
        else:
            assert row["mean"] == pytest.approx((after - edited) / (base - edited))
    claim = saved["paper_claim"]["per_seed"]["0"]
    assert claim["quotes_half_holds"] == (methods["kfac"]["quotes"]["strict"] < methods["bsn"]["quotes"]["strict"])
    over = saved["paper_claim"]["over_seeds"]  # one seed: no test over seeds, so neither half can be shown
    assert over["quotes"]["n"] == 1 and over["quotes"]["p_value"] is None and not over["quotes_half_holds"]
    assert "paired t test over seeds: quotes half (K-FAC minus BSN) not shown" in (out / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "Table 1 analogue" in report and "Does the removal survive" in report and "Wall time" in report
    assert all(methods[m]["setting"] in report for m in ("kfac", "svd", "bsn"))
    # --reuse: a seed run with the same settings is read back, not run again; other settings run again
    again = run_comparison(CompareConfig(quick=True, seeds="0", out=str(tmp_path / "again"), reuse=str(out)))
    assert again["summary"] == saved["summary"]
    assert strict_loads((tmp_path / "again" / "seed-0" / "results.json").read_text()) == seed
    from unmemorize.testbed.compare import reusable

    assert reusable(CompareConfig(quick=True, seeds="0", reuse=str(out), **{**_quick_settings(), "samples": 5}), 0) is None
    assert reusable(CompareConfig(quick=True, seeds="0", reuse=str(out), **_quick_settings()), 0) == out / "seed-0" / "results.json"


def _quick_settings() -> dict:
    from unmemorize.testbed.compare import QUICK_GRIDS

    return dict(QUICK_GRIDS)


@pytest.mark.parametrize("option,value", [("--energies", "1.5"), ("--bsn-epochs", "0"), ("--bsn-ratios", "x"), ("--relearn-lrs", "-1"),
                                          ("--seeds", "0,0"), ("--samples", "0")])
def test_bad_comparison_settings_exit_2_before_any_work(tmp_path, capsys, option, value):
    from unmemorize.cli import main

    out = tmp_path / "never"
    assert main(["compare", "--quick", "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unmemorize: error:")
    assert not out.exists()


def _synthetic(per_seed_values: dict[int, dict[str, dict[str, float]]]) -> dict[int, dict]:
    """Minimal per-seed results: per method, strict recitation of validation and quotes (n 50 / 100)
    before any attack and after the one relearning run (k = 10) and the bf16 round trip."""
    n = {"memorized_validation": 50, "quotes": 100}
    per_seed = {}
    for seed, methods in per_seed_values.items():
        result = {}
        for method, values in methods.items():
            sets = {name: {"strict": values[name], "n": n[name]} for name in n}
            after = {name: [{"strict": values[f"after {name}"], "n": n[name]}] for name in n}
            result[method] = {**sets, "checks": {"relearn": {"clean@lr=0.001": {"steps": [10], "sets": after}},
                                                 "bf16": {"sets": sets}}}
        per_seed[seed] = {"methods": result}
    return per_seed


def test_survival_ratio_min_removed_and_the_t_interval_over_seeds():
    from unmemorize.evaluate.intervals import wilson
    from unmemorize.testbed.compare_report import MIN_REMOVED, _count, _percent_cell, survival

    base = {"memorized_validation": 1.0, "quotes": 1.0, "after memorized_validation": 1.0, "after quotes": 1.0}
    values = {
        0: {"baseline": base, "kfac": {"memorized_validation": 0.0, "quotes": 0.10, "after memorized_validation": 0.5, "after quotes": 0.10},
            "svd": {"memorized_validation": 0.98, "quotes": 0.5, "after memorized_validation": 1.0, "after quotes": 0.95},
            "bsn": {"memorized_validation": 0.2, "quotes": 1.0, "after memorized_validation": 0.2, "after quotes": 1.0}},
        1: {"baseline": base, "kfac": {"memorized_validation": 0.2, "quotes": 0.0, "after memorized_validation": 0.2, "after quotes": 0.0},
            "svd": {"memorized_validation": 1.0, "quotes": 0.0, "after memorized_validation": 1.0, "after quotes": 0.9},
            "bsn": {"memorized_validation": 0.0, "quotes": 1.0, "after memorized_validation": 1.0, "after quotes": 1.0}},
    }
    out = survival(_synthetic(values))
    kfac = out["kfac"]["memorized_validation clean@lr=0.001"]
    assert kfac["per_seed"] == {"0": 0.5, "1": 0.0} and kfac["mean"] == 0.25 and kfac["verdict"] == "partly"
    svd = out["svd"]["memorized_validation clean@lr=0.001"]  # removed 1 item (< MIN_REMOVED) at seed 0, none at seed 1
    assert MIN_REMOVED > 1 and svd["per_seed"] == {"0": None, "1": None} and svd["verdict"] == "undefined"
    assert out["svd"]["quotes clean@lr=0.001"]["per_seed"] == pytest.approx({"0": 0.9, "1": 0.9})
    assert out["svd"]["quotes clean@lr=0.001"]["verdict"] == "restored"
    assert out["bsn"]["memorized_validation clean@lr=0.001"]["per_seed"] == {"0": 0.0, "1": 1.0}
    assert out["kfac"]["memorized_validation bf16"]["mean"] == 0.0  # bf16 here leaves recitation where the edit put it
    cell = _percent_cell([_count(0.0, 50), _count(0.2, 50), _count(0.1, 100)])  # three seeds: 0, 10 and 10 items
    from scipy import stats as scipy_stats

    low, high = scipy_stats.t.interval(0.95, 2, loc=0.1, scale=scipy_stats.sem([0.0, 0.2, 0.1]))
    assert low < 0 and (cell["low"], cell["high"]) == pytest.approx((0.0, high)) and cell["n_per_seed"] == [50, 50, 100]  # clipped
    assert cell["mean"] == pytest.approx(0.1) and cell["std"] == pytest.approx(0.1) and "pooled" not in cell
    pooled = wilson(20, 200)  # what the seeds' items pooled would claim: far narrower than the seeds allow
    assert high - low > 3 * (pooled.high - pooled.low)


def test_matched_points_pick_by_sweep_perplexity_only_and_skip_non_finite():
    from unmemorize.testbed.compare_report import matched_points

    def candidate(method, ppl, strict, key):
        score = {"strict": strict, "n": 10}
        return {"method": method, "perplexity": ppl, "memorized_tuning": score, "key": key, "layers": "all", "projections": "p",
                "rho": 0.9, "energy": 0.9, "reported": {"memorized_validation": score, "quotes": score}}

    result = {"baseline_sweep_perplexity": 10.0,
              "chosen": {"kfac": candidate("kfac", 10.5, 0.0, "k")},
              "candidates": {"kfac": [candidate("kfac", 10.5, 0.0, "k")],
                             "svd": [candidate("svd", None, 0.0, "s0"), candidate("svd", 10.4, 0.9, "s1"), candidate("svd", 20.0, 0.0, "s2")],
                             "bsn": [candidate("bsn", 11.5, 0.0, "b0"), candidate("bsn", 10.6, 1.0, "b1")]}}
    matched = matched_points({3: result})
    assert matched["svd"]["3"]["sweep_perplexity"] == 10.4  # nearest in |log ratio|; the null (non-finite) one is skipped
    assert matched["bsn"]["3"]["setting"] == "b1"  # the closest perplexity, though another has lower recitation
    assert matched["kfac"]["3"]["sweep_perplexity_ratio"] == pytest.approx(1.05)


@pytest.mark.parametrize("content, why", [("{not json", "not strict JSON"), ("[1, 2]", "needs 'config' and 'methods' objects"),
                                          ('{"config": "x", "methods": {}}', "needs 'config' and 'methods' objects"),
                                          ('{"config": {}}', "needs 'config' and 'methods' objects"),
                                          ('{"config": {}, "methods": "oops"}', "needs 'config' and 'methods' objects"),
                                          ('{"config": {}, "methods": {"baseline": {"quotes": 3}}}', "lack the baseline's measured sets")])
def test_a_reused_results_file_that_is_not_one_is_named_not_a_traceback(tmp_path, content, why):
    import re

    from unmemorize.errors import UnmemorizeError
    from unmemorize.testbed.compare import CompareConfig, reusable

    (tmp_path / "earlier" / "seed-0").mkdir(parents=True)
    (tmp_path / "earlier" / "seed-0" / "results.json").write_text(content)
    with pytest.raises(UnmemorizeError, match=f"--reuse: .*seed-0/results.json is not the results.json of a seed .*{re.escape(why)}"):
        reusable(CompareConfig(quick=True, seeds="0", reuse=str(tmp_path / "earlier")), 0)


def test_pareto_front_is_the_brute_force_set_of_undominated_candidates():
    """pareto_front against the definition, on random candidates with ties and a non-finite perplexity: a point is on
    the front iff no candidate is at least as good on both axes and better on one (equal points count once)."""
    import random

    from unmemorize.testbed.compare_report import pareto_front

    rng = random.Random(3)
    for trial in range(30):
        candidates = [{"method": "bsn", "key": f"c{i}", "perplexity": rng.choice([10.0, 10.5, 11.0, 12.0, float("nan")]),
                       "memorized_tuning": {"strict": 0.0},
                       "reported": {"memorized_validation": {"strict": rng.choice([0.0, 0.2, 0.5, 1.0])}, "quotes": {"strict": 0.1}}}
                      for i in range(rng.randint(1, 12))]
        finite = [(c["perplexity"], c["reported"]["memorized_validation"]["strict"]) for c in candidates if c["perplexity"] == c["perplexity"]]
        expected = {(p, v) for p, v in finite
                    if not any(q <= p and w <= v and (q < p or w < v) for q, w in finite)}
        front = pareto_front(candidates, 10.0)
        got = [(round(f["perplexity_ratio"] * 10.0, 9), f["memorized_validation"]) for f in front]
        assert len(got) == len(set(got)) and set(got) == expected, trial
