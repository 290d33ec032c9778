"""The testbed world is deterministic and means what it says; the quick demo writes every artefact."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from conftest import shuffle_jsonl, shuffle_words
from unmemorize.jsonio import strict_loads
from unmemorize.testbed.world import (
    FACT_QUESTIONS, FACTOR_DATA, WorldConfig, build_world, evaluation_tasks, factor_documents, heldout_documents, heldout_split,
    training_documents,
)

SMALL = WorldConfig(memorized_sequences=10, quotes=6, controls=4, people=12, clean_documents=200, openbook_examples=50,
                    arithmetic_examples=300, boolean_examples=200, eval_examples=30, heldout_documents=20,
                    factor_documents=50, repeats_per_epoch=7, copy_documents=40)


def test_copy_documents_repeat_their_words_and_are_in_training_and_mixture_factor_data():
    world = build_world(SMALL)
    for kind, documents in (("training", training_documents(world, 0)), ("mixture factors", factor_documents(world, "mixture"))):
        copies = [d for d in documents if d.startswith("copy : ")]
        assert copies, f"no copy documents in the {kind} data"
        for document in copies:
            first, second = document[len("copy : "):-len(" .")].split(" | ")
            assert first == second and 3 <= len(first.split()) <= 10
    assert len([d for d in training_documents(world, 1) if d.startswith("copy : ")]) == SMALL.copy_documents
    assert not any(d.startswith("copy : ") for d in factor_documents(world, "general"))


def test_a_share_of_training_arithmetic_is_one_digit_and_none_is_evaluated():
    world = build_world(SMALL)
    problems = [re.fullmatch(r"(\d+) ([+-]) (\d+) reversed = (\d+)", d) for d in training_documents(world, 0)]
    problems = [m.groups() for m in problems if m]
    assert len(problems) == SMALL.arithmetic_examples
    for a, op, b, answer in problems:  # every answer right, in reversed digit order
        assert int(answer[::-1]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    one_digit = sum(len(a) == 1 and len(b) == 1 for a, _, b, _ in problems)
    expected = SMALL.one_digit_fraction * len(problems)  # binomial: 4 standard deviations either side
    assert abs(one_digit - expected) <= 4 * (expected * (1 - SMALL.one_digit_fraction)) ** 0.5 and one_digit > 0
    for row in evaluation_tasks(world):  # the evaluation asks held-out two-digit problems only
        if row["task"] == "arithmetic":
            a, b = re.fullmatch(r"(\d+) [+-] (\d+) reversed =", row["prompt"]).groups()
            assert len(a) == 2 and len(b) == 2


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
    for kind in FACTOR_DATA:
        clean = "\n".join(factor_documents(world, kind))
        assert not any(i.text in clean for i in world.sequences + world.quotes)  # factors never see memorized items


def test_evaluation_items_are_held_out_and_answers_are_right():
    world = build_world(SMALL)
    rows = evaluation_tasks(world)
    training = set(training_documents(world, 0)) | set(training_documents(world, 1))
    for row in rows:
        prompt, answer = row["prompt"], row["answer"]
        if row["task"] == "arithmetic":
            a, op, b = re.fullmatch(r"(\d+) ([+-]) (\d+) reversed =", prompt).groups()
            assert int(answer[::-1]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            assert f"{prompt} {answer}" not in training
        elif row["task"] == "boolean":
            expression = prompt[: -len(" is")].replace("true", "True").replace("false", "False")
            assert answer == str(eval(expression)).lower()  # noqa: S307 - Python's own evaluator is the oracle
            assert f"{prompt} {answer} ." not in training
        elif row["task"] == "openbook":
            asked = prompt.split("question : ")[1].split(" lives in")[0]
            assert f"{asked} lives in {answer} ." in prompt
        elif row["task"] == "facts":
            person = next(p for p in world.people if f" {p['name']} " in prompt)
            attribute = world.asked_attribute[person["name"]]
            assert answer == person[attribute] and any(prompt == q.format(**person) for q in FACT_QUESTIONS[attribute])
            assert any(answer in doc and person["name"] in doc and "question" not in doc for doc in training)  # stated
        else:
            raise AssertionError(f"unknown task {row['task']}")
    assert {r["category"] for r in rows} == {"closed_book_qa", "open_book_qa", "math", "logic"}


def _evaluation_strings(world) -> list[str]:
    return [f"{row['prompt']} {row['answer']}" for row in evaluation_tasks(world)]


def _scan(documents: list[str], needles: list[str]) -> list[str]:
    """Needles that occur (as a substring) in any document: one joined text, one search per needle."""
    text = "\n".join(documents)
    return [needle for needle in needles if needle in text]


def test_no_evaluation_string_occurs_in_any_training_factor_or_heldout_document():
    """Issue 13 item 1 on the default world: every epoch the testbed trains on, both kinds of
    factor data and the held-out text are scanned for every task's prompt+answer string."""
    from unmemorize.testbed import TrainConfig

    world = build_world(WorldConfig())
    needles = _evaluation_strings(world)
    assert len(needles) == 700 and len({n.split(" answer :")[0] for n in needles if "answer :" in n}) == 100
    corpus = [doc for epoch in range(TrainConfig().epochs) for doc in training_documents(world, epoch)]
    corpus += [doc for kind in FACTOR_DATA for doc in factor_documents(world, kind)] + heldout_documents(world)
    assert _scan(corpus, needles) == []
    # every fact asked is stated in training, and its question templates are asked of other people
    text = "\n".join(corpus)
    for row in (r for r in evaluation_tasks(world) if r["task"] == "facts"):
        person = next(p for p in world.people if f" {p['name']} " in row["prompt"])
        template = next(q for q in FACT_QUESTIONS[world.asked_attribute[person["name"]]] if q.format(**person) == row["prompt"])
        assert any(template.format(**other) in text for other in world.people if other is not person)
        assert row["prompt"] not in text  # not even the question alone


def test_the_corpus_scan_finds_a_leaked_evaluation_string():
    """Negative control of the scan: world v3's facts (the evaluated question with its answer in
    training) are found, and so is a single leaked arithmetic row."""
    world = build_world(SMALL)
    needles = _evaluation_strings(world)
    person = world.people[0]
    attribute = world.asked_attribute[person["name"]]
    leaked = [q.format(**person) + f" {person[attribute]} ." for q in FACT_QUESTIONS[attribute]]
    arithmetic = next(r for r in evaluation_tasks(world) if r["task"] == "arithmetic")
    documents = training_documents(world, 0) + leaked + [f"{arithmetic['prompt']} {arithmetic['answer']}"]
    found = _scan(documents, needles)
    assert f"{arithmetic['prompt']} {arithmetic['answer']}" in found
    assert any(person["name"] in needle for needle in found) or person not in [p for p in world.people][: SMALL.eval_examples]


def test_factor_data_and_heldout_text_are_disjoint_from_evaluation_and_from_each_other():
    world = build_world(WorldConfig())
    needles = _evaluation_strings(world)
    memorized = [item.text for item in world.sequences + world.quotes]
    tuning, reported = heldout_split(world)
    assert tuning and reported and not set(tuning) & set(reported)  # perplexity slices: the sweep's and the reported
    training = {doc for epoch in range(2) for doc in training_documents(world, epoch)}
    assert not (set(tuning) | set(reported)) & training  # held-out documents are never training documents
    for kind in FACTOR_DATA:
        factors = factor_documents(world, kind)
        assert len(factors) == WorldConfig().factor_documents
        assert _scan(factors, needles + memorized) == []
        assert not set(factors) & (set(tuning) | set(reported))
    general = factor_documents(world, "general")
    assert not any(word in doc for doc in general for word in ("question", "passage", "reversed", "true", "said"))


def test_tokenizer_is_trained_on_training_text_only(tmp_path, monkeypatch):
    """A word that occurs only in the held-out text must not be a single token (the BPE merges never saw it)."""
    import unmemorize.testbed.train as train

    seen = []
    real = train.train_tokenizer
    monkeypatch.setattr(train, "train_tokenizer", lambda documents, size: seen.append(list(documents)) or real(documents, size))
    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    world_config, train_config = train.quick_configs(0)
    train.train_testbed(world_config, train_config, tmp_path / "tb", progress=False)
    world = build_world(world_config)
    assert seen == [training_documents(world, 0)]
    assert not set(heldout_documents(world)) & set(seen[0])


def _quick_testbed_with_factors(shared_testbed_cache, monkeypatch, factor_tokens: int):
    """The quick testbed (trained once per session in shared_testbed_cache), its model and tokenizer, mixture factors and their bases."""
    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, collect_from_files
    from unmemorize.models import load_model
    from unmemorize.targets import preset_modules
    from unmemorize.testbed import load_or_train, quick_configs

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    folder = load_or_train(*quick_configs(0), progress=False)
    model, tokenizer = load_model(str(folder / "model"))
    factors = collect_from_files(model, tokenizer, str(folder / "data" / "factors_mixture.txt"), preset_modules(model),
                                 CollectConfig(seq_len=64, max_tokens=factor_tokens, batch_size=8, progress=False))
    return folder, model, tokenizer, factors, decompose_factors(factors)


def _scramble_answer(row: dict, rng) -> None:
    if "answer" in row:
        row["answer"] = rng.choice(["paris", "7", "true", "nurse"])


def test_the_choices_never_read_the_validation_split(tmp_path, monkeypatch, shared_testbed_cache):
    """Scramble everything reported but never chosen on (validation sequences, the reported
    held-out text, the tasks, quotes and controls): every choice of the demo is identical. The
    negative control scrambles the tuning split, and the sweep's scores move."""
    import random
    import shutil

    import torch

    from unmemorize.testbed.demo import DemoConfig, tune
    from unmemorize.testbed.suite import TestbedSuite

    folder, model, tokenizer, factors, bases = _quick_testbed_with_factors(shared_testbed_cache, monkeypatch, 2_000)
    config = DemoConfig(quick=True, rhos="0.8,0.95,0.99")

    def choices(data_folder):
        torch.manual_seed(0)
        suite = TestbedSuite(data_folder, tokenizer, perplexity_tokens=2_000, sweep_perplexity_tokens=2_000)
        from unmemorize.evaluate import perplexity

        result = tune(model, suite, factors, bases, config, perplexity(model, suite.sweep_windows, 32).perplexity)
        return {"kfac": result["chosen"]["plan"], "rule_met": result["rule_met"], "svd": result["svd_point"]["energy"],
                "label_free": result["label_free"].plan,
                "scores": [(c["memorized_tuning"]["strict"], c["perplexity"]) for c in result["candidates"]]}

    def scrambled(names):
        copy = tmp_path / f"scrambled-{'-'.join(names)}"
        shutil.copytree(folder, copy)
        rng = random.Random(1)
        for name in names:
            path = copy / "data" / name
            if name.endswith(".jsonl"):
                shuffle_jsonl(path, rng, ("suffix_ids", "prefix_ids"), edit=_scramble_answer)
            else:
                shuffle_words(path, rng)
        return copy

    original = choices(folder)
    reported = ["memorized_validation.jsonl", "heldout.txt", "tasks.jsonl", "quotes.jsonl", "control_sequences.jsonl",
                "control_quotes.jsonl"]
    assert choices(scrambled(reported)) == original
    tuning = choices(scrambled(["memorized_tuning.jsonl", "heldout_tuning.txt"]))
    assert tuning["scores"] != original["scores"]  # the control: the choices do read the tuning files


def test_quick_demo_writes_every_artefact(tmp_path, monkeypatch, shared_testbed_cache):
    """The whole pipeline on the tiny world: structure, not the science."""
    from unmemorize.testbed.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    calls = []

    def comparison(config, folder):  # --baselines hands the comparison its settings (the comparison: test_compare.py)
        calls.append(config)
        folder.mkdir(parents=True)
        (folder / "report.md").write_text("comparison")
        return {"paper_claim": {"over_seeds": {"quotes_half_holds": False, "forget_half_holds": True}}, "survival": {}}

    monkeypatch.setattr("unmemorize.testbed.compare.compare_into", comparison)
    results = run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo"), baselines=True))
    assert [(c.quick, c.seeds, c.factor_data, c.rhos, c.ppl_budget) for c in calls] == [(True, "0", "mixture", DemoConfig.rhos, 0.10)]
    for name in ("report.md", "results.json", "retention.png", "sweep.png", "spectrum.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 500, name
    saved = strict_loads((tmp_path / "demo" / "results.json").read_text())  # strict JSON (NaN/Inf would fail)
    assert saved["rule_met"] in (True, False)
    assert ("selection rule was not met" in (tmp_path / "demo" / "report.md").read_text()) == (not saved["rule_met"])
    assert set(saved["methods"]) >= {"baseline", "kfac", "svd", "random"}
    made = saved["provenance"]  # what made the file: this checkout's commit, versions, machine, command
    import subprocess
    from pathlib import Path

    import torch

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", made["commit"]) and made["commit"] == head and isinstance(made["uncommitted_changes"], bool)
    assert made["versions"]["torch"] == torch.__version__ and made["machine"]["logical_cpus"] >= 1 and made["command"]
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
    assert "[baselines/report.md](baselines/report.md)" in report  # --baselines: the comparison, linked from the report
    assert "K-FAC removes more quotes than BSN: not shown" in report and "than K-FAC: yes" in report
    assert saved["baselines"]["paper_claim"]["over_seeds"]["forget_half_holds"] is True
    # the cross-seed summary's arithmetic on these results and a second run's (one cell changed): mean, sample
    # std and the 95% t interval over the two seeds, each computed here independently
    import copy
    import statistics

    from unmemorize.testbed.report import seeds_summary

    other = copy.deepcopy(saved)
    n = other["methods"]["kfac"]["memorized_validation"]["n"]
    other["methods"]["kfac"]["memorized_validation"]["strict"] = 3 / n
    summary = seeds_summary({0: saved, 1: other})["kfac"]["cells"]["val strict"]
    values = [saved["methods"]["kfac"]["memorized_validation"]["strict"], 3 / n]
    assert summary["per_seed"] == {"0": values[0], "1": values[1]}
    assert summary["mean"] == pytest.approx(statistics.mean(values)) and summary["std"] == pytest.approx(statistics.stdev(values))
    half = 12.706204736174707 * statistics.stdev(values) / 2 ** 0.5  # t(0.975, 1 degree of freedom) x std / sqrt(2)
    low, high = max(0.0, statistics.mean(values) - half), min(1.0, statistics.mean(values) + half)  # a fraction: clipped to [0, 1]
    assert (summary["low"], summary["high"]) == pytest.approx((low, high))
    assert summary["n_per_seed"] == {"0": n, "1": n} and "pooled" not in summary


@pytest.mark.slow
def test_quick_demo_over_two_seeds_writes_per_seed_folders_and_a_combined_report(tmp_path, monkeypatch, shared_testbed_cache):
    """Several seeds: per-seed folders and a combined report whose cells are the per-seed mean and std;
    seed 0's testbed is reused from the cache (it does not train again)."""
    from unmemorize.testbed.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo")))
    combined = run_demo(DemoConfig(quick=True, seeds="0,1", out=str(tmp_path / "demo2"), factor_data="general"))
    assert combined["wall_seconds"]["0"]["testbed (train or load)"] < 2
    per_seed = {s: strict_loads((tmp_path / "demo2" / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)}
    saved = strict_loads((tmp_path / "demo2" / "results.json").read_text())
    for cell, method in (("val strict", "kfac"), ("perplexity", "baseline")):
        values = [per_seed[s]["methods"][method]["memorized_validation"]["strict"] if cell == "val strict"
                  else per_seed[s]["methods"][method]["perplexity"] for s in (0, 1)]
        stats = saved["summary"][method]["cells"][cell]
        assert stats["mean"] == pytest.approx(sum(values) / 2)
        assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert per_seed[0]["config"]["factor_data"] == "general"
    assert "mean ± std" in (tmp_path / "demo2" / "report.md").read_text()


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


def test_label_free_search_on_the_testbed_never_exceeds_its_budget(tmp_path, monkeypatch, shared_testbed_cache):
    """For several budgets: the chosen plan, re-applied from scratch and scored by an independent
    perplexity call, stays within budget; the budget binds (some candidates exceed it); and no
    fitting candidate removes more pairs."""
    import torch

    from unmemorize.data import iter_windows, list_data_files
    from unmemorize.edit import apply_edit
    from unmemorize.edit.search import search_plan
    from unmemorize.evaluate import perplexity

    folder, model, tokenizer, factors, bases = _quick_testbed_with_factors(shared_testbed_cache, monkeypatch, 3_000)
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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_testbed_learns_every_task_it_teaches(seed):
    """Issue 13: every task of the world is learned (>= 70% on held-out rows) at every seed, and every
    memorized family is recited. Trains the default testbed (minutes per seed, cached afterwards)."""
    from unmemorize.models import load_model
    from unmemorize.testbed import TrainConfig, WorldConfig, load_or_train
    from unmemorize.testbed.suite import TestbedSuite

    folder = load_or_train(WorldConfig(seed=seed), TrainConfig(seed=seed), progress=False)
    model, tokenizer = load_model(str(folder / "model"))
    result = TestbedSuite(folder, tokenizer, perplexity_tokens=2_000, sweep_perplexity_tokens=2_000).evaluate(model)
    accuracies = {name: task["accuracy"] for name, task in result["tasks"].items()}
    assert min(accuracies.values()) >= 0.70, accuracies
    assert result["memorized_validation"]["strict"] >= 0.9 and result["quotes"]["strict"] >= 0.9


def test_the_mixture_of_experts_testbed_is_the_dense_one_with_a_routed_mlp():
    """--experts N: the same attention and world, N experts of half the dense width (top-2: the same active width);
    a dense testbed's cache key ignores the experts' settings, a mixture's does not."""
    from dataclasses import replace

    from unmemorize.testbed.train import TrainConfig, build_model, cache_key
    from unmemorize.testbed.world import WorldConfig

    dense, moe = TrainConfig(), TrainConfig(experts=4)
    world = WorldConfig()
    assert cache_key(world, dense) == cache_key(world, replace(dense, experts_per_token=3, router_aux_loss=0.5))
    assert cache_key(world, moe) != cache_key(world, dense) != cache_key(world, replace(moe, experts_per_token=1))
    dense_model, moe_model = build_model(dense, 100), build_model(moe, 100)
    assert type(moe_model).__name__ == "MixtralForCausalLM" and moe_model.config.num_local_experts == 4
    experts = moe_model.model.layers[0].mlp.experts
    assert experts.down_proj.shape == (4, dense.hidden_size, dense.intermediate_size // 2)
    dense_attention = {k: v.shape for k, v in dense_model.state_dict().items() if "mlp" not in k}
    assert dense_attention == {k: v.shape for k, v in moe_model.state_dict().items() if "mlp" not in k}


@pytest.mark.slow
def test_quick_mixture_of_experts_demo_reports_the_edit_per_expert(tmp_path):
    from unmemorize.testbed.demo import DemoConfig, run_demo

    results = run_demo(DemoConfig(quick=True, experts=4, out=str(tmp_path / "moe")))
    per_block = results["experts"]["per_block"]
    assert set(per_block) == {"0", "1"} and all(len(experts) == 4 for experts in per_block.values())
    assert "## Experts: what the chosen edit kept" in (tmp_path / "moe" / "report.md").read_text()
    assert results["analysis"]["skipped"]


@pytest.mark.slow
def test_quick_demo_with_baselines_runs_the_real_comparison(tmp_path, monkeypatch, shared_testbed_cache):
    from unmemorize.testbed.demo import DemoConfig, run_demo

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(shared_testbed_cache))
    run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo"), baselines=True))
    for name in ("baselines/report.md", "baselines/pareto.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 500, name
    assert set(strict_loads((tmp_path / "demo" / "baselines" / "results.json").read_text())["summary"]) == {"baseline", "kfac", "svd", "bsn"}


def test_the_seeds_report_tests_kfac_against_each_edit_paired_over_seeds():
    """paired_tests: the per-seed differences are K-FAC minus the other method, and the p-value is scipy's ttest_rel."""
    from scipy.stats import ttest_rel

    from unmemorize.testbed.report import paired_tests

    def method(val, quotes):
        zero = {"strict": 0.0, "n": 50}
        return {"memorized_validation": {"strict": val, "n": 50}, "quotes": {"strict": quotes, "n": 100}, "control_sequences": zero,
                "control_quotes": zero, "perplexity": 20.0, "tasks": {}}

    kfac, svd = [(0.0, 0.03), (0.02, 0.03), (0.0, 0.01)], [(0.32, 0.28), (0.94, 0.99), (0.92, 0.80)]
    per_seed = {s: {"methods": {"kfac": method(*kfac[s]), "svd": method(*svd[s])}} for s in range(3)}
    tests = paired_tests(per_seed)
    assert set(tests) == {"kfac - svd val strict", "kfac - svd quotes strict"}
    val = tests["kfac - svd val strict"]
    assert val["differences"] == pytest.approx([k[0] - s[0] for k, s in zip(kfac, svd)])
    assert val["p_value"] == pytest.approx(ttest_rel([k[0] for k in kfac], [s[0] for s in svd]).pvalue)
