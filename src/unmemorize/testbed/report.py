"""Writing an experiment's results: ``results.json``, ``report.md`` and PNG plots.

The Markdown tables mirror the paper: Table 1 (memorized strict / loose / Levenshtein for both
memorized families, and perplexity, per method) and Figure 3 (task retention by category).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..analysis.report import summary_table
from ..evaluate.intervals import wilson_of_fraction
from ..jsonio import write_json

CATEGORY_ORDER = ("memorized_validation", "quotes", "math", "closed_book_qa", "open_book_qa", "logic")


def _ci(fraction, n: int) -> str:
    """'53.0 [46.1, 59.8]': percent with its 95% Wilson interval (n is in the column header)."""
    if fraction is None:
        return "-"
    interval = wilson_of_fraction(fraction, n)
    return f"{100 * interval.value:.1f} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def memorization_table(results: dict) -> str:
    """Paper Table 1 analogue: one row per method; percentages with 95% Wilson intervals."""
    base = results["methods"]["baseline"]
    nv, nq = base["memorized_validation"]["n"], base["quotes"]["n"]
    nc = base["control_sequences"]["n"] + base["control_quotes"]["n"]
    lines = [f"| method | plan | val strict % (n={nv}) | val loose % | val Lev. | quotes strict % (n={nq}) | quotes loose % | quotes Lev. | "
             f"control strict % (n={nc}) | perplexity |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in results["methods"].items():
        val, quotes = r["memorized_validation"], r["quotes"]
        control = (r["control_sequences"]["strict"] * r["control_sequences"]["n"] + r["control_quotes"]["strict"] * r["control_quotes"]["n"]) / nc
        lines.append(f"| {method} | {r.get('setting', '-')} | {_ci(val['strict'], nv)} | {_ci(val['loose'], nv)} | {val['levenshtein']:.3f} | "
                     f"{_ci(quotes['strict'], nq)} | {_ci(quotes['loose'], nq)} | {quotes['levenshtein']:.3f} | {_ci(control, nc)} | "
                     f"{r['perplexity']:.3f} |")
    return "\n".join(lines)


def task_table(results: dict) -> str:
    """Accuracy % per task and method with its 95% Wilson interval; retention (edited / baseline)
    with its 95% bootstrap interval over rows in brackets."""
    methods = list(results["methods"])
    tasks = results["methods"]["baseline"]["tasks"]
    lines = ["| task | category | n | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for name, base in tasks.items():
        cells = []
        for method in methods:
            task = results["methods"][method]["tasks"][name]
            retention, interval = task.get("retention"), task.get("retention_interval")
            cell = _ci(task["accuracy"], task["n"])
            if retention is not None and method != "baseline":
                cell += f" ({retention:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "") + ")"
            cells.append(cell)
        learned = results["methods"]["kfac"]["tasks"][name].get("learned", True) if "kfac" in results["methods"] else True
        apart = ": excluded from categories" if base["category"] == "trained_by_meaning" else ""
        lines.append(f"| {name}{apart if learned else ' (not learned: excluded from categories)'} | {base['category']} | {base['n']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def leak_lines(scan: dict | None) -> list[str]:
    """What the leak scan of this testbed found (``leaks.py``), as the reports print it."""
    if not scan:
        return ["Rows held out by meaning: not scanned (a testbed from before the scan; retrain or use the shipped one).", ""]
    counts = "; ".join(f"{task} {c['meaning']} of {c['rows']}" for task, c in scan["tasks"].items() if c["meaning"])
    return [f"**Held out by string, and by meaning?** Every evaluation row is held out of the training, factor and held-out text "
            f"by string (exact scan: {sum(c['exact'] for c in scan['tasks'].values())} rows found). Checked equivalences: "
            + "; ".join(scan["equivalences"]) + f". Rows whose equivalent form is a training example: {counts or 'none'}; they are "
            "reported apart (task '... (trained by meaning)', category `trained_by_meaning`) and left out of category retention. "
            "Not checked: " + "; ".join(scan["not_checked"]) + ".", ""]


def retention_table(results: dict) -> str:
    """Paper Figure 3 analogue: retention by category (memorized sets use strict accuracy; their
    95% bootstrap interval over items in brackets; a task category's per-task intervals are in the task table)."""
    methods = [m for m in results["methods"] if m != "baseline"]
    lines = ["| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for category in CATEGORY_ORDER:
        cells = []
        for method in methods:
            value = results["methods"][method].get("category_retention", {}).get(category)
            interval = results["methods"][method].get("retention_interval", {}).get(category)
            cells.append("-" if value is None else f"{value:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""))
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_retention(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in results["methods"] if m != "baseline"]
    x = np.arange(len(CATEGORY_ORDER))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        values = [results["methods"][method].get("category_retention", {}).get(c) for c in CATEGORY_ORDER]
        ax.bar(x + k * width, [0 if v is None else v for v in values], width, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x + width * (len(methods) - 1) / 2, CATEGORY_ORDER, rotation=15)
    ax.set_ylabel("retention (edited / baseline)")
    ax.set_title("Retention by category (memorized sets: strict accuracy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results.get("sweep", [])
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    base = results["methods"]["baseline"]
    for method, marker in (("kfac", "o"), ("svd", "s")):
        points = [p for p in sweep if p["method"] == method]
        ax.scatter([p["perplexity"] / base["sweep_perplexity"] for p in points], [p["memorized_tuning"]["strict"] for p in points],
                   marker=marker, alpha=0.6, label=f"{method} candidates")
    chosen = results["chosen"]
    ax.scatter([chosen["perplexity"] / base["sweep_perplexity"]], [chosen["memorized_tuning"]["strict"]], color="red", s=90, marker="*",
               label="chosen K-FAC plan")
    ax.axvline(1 + results["config"]["ppl_budget"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("held-out perplexity / baseline (sweep slice)")
    ax.set_ylabel("tuning split strict accuracy")
    ax.set_title("Sweep: removal vs perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label_free_lines(results: dict) -> list[str]:
    search = results["label_free"]
    chosen = search["chosen"]
    if chosen is None:
        return [f"Label-free search: no plan kept perplexity within {search['budget']:g} x baseline; nothing edited.", ""]
    return [f"`kfac_label_free` was chosen with clean held-out text only ({len(search['candidates'])} candidates, the one removing "
            f"the most curvature pairs with perplexity <= {search['budget']:g} x baseline): {chosen['layers']} {chosen['projections']} "
            f"rho={chosen['rho']}, search perplexity ratio {chosen['perplexity_ratio']:.3f}. `kfac` is the plan tuned on the memorized "
            "tuning split.", ""]


def _verdicts(ratios: dict) -> str:
    """Per module and basis: the paper's pattern (yes/no) and the separation ln(r_bottom50) - ln(r_top10)."""
    kinds = list(next(iter(ratios.values())))
    lines = ["| module | " + " | ".join(f"{k}: pattern, separation" for k in kinds) + " | K-FAC separation > SVD |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for name, per_basis in ratios.items():
        separation = {k: math.log(r[-1]) - math.log(r[0]) for k, r in per_basis.items()}
        cells = [f"{'yes' if r[-1] > 1 and r[0] < 1 else 'no'}, {separation[k]:.3f}" for k, r in per_basis.items()]
        clearer = "/".join("yes" if separation[k] > separation["svd"] else "no" for k in kinds if k != "svd") if "svd" in separation else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {clearer} |")
    return "\n".join(lines)


def _expert_lines(results: dict) -> list[str]:
    """The chosen K-FAC edit per block and expert (mixture-of-experts testbed): kept pairs of gate/up/down and routed positions."""
    experts = results.get("experts")
    if not experts:
        return []
    lines = ["## Experts: what the chosen edit kept", "",
             "Per block and expert: kept / total Kronecker pairs of each edited matrix (an expert's matrices not in the chosen plan "
             "are not listed) and the factor-data positions routed to the expert (N_e).", "",
             "| block | expert | routed positions | " + " | ".join(("gate_proj", "up_proj", "down_proj")) + " |", "|---|---|---|---|---|---|"]
    for block, per_expert in sorted(experts["per_block"].items(), key=lambda item: int(item[0])):
        for expert, matrices in sorted(per_expert.items(), key=lambda item: int(item[0])):
            cells = [f"{m['kept']}/{m['total']} ({m['kept'] / m['total']:.1%})" if (m := matrices.get(k)) else "-"
                     for k in ("gate_proj", "up_proj", "down_proj")]
            lines.append(f"| {block} | {expert} | {matrices.get('routed_positions', '?')} | " + " | ".join(cells) + " |")
    if experts["unrouted"]:
        lines += ["", f"Never routed to (no factors, never edited): {', '.join(experts['unrouted'])}."]
    return lines + [""]


def _analysis_lines(results: dict) -> list[str]:
    analysis = results.get("analysis")
    if not analysis:
        return []
    if "skipped" in analysis:
        return ["## Activation-ratio analysis", "", f"Not run: {analysis['skipped']}.", ""]
    lines = ["## Activation-ratio analysis (paper Figures 2 and 4)", "",
             "Inputs of every MLP projection projected on curvature-ordered bases and grouped in bands (top 10%, 10-25%, "
             "25-50%, bottom 50%); ratio = mean band activation on the source / on clean held-out text. Bases: `whitened` "
             "(default; SVD of G^1/2 W A^1/2), `pairs` (the paper's A eigenbasis with lambda*mu pair bands), `svd` (W's right "
             "singular vectors). Separation = ln(r_bottom50) - ln(r_top10). `memorized/control` compares memorized "
             "sequences with never-trained sequences of the same form directly.", "",
             *summary_table(analysis["summary"])]
    lines += ["", "Per layer, memorized / clean (pattern = bottom-50% ratio > 1 and top-10% ratio < 1):", "", _verdicts(analysis["memorized_ratios"])]
    lines += ["", "![bands, memorized / clean](analysis/bands_memorized.png)", "",
              "![bands, memorized / control](analysis/bands_memorized_vs_control.png)", "",
              "Task loading (mean separation over the edited modules) vs retention after the `kfac` edit, Spearman rho:", "",
              "| basis | all sources (tasks + memorized sets) | tasks only |", "|---|---|---|"]
    def rho(corr):
        p = corr.get("p_value")
        return f"{corr['spearman']:.3f} (n={corr['n']}, p={'-' if p is None else f'{p:.2f}'})"

    for kind, pair in analysis["correlation"].items():
        lines.append(f"| {kind} | {rho(pair['all'])} | {rho(pair['tasks'])} |")
    examples = analysis.get("examples")
    if examples:
        kinds = list(examples)
        tasks = list(next(iter(examples.values()))["tasks"])
        lines += ["", "Per example (rows the base model answers correctly): AUC = P(low-curvature loading of a row the edit breaks > "
                  "that of a row it keeps); 0.5 = no information; +- the Hanley-McNeil standard error.", "",
                  "| task | lost / correct before | " + " | ".join(f"AUC {k}" for k in kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for task in [*tasks, "pooled"]:
            first = examples[kinds[0]]["tasks"][task] if task != "pooled" else examples[kinds[0]]["pooled"]
            cells = [examples[k]["tasks"][task] if task != "pooled" else examples[k]["pooled"] for k in kinds]
            lines.append(f"| {task} | {first['lost']} / {first['lost'] + first['kept']} | " + " | ".join(
                "-" if c["auc"] is None or c["auc"] != c["auc"] else f"{c['auc']:.3f} +- {c['auc_se']:.3f}" for c in cells) + " |")
    lines += ["", "![loading vs retention](analysis/loading_vs_retention_whitened.png)", "",
              "Per-layer tables, every source and the other plots: [analysis/analysis.md](analysis/analysis.md).", ""]
    return lines


def write_report(results: dict, out: Path) -> str:
    """Write results.json, report.md, retention.png, sweep.png into ``out``; return the main table."""
    from ..provenance import provenance

    out.mkdir(parents=True, exist_ok=True)
    results.setdefault("provenance", provenance())
    write_json(out / "results.json", results)
    plot_retention(results, out / "retention.png")
    plot_sweep(results, out / "sweep.png")
    main = memorization_table(results)
    config = results["config"]
    text = [
        "# unmemorize demo report", "",
        f"Testbed `{config['testbed_key']}` ({config['parameters']:,} parameters; world seed {config['seed']}); "
        f"factors: {config['fisher']} Fisher on {config['factor_tokens']:,} clean tokens. Chosen K-FAC plan: "
        f"`{json.dumps(results['chosen']['plan_short'])}` (rule: {config['selection_rule']}).", "",
        *([] if results.get("rule_met", True) else [
            "**The selection rule was not met**: no candidate kept the sweep perplexity within the budget; the candidate with "
            "the lowest perplexity was taken instead (`rule_met: false` in results.json).", ""]),
        f"Factor data: `{config.get('factor_data', 'mixture')}`. Every choice was made on the tuning split and "
        "`heldout_tuning.txt`; every number below is on data no choice read. Percentages carry their 95% Wilson interval.", "",
        "## Memorization and perplexity (paper Table 1 analogue)", "", main, "",
        *(_label_free_lines(results) if "label_free" in results else []),
        "Strict: the greedy suffix equals the true one; loose: normalized token Levenshtein similarity >= 0.75; "
        "Lev.: mean normalized Levenshtein distance (higher = less memorized). Controls are never-trained sequences and quotes.",
        "", "## Retention by category (paper Figure 3 analogue)", "", retention_table(results), "", "![retention](retention.png)", "",
        "## Tasks", "", task_table(results), "", *leak_lines(results.get("leak_scan")), *_analysis_lines(results), *_expert_lines(results), "## Sweep", "", "![sweep](sweep.png)", "",
        f"{len(results.get('sweep', []))} candidate edits scored on the tuning split and a held-out perplexity slice only.", "",
        "## Curvature spectra of the factors", "", "![spectra](spectrum.png)", "",
        "## Wall times", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in results["wall_seconds"].items()], "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return main


# ---- several seeds ------------------------------------------------------------------------

def _cells(result: dict) -> dict[str, float | None]:
    """The numbers of one method in one seed that the three-seed table summarises (fractions, or perplexity)."""
    cells = {"val strict": result["memorized_validation"]["strict"], "quotes strict": result["quotes"]["strict"],
             "control strict": (result["control_sequences"]["strict"] * result["control_sequences"]["n"]
                                + result["control_quotes"]["strict"] * result["control_quotes"]["n"])
             / (result["control_sequences"]["n"] + result["control_quotes"]["n"]),
             "perplexity": result["perplexity"]}
    for name, task in result["tasks"].items():
        cells[name] = task["accuracy"]
    return cells


def _counts(result: dict) -> dict[str, tuple[int, int]]:
    """(correct, n) per percentage cell, to pool the seeds into one Wilson interval."""
    out = {"val strict": (round(result["memorized_validation"]["strict"] * result["memorized_validation"]["n"]),
                          result["memorized_validation"]["n"]),
           "quotes strict": (round(result["quotes"]["strict"] * result["quotes"]["n"]), result["quotes"]["n"])}
    controls = [result["control_sequences"], result["control_quotes"]]
    out["control strict"] = (sum(round(c["strict"] * c["n"]) for c in controls), sum(c["n"] for c in controls))
    for name, task in result["tasks"].items():
        out[name] = (round(task["accuracy"] * task["n"]), task["n"])
    return out


def seeds_summary(per_seed: dict[int, dict]) -> dict:
    """Per method and cell: each seed's value, their mean, sample std (ddof=1) and the 95% t interval of the
    mean over seeds (seeds are the unit of replication; rows of several seeds are never pooled), and each
    seed's n; per method and category, retention likewise."""
    from ..evaluate.intervals import over_seeds

    seeds = sorted(per_seed)
    methods = [m for m in per_seed[seeds[0]]["methods"] if all(m in per_seed[s]["methods"] for s in seeds)]
    summary = {}
    for method in methods:
        cells = {s: _cells(per_seed[s]["methods"][method]) for s in seeds}
        counts = {s: _counts(per_seed[s]["methods"][method]) for s in seeds}
        entry = {}
        for cell in cells[seeds[0]]:
            values = [cells[s].get(cell) for s in seeds]
            fraction = cell in counts[seeds[0]]  # a share of rows: its interval clipped to [0, 1]
            stats = {**over_seeds(values, bounds=(0.0, 1.0) if fraction else None), "per_seed": dict(zip(map(str, seeds), values))}
            if cell in counts[seeds[0]]:
                stats["n_per_seed"] = {str(s): counts[s][cell][1] for s in seeds}
            entry[cell] = stats
        retention = {}
        for category in CATEGORY_ORDER:
            values = [per_seed[s]["methods"][method].get("category_retention", {}).get(category) for s in seeds]
            if any(v is not None for v in values):
                retention[category] = {**over_seeds(values), "per_seed": dict(zip(map(str, seeds), values))}
        summary[method] = {"cells": entry, "category_retention": retention,
                           "setting": {str(s): per_seed[s]["methods"][method].get("setting", "-") for s in seeds}}
    return summary


def _mean_cell(stats: dict, percent: bool = True) -> str:
    from ..evaluate.intervals import format_over_seeds

    return format_over_seeds(stats, 100 if percent else 1, 1 if percent else 2)


def seeds_table(summary: dict, cells: list[str]) -> str:
    """Per cell: the mean over seeds [95% t interval over seeds] (each seed's value); each seed's n in the header."""
    first = next(iter(summary.values()))["cells"]
    header = [f"{c} % (n={'/'.join(map(str, first[c]['n_per_seed'].values()))} a seed)" if "n_per_seed" in first[c] else c
              for c in cells]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(cells)]
    for method, entry in summary.items():
        lines.append(f"| {method} | " + " | ".join(_mean_cell(entry["cells"][c], c != "perplexity") for c in cells) + " |")
    return "\n".join(lines)


def per_seed_table(per_seed: dict[int, dict], method: str, cells: list[str]) -> str:
    """One row per seed for one method: each cell's value (percent) with its own Wilson interval."""
    from ..evaluate.intervals import wilson

    lines = ["| seed | plan | " + " | ".join(cells) + " |", "|---|---|" + "---|" * len(cells)]
    for seed in sorted(per_seed):
        result = per_seed[seed]["methods"].get(method)
        if result is None:
            continue
        values, counts = _cells(result), _counts(result)
        row = []
        for cell in cells:
            if cell == "perplexity":
                row.append(f"{values[cell]:.3f}")
            else:
                interval = wilson(*counts[cell])
                row.append(f"{100 * interval.value:.1f} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]")
        lines.append(f"| {seed} | {result.get('setting', '-')} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_seeds_report(per_seed: dict[int, dict], out: Path, config) -> dict:
    """results.json and report.md over several seeds: per cell the mean, its t interval over seeds and each seed's value; returns the results."""
    from ..provenance import provenance

    summary = seeds_summary(per_seed)
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    tasks = list(first["methods"]["baseline"]["tasks"])
    cells = ["val strict", "quotes strict", "control strict", *tasks, "perplexity"]
    results = {
        "config": {**config.record(), "seeds": seeds,
                   "testbeds": {str(s): per_seed[s]["config"]["testbed_key"] for s in seeds}},
        "summary": summary,
        "rule_met": {str(s): per_seed[s]["rule_met"] for s in seeds},
        "paired_tests": paired_tests(per_seed),
        "per_seed": {str(s): f"seed-{s}/results.json" for s in seeds},
        "wall_seconds": {str(s): per_seed[s]["wall_seconds"] for s in seeds},
        "provenance": provenance(),
    }
    write_json(out / "results.json", results)
    unmet = [s for s in seeds if not per_seed[s]["rule_met"]]
    text = [
        f"# unmemorize demo report: seeds {', '.join(map(str, seeds))}", "",
        f"One testbed per seed (a new world and model each), factor data `{config.factor_data}`, {first['config']['fisher']} Fisher. "
        f"Each cell: the mean over the {len(seeds)} seeds [95% t interval of that mean over seeds, clipped to [0, 100] for "
        "percentages] (each seed's value); seeds, "
        "not rows, are the unit of replication (each seed's own Wilson intervals over rows are in its report). Every choice was made on each seed's tuning split and `heldout_tuning.txt`; "
        "every number is on data no choice read. Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds) + ".", "",
        *([f"**The selection rule was not met for seed(s) {', '.join(map(str, unmet))}** (see their reports).", ""] if unmet else
          ["The selection rule was met for every seed.", ""]),
        "## Memorization, tasks and perplexity (mean over seeds [t interval] (per seed))", "", seeds_table(summary, cells), "",
        *_seeds_leak_lines(per_seed), *paired_test_lines(results["paired_tests"]),
        "## Retention by category (mean over seeds [t interval] (per seed))", "",
        "| category | " + " | ".join(m for m in summary if m != "baseline") + " |", "|---|" + "---|" * (len(summary) - 1),
    ]
    for category in CATEGORY_ORDER:
        row = []
        for method, entry in summary.items():
            if method == "baseline":
                continue
            stats = entry["category_retention"].get(category)
            row.append("-" if stats is None else _mean_cell(stats, percent=False))
        text.append(f"| {category} | " + " | ".join(row) + " |")
    text += ["", "## Each seed", ""]
    for method in summary:
        text += [f"### {method}", "", per_seed_table(per_seed, method, cells), ""]
    text += ["## Wall times (seconds)", "", "| seed | " + " | ".join(first["wall_seconds"]) + " | total |",
             "|---|" + "---|" * (len(first["wall_seconds"]) + 1)]
    for s in seeds:
        walls = per_seed[s]["wall_seconds"]
        text.append(f"| {s} | " + " | ".join(f"{v:.1f}" for v in walls.values()) + f" | {sum(walls.values()):.1f} |")
    text.append("")
    (out / "report.md").write_text("\n".join(text))
    print(seeds_table(summary, cells))
    return results


PAIRED_CELLS = ("val strict", "quotes strict")


def paired_tests(per_seed: dict[int, dict]) -> dict:
    """K-FAC minus each other edit (SVD, the label-free plan) on validation and quote recitation: the paired t test
    over seeds (``intervals.paired_over_seeds``), the only ground for "K-FAC removes more than X"."""
    from ..evaluate.intervals import paired_over_seeds

    seeds = sorted(per_seed)
    methods = [m for m in ("svd", "kfac_label_free") if all(m in per_seed[s]["methods"] for s in seeds)]
    if not all("kfac" in per_seed[s]["methods"] for s in seeds):
        return {}
    cells = {s: {m: _cells(per_seed[s]["methods"][m]) for m in ["kfac", *methods]} for s in seeds}
    return {f"kfac - {other} {cell}": paired_over_seeds([cells[s]["kfac"][cell] for s in seeds], [cells[s][other][cell] for s in seeds])
            for other in methods for cell in PAIRED_CELLS}


def paired_test_lines(tests: dict) -> list[str]:
    if not tests:
        return []
    lines = ["## Paired tests over seeds (K-FAC minus the other edit, in points; a difference is claimed only at p < 0.05)", "",
             "| comparison | differences per seed | mean | p |", "|---|---|---|---|"]
    for name, test in tests.items():
        p = "undefined (too few seeds or no spread)" if test["p_value"] is None else f"{test['p_value']:.3f}"
        verdict = "" if test["p_value"] is None or test["p_value"] >= 0.05 else (" (K-FAC lower)" if test["mean_difference"] < 0
                                                                                  else " (K-FAC higher)")
        lines.append(f"| {name} | " + " / ".join(f"{100 * d:+.1f}" for d in test["differences"]) + f" | {100 * test['mean_difference']:+.1f} | "
                     f"{p}{verdict} |")
    return lines + [""]


def _seeds_leak_lines(per_seed: dict[int, dict]) -> list[str]:
    """The leak scan at every seed: rows trained by meaning per task, and the equivalences checked."""
    scans = {s: r.get("leak_scan") for s, r in sorted(per_seed.items())}
    if not all(scans.values()):
        return ["Rows held out by meaning: not scanned at every seed (a testbed from before the scan).", ""]
    first = next(iter(scans.values()))
    per_task = "; ".join(f"{task} " + " / ".join(str(scan["tasks"][task]["meaning"]) for scan in scans.values())
                         + f" of {first['tasks'][task]['rows']}" for task in first["tasks"])
    return [f"Leak scan at every seed (rows whose equivalent form is a training example, per seed): {per_task}; exact-string "
            f"leaks: {sum(c['exact'] for scan in scans.values() for c in scan['tasks'].values())}. Checked: "
            + "; ".join(first["equivalences"]) + ". Those rows are the '(trained by meaning)' tasks, left out of category "
            "retention; not checked: " + "; ".join(first["not_checked"]) + ".", ""]


def side_by_side_table(named: dict[str, dict]) -> str:
    """Dense vs mixture-of-experts (or any demo results.json files of one seed): per model, each method's
    validation and quote recitation (strict, 95% Wilson interval), perplexity change and task retention."""
    lines = ["| model | method | plan | val strict % | quotes strict % | perplexity (vs baseline) | retention: facts / open-book / math / logic |",
             "|---|---|---|---|---|---|---|"]
    for label, results in named.items():
        base = results["methods"]["baseline"]
        for method, r in results["methods"].items():
            val, quotes = r["memorized_validation"], r["quotes"]
            change = "" if method == "baseline" else f" ({100 * (r['perplexity'] / base['perplexity'] - 1):+.1f}%)"
            retention = r.get("category_retention", {})
            kept = " / ".join(_pct(retention.get(c)) if retention.get(c) is not None else "-"
                              for c in ("closed_book_qa", "open_book_qa", "math", "logic")) if method != "baseline" else "-"
            lines.append(f"| {label} | {method} | {r.get('setting', '-')} | {_ci(val['strict'], val['n'])} (n={val['n']}) | "
                         f"{_ci(quotes['strict'], quotes['n'])} (n={quotes['n']}) | {r['perplexity']:.3f}{change} | {kept} |")
    return "\n".join(lines)


def write_side_by_side_report(named: dict[str, Path], out: Path, command: str) -> str:
    """``out/report.md``: the demo reports at ``named`` (label -> folder with results.json) side by side, with
    the experts' table of any mixture-of-experts run; ``command`` is recorded as what made it."""
    results = {label: json.loads((Path(folder) / "results.json").read_text()) for label, folder in named.items()}
    lines = ["# Dense vs mixture-of-experts testbed, one seed", "", f"Made by {command} from "
             + ", ".join(f"[{label}]({Path(folder).name}/report.md)" for label, folder in named.items()) + ".", "",
             "Each model's edit was chosen by the demo's rule on its own tuning split (lowest tuning strict recitation within "
             "+10% sweep perplexity); validation and quotes were never used for a choice. Percentages: 95% Wilson intervals "
             "over items (one seed: no interval over seeds).", "", side_by_side_table(results), ""]
    for label, result in results.items():
        if result.get("experts"):
            lines += [f"## {label}: the chosen edit per expert", "", *_expert_lines(result)[4:], ""]
    text = "\n".join(lines)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "report.md").write_text(text)
    return text
