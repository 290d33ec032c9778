"""Figure 4 made quantitative: does leaning on low-curvature bands predict what an edit breaks?

Two levels, both reported:

* per task -- ``task_loading`` (mean separation of the task's inputs vs clean) against the task's
  retention (edited / baseline accuracy), Spearman's rho over tasks (few points);
* per example -- for every task row the base model answers correctly, its own loading (the mean
  over the analysed modules of ln(a_bottom50 / clean) - ln(a_top10 / clean) over its positions)
  and whether the edited model still answers it. AUC = P(loading of a lost row > loading of a
  kept row): 0.5 means the loading says nothing, > 0.5 that lost rows lean on low curvature.
  Reported within each task (controls for the task) and pooled over tasks, with the Hanley-McNeil
  standard error (it treats rows as independent).
"""

from __future__ import annotations

import math
from collections import defaultdict

from ..evaluate.tasks import TaskRow
from ..testbed.suite import LEARNED
from .inputs import TokenSequence, task_sequence
from .run import auc, auc_standard_error, sequence_loading


def task_sequences(rows: list[TaskRow], tokenizer) -> dict[str, list[tuple[int, TokenSequence]]]:
    """Per task, (row index, prompt + gold answer sequence) in row order."""
    groups: dict[str, list[tuple[int, TokenSequence]]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row.task].append((index, task_sequence(row, tokenizer)))
    return dict(groups)


def example_retention(result: dict, groups: dict[str, list[tuple[int, TokenSequence]]], correct_before: list[bool],
                      correct_after: list[bool], modules: list[str] | None = None) -> dict:
    """Per basis: per learned task and pooled, the AUC of loading for lost vs kept rows (see module doc).

    ``result`` must come from ``band_analysis(..., per_sequence=<the task names>)`` with the
    task sources built from ``groups``. Tasks with baseline accuracy below 50% are skipped. Rows
    whose loading is undefined (NaN: no counted position, e.g. a prompt longer than ``seq_len``
    with ``positions="continuation"``) are left out and counted (``left_out``); a loading of +inf
    (the row's top-10% activation is exactly 0) is kept: it is the strongest lean, and the AUC
    only compares ranks.
    """
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    out = {}
    for kind in basis_names:
        per_task, pooled_lost, pooled_kept, pooled_left_out = {}, [], [], 0
        for task, members in groups.items():
            before = [correct_before[i] for i, _ in members]
            accuracy = sum(before) / len(before)
            if accuracy < LEARNED:
                continue
            loading = sequence_loading(result, task, kind, modules)
            if len(loading) != len(members):
                raise ValueError(f"task {task!r}: {len(loading)} analysed sequences for {len(members)} rows")
            correct = [(float(loading[k]), i) for k, (i, _) in enumerate(members) if correct_before[i]]
            usable = [(value, i) for value, i in correct if not math.isnan(value)]
            lost = [value for value, i in usable if not correct_after[i]]
            kept = [value for value, i in usable if correct_after[i]]
            pooled_lost += lost
            pooled_kept += kept
            pooled_left_out += len(correct) - len(usable)
            per_task[task] = {"correct_before": len(correct), "left_out": len(correct) - len(usable), **_stats(lost, kept)}
        out[kind] = {"tasks": per_task, "pooled": {**_stats(pooled_lost, pooled_kept), "left_out": pooled_left_out}}
    return out


def _stats(lost: list[float], kept: list[float]) -> dict:
    value = auc(lost, kept)
    return {"lost": len(lost), "kept": len(kept), "auc": value, "auc_se": auc_standard_error(value, len(lost), len(kept)),
            "mean_loading_lost": _mean(lost), "mean_loading_kept": _mean(kept)}


def _mean(values: list[float]) -> float:
    """The mean; +inf if a row is +inf (and none -inf): such a row leans infinitely, not 'missing'."""
    return sum(values) / len(values) if values else math.nan


def example_table(examples: dict) -> str:
    """Markdown: per basis and task, lost / kept counts, mean loadings and the AUC."""
    lines = ["| basis | task | correct before | left out (no loading) | lost after edit | mean loading, lost | mean loading, kept | "
             "AUC (lost > kept) +- SE |", "|---|---|---|---|---|---|---|---|"]

    def fmt(value):
        if value is None or math.isnan(value):
            return "-"
        return f"{value:+}" if math.isinf(value) else f"{value:.3f}"

    for kind, block in examples.items():
        pooled = block["pooled"]
        left_out = pooled.get("left_out", 0)
        for task, s in {**block["tasks"], "pooled": {**pooled, "correct_before": pooled["lost"] + pooled["kept"] + left_out}}.items():
            lines.append(f"| {kind} | {task} | {s['correct_before']} | {s.get('left_out', 0)} | {s['lost']} | "
                         f"{fmt(s['mean_loading_lost'])} | {fmt(s['mean_loading_kept'])} | {fmt(s['auc'])} +- {fmt(s['auc_se'])} |")
    return "\n".join(lines)


def per_task_retention(groups: dict[str, list[tuple[int, TokenSequence]]], correct_before: list[bool], correct_after: list[bool]) -> dict[str, float]:
    """Edited / baseline accuracy per learned task (baseline >= 50%)."""
    retention = {}
    for task, members in groups.items():
        before = sum(correct_before[i] for i, _ in members)
        after = sum(correct_after[i] for i, _ in members)
        if before / len(members) >= LEARNED:
            retention[task] = after / before
    return retention

