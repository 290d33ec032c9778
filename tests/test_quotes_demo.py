"""``unmemorize demo --world quotes`` end to end on a tiny user corpus (--corpus / --quotes): the model and its twin
retrained without the quotes, the choices, membership inference against the retrained model, the reports; and the
choices never read the reported half, the controls or the reported held-out text."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from conftest import shuffle_jsonl, shuffle_words
from unmemorize.testbed.quotes.demo import QuotesDemoConfig, QuotesSuite, run_quotes_demo, tune_quotes


@pytest.fixture(scope="module")
def quick_run(user_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("quotes-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("UNMEMORIZE_CACHE", str(cache))
    out = tmp_path_factory.mktemp("runs") / "demo-quotes"
    config = QuotesDemoConfig(out=str(out), quick=True, seeds="0,1", corpus=str(user_corpus / "prose"),
                              quotes=str(user_corpus / "quotes.jsonl"), rhos="0.9,0.99")
    results = run_quotes_demo(config)
    yield out, results, cache
    patch.undo()


def test_quick_demo_writes_reports_for_each_seed_and_over_seeds(quick_run):
    out, results, _ = quick_run
    assert results["summary"]["seeds"] == [0, 1] and results["summary"]["counts"] == [1, 4, 16]
    for seed in (0, 1):
        per_seed = json.loads((out / f"seed-{seed}" / "results.json").read_text())
        methods = per_seed["methods"]
        assert set(methods) == {"baseline", "retrained", "kfac", "svd", "bsn"}
        for name, entry in methods.items():
            reported = entry["recitation"]["reported"]
            assert [reported[f"count={c}"]["n"] for c in (1, 4, 16)] == [3, 3, 3] and reported["controls"]["n"] == 12
            for table in entry["membership_auc"].values():
                assert all(0 <= auc <= 1 for auc in table.values())
        # PrivLeak is measured from the retrained model: exactly 0 for it, by definition
        assert all(v == 0 for group in methods["retrained"]["privacy_leak"].values() for v in group.values())
        model = per_seed["testbeds"]["model"]
        assert model["stream_scan"]["leaks"] == [] and per_seed["testbeds"]["retrained"]["variant"] == "retrained without the quotes"
        assert model["command"].startswith("unmemorize testbed train --world quotes --seed")
        assert per_seed["provenance"]["command"]
        for figure in ("memorization_vs_duplication.png", "mia_auc_vs_duplication.png"):
            assert (out / f"seed-{seed}" / figure).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "count=16" in report and "retrained without quotes" in report
    tests = report.split("Paired t tests")[1].split("## Membership")[0]
    assert tests.count("| count=") == 3 and "no test (fewer than 2 seeds)" not in tests  # two seeds: every cell tested or constant
    assert "## Attacks" in report and "int4 quantization" in report and "retrained without quotes | relearn 10 steps" in report
    attacks = json.loads((out / "seed-0" / "results.json").read_text())["attacks"]
    assert set(attacks) == {"baseline", "kfac", "svd", "bsn", "retrained"}
    assert attacks["baseline"]["relearn"]["tuning_quotes"]["steps"] == [2, 10]  # the quick run's step counts


def test_recorded_sha256_is_the_shipped_weights(quick_run):
    """testbed.json's sha256 of every model file is the file's (what a user checks a cached or copied model against)."""
    from unmemorize.testbed.shipped import sha256_of

    _, _, cache = quick_run
    folders = sorted((cache / "quotes").iterdir())
    assert len(folders) == 4  # two seeds x (with quotes, retrained)
    for folder in folders:
        recorded = json.loads((folder / "testbed.json").read_text())["sha256"]
        assert recorded and all(sha256_of(folder / "model" / name) == digest for name, digest in recorded.items())
        assert "model.safetensors" in recorded


def test_choices_never_read_the_reported_half(quick_run, tmp_path, monkeypatch):
    """Scramble the reported quotes, the controls and heldout.txt: every choice and every sweep score is identical.
    Negative controls: scrambling heldout_tuning.txt or the tuning quotes (what the sweeps read) moves the scores."""
    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.models import load_model
    from unmemorize.targets import preset_modules

    _, _, cache = quick_run
    monkeypatch.setenv("UNMEMORIZE_CACHE", str(cache))
    folder = next(f for f in sorted((cache / "quotes").iterdir()) if json.loads((f / "testbed.json").read_text())["with_quotes"])
    model, tokenizer = load_model(str(folder / "model"))
    factors = collect_from_files(model, tokenizer, str(folder / "data" / "factors.txt"), preset_modules(model),
                                 CollectConfig(seq_len=64, max_tokens=2_000, batch_size=8, progress=False))
    bases = decompose_factors(factors)
    config = QuotesDemoConfig(quick=True, rhos="0.9,0.99")

    def choices(data_folder):
        torch.manual_seed(0)
        suite = QuotesSuite(data_folder, tokenizer, quick=True)
        clean = list(iter_windows(list_data_files(data_folder / "data" / "factors.txt"), tokenizer, 64, 1_000))  # as the demo
        result = tune_quotes(model, suite, factors, bases, config, clean, seed=0)
        return {"kfac": result["kfac"]["plan"], "svd": result["svd"]["energy"], "bsn": result["bsn"]["key"],
                "scores": [(c["memorized_tuning"]["strict"], c["memorized_tuning"]["levenshtein"], c["perplexity"],
                            c.get("final_forget_ce")) for c in result["candidates"]["kfac"] + result["candidates"]["bsn"]]}

    def scrambled(name: str, rows_of=None):
        copy = tmp_path / f"scrambled-{name}-{'-'.join(rows_of or ())}"
        shutil.copytree(folder, copy)
        rng = random.Random(1)
        path = copy / "data" / name
        if rows_of:
            shuffle_jsonl(path, rng, ("prefix_ids", "suffix_ids", "text_ids"), keep=lambda row: row["split"] in rows_of)
        else:
            shuffle_words(path, rng)
        return copy

    original = choices(folder)
    assert choices(scrambled("quotes.jsonl", rows_of=("reported", "control"))) == original
    assert choices(scrambled("heldout.txt")) == original
    assert choices(scrambled("heldout_tuning.txt"))["scores"] != original["scores"]  # negative controls: what the
    assert choices(scrambled("quotes.jsonl", rows_of=("tuning",)))["scores"] != original["scores"]  # sweeps read moves them
