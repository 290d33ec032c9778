"""The testbed world is deterministic and means what it says; the quick demo writes every artefact."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from unmemorize.testbed.world import (
    WorldConfig, build_world, evaluation_tasks, factor_documents, heldout_documents, training_documents,
)

SMALL = WorldConfig(memorized_sequences=10, quotes=6, controls=4, people=12, clean_documents=200, openbook_examples=50,
                    arithmetic_examples=300, boolean_examples=200, rule_examples=50, eval_examples=30, heldout_documents=20,
                    factor_documents=50, repeats_per_epoch=7)


def test_world_is_deterministic_from_its_seed():
    first, again = build_world(SMALL), build_world(SMALL)
    assert [i.text for i in first.sequences + first.quotes] == [i.text for i in again.sequences + again.quotes]
    assert training_documents(first, 1) == training_documents(again, 1)
    assert evaluation_tasks(first) == evaluation_tasks(again)
    other = build_world(WorldConfig(**{**SMALL.__dict__, "seed": 1}))
    assert [i.text for i in other.sequences] != [i.text for i in first.sequences]
    assert training_documents(first, 0) != training_documents(first, 1)  # fresh skill examples every epoch


def test_memorized_items_repeat_and_controls_never_appear():
    world = build_world(SMALL)
    counts = Counter(training_documents(world, 0))
    for item in world.memorized("tuning") + world.memorized("validation") + world.memorized("quotes"):
        assert counts[item.text] == SMALL.repeats_per_epoch
    controls = [i.text for i in world.sequences + world.quotes if i.split == "control"]
    corpus = "\n".join(training_documents(world, 0) + training_documents(world, 1) + factor_documents(world) + heldout_documents(world))
    assert controls and not any(text in corpus for text in controls)
    assert len(world.memorized("tuning")) == len(world.memorized("validation")) == SMALL.memorized_sequences // 2
    clean = "\n".join(factor_documents(world))
    assert not any(i.text in clean for i in world.sequences + world.quotes)  # factors never see memorized items


def test_evaluation_items_are_held_out_and_answers_are_right():
    world = build_world(SMALL)
    rows = evaluation_tasks(world)
    training = set(training_documents(world, 0)) | set(training_documents(world, 1))
    for row in rows:
        prompt, answer = row["prompt"], row["answer"]
        if row["task"] == "arithmetic":
            a, op, b = re.fullmatch(r"(\d+) ([+-]) (\d+) =", prompt).groups()
            assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            assert f"{prompt} {answer}" not in training
        elif row["task"] == "boolean":
            expression = prompt[: -len(" is")].replace("true", "True").replace("false", "False")
            assert answer == str(eval(expression)).lower()  # noqa: S307 - Python's own evaluator is the oracle
            assert f"{prompt} {answer} ." not in training
        elif row["task"] == "openbook":
            asked = prompt.split("question : ")[1].split(" lives in")[0]
            assert f"{asked} lives in {answer} ." in prompt
        elif row["task"] == "rules":
            rules = dict(r[len("if "):].split(" then ") for r in prompt.split("rules : ")[1].split(" . so")[0].split(" . "))
            start = prompt.split("so : if ")[1].split(" then")[0]
            assert rules[start] == answer and len(rules) == 4
        elif row["task"] == "facts":
            assert any(answer in doc and prompt.split(" ")[4] in doc for doc in training)
    assert {r["category"] for r in rows} == {"closed_book_qa", "open_book_qa", "math", "logic"}


def test_quick_demo_writes_every_artefact(tmp_path, monkeypatch):
    """The whole pipeline on the tiny world: structure, not the science."""
    from unmemorize.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    results = run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo")))
    for name in ("report.md", "results.json", "retention.png", "sweep.png", "spectrum.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 500, name
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(saved["methods"]) >= {"baseline", "kfac", "svd", "random"}
    label_free, chosen = saved["label_free"], saved["label_free"]["chosen"]
    assert label_free["candidates"]
    assert chosen is None or chosen["perplexity_ratio"] <= label_free["budget"]  # never above its budget
    for method in saved["methods"].values():
        for family in ("memorized_validation", "quotes"):
            assert set(method[family]) >= {"strict", "loose", "levenshtein"}
        assert method["perplexity"] > 1
        assert all({"category", "accuracy"} <= set(task) for task in method["tasks"].values())
    assert all("retention" in task for task in saved["methods"]["kfac"]["tasks"].values())
    baseline = saved["methods"]["baseline"]
    assert baseline["control_sequences"]["strict"] <= 0.1 and baseline["control_quotes"]["strict"] <= 0.1
    assert saved["config"]["selection_rule"] and saved["chosen"]["plan"] and saved["wall_seconds"]
    assert len(saved["chosen"]["module_stats"]) == len(saved["chosen"]["plan"])  # stats for every edited module
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "Table 1" in report and "Figure 3" in report and results["methods"]["kfac"]["setting"] in report
    analysis = saved["analysis"]  # Figure 2 / 4 analysis of every MLP module, all three bases
    assert set(analysis["summary"]) == {"memorized", "quotes", "control", "memorized/control"}
    assert all(set(per_basis) == {"whitened", "pairs", "svd"} for per_basis in analysis["summary"].values())
    assert set(analysis["memorized_ratios"]) >= set(saved["chosen"]["plan"])  # every MLP module, edited or not
    assert all(len(ratios) == 4 for per_basis in analysis["memorized_ratios"].values() for ratios in per_basis.values())
    assert analysis["correlation"]["whitened"]["all"]["n"] >= 2  # the quick world's tasks are not learned: memorized sets only
    for name in ("analysis.md", "analysis.json", "bands_memorized.png", "bands_memorized_vs_control.png"):
        assert (tmp_path / "demo" / "analysis" / name).stat().st_size > 500, name
    assert "Figures 2 and 4" in report
    # the cached testbed is reused: a second run does not train again
    again = run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo2")))
    assert again["wall_seconds"]["testbed (train or load)"] < 2


def test_testbed_cache_key_changes_with_any_setting():
    from unmemorize.testbed import TrainConfig, cache_key

    base = cache_key(SMALL, TrainConfig())
    assert base == cache_key(SMALL, TrainConfig())
    assert base != cache_key(SMALL, TrainConfig(weight_decay=0.0))
    assert base != cache_key(WorldConfig(**{**SMALL.__dict__, "repeats_per_epoch": 8}), TrainConfig())


@pytest.mark.parametrize("mode", ["sequence", "quote"])
def test_memorization_rows_are_the_tokenized_item(mode):
    from unmemorize.testbed.train import _memorization_rows, train_tokenizer

    world = build_world(SMALL)
    tokenizer = train_tokenizer(training_documents(world, 0), 300)
    items = world.memorized("tuning") if mode == "sequence" else world.memorized("quotes")
    for row, item in zip(_memorization_rows(items, tokenizer, mode, 6), items):
        ids = [tokenizer.eos_token_id] + tokenizer(item.text, add_special_tokens=False)["input_ids"]
        assert row["prefix_ids"] + row["suffix_ids"] == ids[: len(row["prefix_ids"]) + len(row["suffix_ids"])]
        assert len(row["suffix_ids"]) == (8 if mode == "quote" else min(16, len(ids) - 7))


def test_label_free_search_on_the_testbed_never_exceeds_its_budget(tmp_path, monkeypatch):
    """For several budgets: the chosen plan, re-applied from scratch and scored by an independent
    perplexity call, stays within budget; the budget binds (some candidates exceed it); and no
    fitting candidate removes more pairs."""
    import torch

    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.edit import apply_edit
    from unmemorize.edit.search import search_plan
    from unmemorize.evaluate import perplexity
    from unmemorize.models import load_model
    from unmemorize.targets import preset_modules
    from unmemorize.testbed import load_or_train, quick_configs

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    folder = load_or_train(*quick_configs(0), progress=False)
    model, tokenizer = load_model(str(folder / "model"))
    factors = collect_from_files(model, tokenizer, str(folder / "data" / "factors.txt"), preset_modules(model),
                                 CollectConfig(seq_len=64, max_tokens=3_000, batch_size=8, progress=False))
    bases = decompose_factors(factors)
    windows = list(iter_windows(list_data_files(folder / "data" / "heldout.txt"), tokenizer, 64, 3_000))
    baseline = perplexity(model, windows).perplexity
    for budget in (1.02, 1.05, 1.10):
        search = search_plan(model, factors, bases, windows, budget, rhos=(0.6, 0.8, 0.9, 0.95, 0.99))
        assert any(c["perplexity_ratio"] > budget for c in search.candidates), "the budget must bind for the test to mean anything"
        assert search.plan is not None
        edit = apply_edit(model, search.plan, factors)
        try:
            with torch.no_grad():
                assert perplexity(model, windows).perplexity <= budget * baseline * (1 + 1e-9)
        finally:
            edit.restore()
        fitting = [c for c in search.candidates if c["perplexity"] <= budget * baseline]
        assert search.chosen["removed_pairs"] == max(c["removed_pairs"] for c in fitting)
