"""``unmemorize compare``: K-FAC vs SVD vs BalancedSubnet on the quick testbed (structure, not the science)."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from unmemorize.jsonio import strict_loads


def _quick_setup(tmp_path, monkeypatch):
    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.evaluate.attacks import item_sequences
    from unmemorize.models import load_model
    from unmemorize.targets import resolve_targets
    from unmemorize.testbed import load_or_train, quick_configs

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
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


def test_every_method_is_chosen_without_reading_the_validation_split_or_the_quotes(tmp_path, monkeypatch):
    """Scrambling the validation split and the quotes leaves every method's choice (K-FAC, SVD, BSN)
    and every rule score identical, while the Pareto plot's ``reported`` scores move; scrambling the
    tuning split (the negative control) moves the rule's scores."""
    import torch

    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.evaluate import perplexity
    from unmemorize.testbed.compare import CompareConfig, QUICK_GRIDS, choose_all, sweep_all
    from unmemorize.testbed.suite import TestbedSuite

    folder, model, tokenizer, factors, bases, item_sequences = _quick_setup(tmp_path, monkeypatch)
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

    original = run(folder)
    assert len(original[2]["bsn"]) == 2 and len(original[2]["svd"]) == len(original[2]["kfac"])  # equal K-FAC and SVD grids
    picked, rule_met, rule, reported = run(_scrambled(folder, tmp_path, ["memorized_validation.jsonl", "quotes.jsonl"]))
    assert (picked, rule_met, rule) == original[:3]
    assert reported != original[3]  # the plot's scores do read the scrambled files
    control = run(_scrambled(folder, tmp_path, ["memorized_tuning.jsonl"]))
    assert control[2] != original[2]  # negative control: the rule reads the tuning split


def test_quick_comparison_writes_tables_plot_and_consistent_verdicts(tmp_path, monkeypatch):
    from unmemorize.evaluate.intervals import wilson
    from unmemorize.testbed.compare import CompareConfig, run_comparison

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "compare"
    run_comparison(CompareConfig(quick=True, seeds="0", out=str(out)))
    for name in ("report.md", "results.json", "pareto.png", "seed-0/results.json"):
        assert (out / name).stat().st_size > 500, name
    saved = strict_loads((out / "results.json").read_text())
    seed = strict_loads((out / "seed-0" / "results.json").read_text())
    budget = 1 + seed["config"]["ppl_budget"]
    for method in ("kfac", "svd", "bsn"):
        chosen, met = seed["chosen"][method], seed["rule_met"][method]
        allowed = [c for c in seed["candidates"][method] if c["perplexity"] <= budget * seed["baseline_sweep_perplexity"]]
        assert met == bool(allowed)
        if met:  # the rule: lowest tuning strict within the budget
            assert chosen["memorized_tuning"]["strict"] == min(c["memorized_tuning"]["strict"] for c in allowed)
    bsn = seed["candidates"]["bsn"]
    assert {(c["ratio"], c["alpha"], c["epochs"], c["lr"]) for c in bsn} == {(0.01, 0.5, 1, 1.0), (0.05, 0.5, 1, 1.0)}
    methods = seed["methods"]
    for name in ("baseline", "kfac", "svd", "bsn"):
        checks = methods[name]["checks"]
        assert set(checks) == {"stress", "ndcg", "sample", "bf16", "relearn"}
        assert set(checks["relearn"]) == {"clean@lr=0.001", "tuning_items@lr=0.001"}
        assert checks["relearn"]["clean@lr=0.001"]["steps"] == [2, 5]
    assert methods["baseline"]["checks"]["ndcg"]["ndcg"] == pytest.approx(1.0)  # the baseline against itself
    # the summary's cells are the per-seed values; intervals are Wilson's on the pooled counts
    cell = saved["summary"]["kfac"]["cells"]["quotes strict"]
    quotes = methods["kfac"]["quotes"]
    assert cell["mean"] == pytest.approx(quotes["strict"])
    expected = wilson(round(quotes["strict"] * quotes["n"]), quotes["n"])
    assert (cell["pooled"]["low"], cell["pooled"]["high"]) == pytest.approx((expected.low, expected.high))
    # survival: restored = (after - edited) / (baseline - edited), recomputed from the per-seed file
    base = methods["baseline"]["memorized_validation"]["strict"]
    for method in ("kfac", "svd", "bsn"):
        edited = methods[method]["memorized_validation"]["strict"]
        after = methods[method]["checks"]["relearn"]["clean@lr=0.001"]["sets"]["memorized_validation"][-1]["strict"]
        row = saved["survival"][method]["clean@lr=0.001"]
        if base - edited <= 0:
            assert row["mean"] is None and row["verdict"] == "undefined"
        else:
            assert row["mean"] == pytest.approx((after - edited) / (base - edited))
    claim = saved["paper_claim"]["per_seed"]["0"]
    assert claim["quotes_half_holds"] == (methods["kfac"]["quotes"]["strict"] < methods["bsn"]["quotes"]["strict"])
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
