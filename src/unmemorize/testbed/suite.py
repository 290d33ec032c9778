"""Evaluating any causal LM on a testbed folder's evaluation sets.

``TestbedSuite(folder, tokenizer)`` loads the sets once; ``evaluate(model)`` returns the
``results.json`` entry of one method:

    memorized_validation / memorized_tuning / quotes / control_sequences / control_quotes:
        {"strict", "loose", "levenshtein", "n"}   (strict/loose in [0, 1])
    perplexity: exp(mean next-token NLL) on held-out general text, and the paper code's variant
    tasks: {task: {"category", "accuracy", "n"}},  categories: {category: mean accuracy}

``quick(model)`` scores only what the sweep may look at: the tuning split and perplexity on
``heldout_tuning.txt``, a held-out text disjoint from the reported ``heldout.txt``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data import iter_windows, list_data_files
from ..evaluate.intervals import bootstrap_retention
from ..evaluate import evaluate_memorization, evaluate_tasks, load_memorization_set, load_tasks, perplexity

MEMORIZATION_SETS = ("memorized_validation", "memorized_tuning", "quotes", "control_sequences", "control_quotes")


class TestbedSuite:
    def __init__(self, folder: str | Path, tokenizer, perplexity_tokens: int = 40_000, sweep_perplexity_tokens: int = 10_000,
                 seq_len: int = 128, batch_size: int = 64):
        data = Path(folder) / "data"
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.batch_size = batch_size
        self.sets = {name: load_memorization_set(data / f"{name}.jsonl") for name in MEMORIZATION_SETS}
        self.tasks = load_tasks(data / "tasks.jsonl")
        self.windows = list(iter_windows(list_data_files(data / "heldout.txt"), tokenizer, seq_len, perplexity_tokens))
        self.sweep_windows = list(iter_windows(list_data_files(data / "heldout_tuning.txt"), tokenizer, seq_len, sweep_perplexity_tokens))

    @classmethod
    def for_demo(cls, folder: str | Path, tokenizer, quick: bool) -> "TestbedSuite":
        """The demo's and the comparison's sizes: 40,000 reported and 10,000 sweep perplexity tokens (2,000 each when quick)."""
        return cls(folder, tokenizer, perplexity_tokens=2_000 if quick else 40_000, sweep_perplexity_tokens=2_000 if quick else 10_000)

    def baseline(self, model) -> dict:
        """``evaluate`` of the unedited model, with its sweep perplexity (what the selection rule compares against)."""
        result = self.evaluate(model)
        result.update(setting="-", sweep_perplexity=self.quick(model)["perplexity"])
        return result

    def quick(self, model) -> dict:
        """Tuning-split memorization and perplexity on a held-out slice: all a sweep may use."""
        tuning = evaluate_memorization(model, self.sets["memorized_tuning"], self.pad_id, self.batch_size)
        return {"memorized_tuning": _scores(tuning), "perplexity": perplexity(model, self.sweep_windows, 32).perplexity}

    def evaluate(self, model) -> dict:
        start = time.perf_counter()
        result = {name: _scores(evaluate_memorization(model, items, self.pad_id, self.batch_size)) for name, items in self.sets.items()}
        ppl = perplexity(model, self.windows, 32)
        result["perplexity"] = ppl.perplexity
        result["perplexity_detail"] = ppl.to_dict()
        scored = evaluate_tasks(model, self.tokenizer, self.tasks, self.batch_size)
        tasks = scored.to_dict()
        result["tasks"] = tasks["tasks"]
        result["categories"] = tasks["categories"]
        for name in result["tasks"]:  # per row, for the intervals of retention (bootstrap over rows)
            result["tasks"][name]["correct"] = [ok for row, ok in zip(self.tasks, scored.correct) if row.task == name]
        result["eval_seconds"] = round(time.perf_counter() - start, 2)
        return result


def _scores(scores) -> dict:
    """Set-level scores plus ``exact`` (per item, strict) for intervals."""
    return {"strict": scores.strict, "loose": scores.loose, "levenshtein": scores.levenshtein, "n": scores.n,
            "exact": [d == 0 for d in scores.distances]}


LEARNED = 0.5  # a task whose baseline accuracy is below this measures nothing (issue: "a skill the model cannot learn")


def add_retention(result: dict, baseline: dict) -> dict:
    """retention = edited / baseline accuracy, per task, per category and for memorized sets.

    Category retention averages only *learned* tasks (baseline accuracy >= 50%) held out by meaning;
    tasks below are kept in the tables, marked ``learned: false``, and left out of category means, and
    so are the rows whose meaning training saw (category ``trained_by_meaning``, ``leaks.py``). The rule
    looks at the baseline alone, never at an edit's result.
    """
    from .leaks import CATEGORY as TRAINED_BY_MEANING

    learned: dict[str, list[str]] = {}
    for name, task in result["tasks"].items():
        base = baseline["tasks"][name]["accuracy"]
        task["retention"] = task["accuracy"] / base if base > 0 else None
        task["learned"] = base >= LEARNED
        if task["learned"] and task["category"] != TRAINED_BY_MEANING:
            learned.setdefault(task["category"], []).append(name)

    def mean(method: dict, names: list[str]) -> float:
        return sum(method["tasks"][n]["accuracy"] for n in names) / len(names)

    for name, task in result["tasks"].items():
        interval = bootstrap_retention(baseline["tasks"][name]["correct"], task["correct"]) if "correct" in task else None
        task["retention_interval"] = None if interval is None else [interval.low, interval.high]
    result["learned_categories"] = {c: mean(result, names) for c, names in learned.items()}
    result["category_retention"] = {c: (mean(result, names) / mean(baseline, names) if mean(baseline, names) > 0 else None)
                                    for c, names in learned.items()}
    result["retention_interval"] = {}
    for name in ("memorized_validation", "quotes"):
        base = baseline[name]["strict"]
        result["category_retention"][name] = result[name]["strict"] / base if base > 0 else None
        interval = bootstrap_retention(baseline[name]["exact"], result[name]["exact"]) if "exact" in result[name] else None
        result["retention_interval"][name] = None if interval is None else [interval.low, interval.high]
    return result
