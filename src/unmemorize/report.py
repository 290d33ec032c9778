"""Writing an experiment's results: ``results.json``, ``report.md`` and PNG plots.

The Markdown tables mirror the paper: Table 1 (memorized strict / loose / Levenshtein for both
memorized families, and perplexity, per method) and Figure 3 (task retention by category).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .analysis.report import summary_table

CATEGORY_ORDER = ("memorized_validation", "quotes", "math", "closed_book_qa", "open_book_qa", "logic")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def memorization_table(results: dict) -> str:
    """Paper Table 1 analogue: one row per method."""
    lines = ["| method | plan | val strict % | val loose % | val Lev. | quotes strict % | quotes loose % | quotes Lev. | "
             "control strict % | perplexity |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in results["methods"].items():
        val, quotes = r["memorized_validation"], r["quotes"]
        control = max(r["control_sequences"]["strict"], r["control_quotes"]["strict"])
        lines.append(f"| {method} | {r.get('setting', '-')} | {_pct(val['strict'])} | {_pct(val['loose'])} | {val['levenshtein']:.3f} | "
                     f"{_pct(quotes['strict'])} | {_pct(quotes['loose'])} | {quotes['levenshtein']:.3f} | {_pct(control)} | "
                     f"{r['perplexity']:.3f} |")
    return "\n".join(lines)


def task_table(results: dict) -> str:
    """Accuracy per task and method, with retention (edited / baseline) in brackets."""
    methods = list(results["methods"])
    tasks = results["methods"]["baseline"]["tasks"]
    lines = ["| task | category | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, base in tasks.items():
        cells = []
        for method in methods:
            task = results["methods"][method]["tasks"][name]
            retention = task.get("retention")
            cells.append(f"{_pct(task['accuracy'])}" + (f" ({retention:.2f})" if retention is not None and method != "baseline" else ""))
        learned = results["methods"]["kfac"]["tasks"][name].get("learned", True) if "kfac" in results["methods"] else True
        lines.append(f"| {name}{'' if learned else ' (not learned: excluded from categories)'} | {base['category']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retention_table(results: dict) -> str:
    """Paper Figure 3 analogue: retention by category (memorized sets use strict accuracy)."""
    methods = [m for m in results["methods"] if m != "baseline"]
    lines = ["| category | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for category in CATEGORY_ORDER:
        cells = []
        for method in methods:
            value = results["methods"][method].get("category_retention", {}).get(category)
            cells.append("-" if value is None else f"{value:.2f}")
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


def _analysis_lines(results: dict) -> list[str]:
    analysis = results.get("analysis")
    if not analysis:
        return []
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
    for kind, pair in analysis["correlation"].items():
        lines.append(f"| {kind} | {pair['all']['spearman']:.3f} (n={pair['all']['n']}) | {pair['tasks']['spearman']:.3f} (n={pair['tasks']['n']}) |")
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_retention(results, out / "retention.png")
    plot_sweep(results, out / "sweep.png")
    main = memorization_table(results)
    config = results["config"]
    text = [
        "# unmemorize demo report", "",
        f"Testbed `{config['testbed_key']}` ({config['parameters']:,} parameters; world seed {config['seed']}); "
        f"factors: {config['fisher']} Fisher on {config['factor_tokens']:,} clean tokens. Chosen K-FAC plan: "
        f"`{json.dumps(results['chosen']['plan_short'])}` (rule: {config['selection_rule']}).", "",
        "## Memorization and perplexity (paper Table 1 analogue)", "", main, "",
        *(_label_free_lines(results) if "label_free" in results else []),
        "Strict: the greedy suffix equals the true one; loose: normalized token Levenshtein similarity >= 0.75; "
        "Lev.: mean normalized Levenshtein distance (higher = less memorized). Controls are never-trained sequences and quotes.",
        "", "## Retention by category (paper Figure 3 analogue)", "", retention_table(results), "", "![retention](retention.png)", "",
        "## Tasks", "", task_table(results), "", *_analysis_lines(results), "## Sweep", "", "![sweep](sweep.png)", "",
        f"{len(results.get('sweep', []))} candidate edits scored on the tuning split and a held-out perplexity slice only.", "",
        "## Curvature spectra of the factors", "", "![spectra](spectrum.png)", "",
        "## Wall times", "", "| stage | seconds |", "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in results["wall_seconds"].items()], "",
    ]
    (out / "report.md").write_text("\n".join(text))
    return main
