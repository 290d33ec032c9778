"""The vision demo's report.md, results.json and plots: one seed, and several seeds combined.

Every percentage of one seed carries its n and a 95% Wilson interval (``evaluate.intervals``); across
seeds a cell is the mean of the per-seed fractions, its 95% t interval over seeds (clipped to
[0, 100]) and each seed's value (seeds, not images, are the unit of replication), and K-FAC against
SVD is a paired t test over seeds. The held-out accuracy change after an edit
is a paired percentile bootstrap over the held-out images (``metrics.paired_bootstrap_difference``).
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.report import summary_table
from ..evaluate.intervals import format_over_seeds, format_wilson, over_seeds, paired_over_seeds, wilson
from ..jsonio import write_json
from ..provenance import provenance

# (result key, count key in results["n"], column title)
COLUMNS = [("memorized_tuning", "tuning", "memorized % (tuning half: chosen on)"),
           ("memorized_validation", "validation", "memorized % (validation half)"),
           ("recovery_validation", "validation", "ground-truth recovery % (validation half)"),
           ("clean_train", "clean_train", "clean-train acc %"),
           ("heldout", "heldout", "held-out acc %")]
METHOD_TITLES = {"baseline": "baseline", "kfac": "K-FAC", "svd": "SVD (own tuning, same rule)",
                 "svd_matched": "SVD matched (K-FAC's blocks, clean-train matched)", "random": "random pairs (control)"}
SHORT_TITLES = {"baseline": "baseline", "kfac": "K-FAC", "svd": "SVD", "svd_matched": "SVD matched", "random": "random pairs"}


def correct_count(fraction: float, n: int) -> int:
    return int(round(fraction * n))


def pct(fraction: float | None, n: int) -> str:
    """'53.0 [46.1, 59.8] (n=200)': the percentage with its 95% Wilson interval."""
    if fraction is None or n <= 0 or fraction != fraction:
        return "-"
    return format_wilson(wilson(correct_count(fraction, n), n))


def points(difference: dict) -> str:
    return f"{100 * difference['value']:+.1f} pts [{100 * difference['low']:+.1f}, {100 * difference['high']:+.1f}] (n={difference['n']})"


def setting(name: str, point: dict) -> str:
    if name == "baseline":
        return "-"
    blocks = "+".join(map(str, point["blocks"]))
    value = f"energy={point['energy']}" if "energy" in point else f"rho={point['rho']}"
    return f"blocks {blocks}, fc1+fc2, {value}" + (", random pairs" if name == "random" else "")


def _rule(point: dict) -> str:
    if "rule_met" not in point:
        return "-"
    return "yes" if point["rule_met"] else "**no (fallback)**"


def _rule_sentences(rule_met: dict, budget: float) -> list[str]:
    lines = []
    for method, met in rule_met.items():
        name = SHORT_TITLES[method]
        if met:
            lines.append(f"- {name}: the rule was met (a candidate kept clean-train accuracy within {budget} of the baseline).")
        else:
            lines.append(f"- {name}: **the rule was NOT met**: no candidate kept clean-train accuracy within {budget} of the baseline; "
                         f"the reported point is the fallback, the lowest tuning memorized % over all candidates, whatever its "
                         f"clean-train accuracy.")
    return lines


def _plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kfac, svd = results["per_block"]["kfac"], results["per_block"]["svd"]
    base = results["methods"]["baseline"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    x = np.arange(len(kfac))
    for ax, key, title in zip(axes, ("memorized_validation", "recovery_validation", "heldout"),
                              ("memorized (validation half)", "recovery (validation half)", "held-out accuracy")):
        ax.bar(x - 0.2, [100 * p[key] for p in kfac], 0.4, label="K-FAC (rule's rho)")
        ax.bar(x + 0.2, [100 * p[key] for p in svd], 0.4, label="SVD (rule's energy)")
        ax.axhline(100 * base[key], color="grey", ls="--", lw=0.8, label="baseline")
        ax.set(title=f"{title} %, single block", xlabel="block", xticks=x)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "per_block.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, marker in (("kfac", "o"), ("svd", "s")):
        sweep = [p for p in results["sweep"] if p["method"] == method]
        ax.scatter([100 * p["memorized_tuning"] for p in sweep], [100 * p["clean_train"] for p in sweep], marker=marker, alpha=0.6, label=method)
    ax.scatter([100 * base["memorized_tuning"]], [100 * base["clean_train"]], color="black", marker="*", s=90, label="baseline")
    ax.axhline(100 * (base["clean_train"] - results["config"]["clean_budget"]), color="grey", ls=":", lw=0.8, label="budget")
    ax.set(xlabel="memorized % (tuning half)", ylabel="clean-train accuracy %", title="What the rule sees (all candidates)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tuning_candidates.png", dpi=120)
    plt.close(fig)


def _analysis_lines(results: dict) -> list[str]:
    analysis = results.get("analysis")
    if not analysis:
        return []
    return ["## Activation-ratio analysis (paper Figure 2, ViT panels)", "",
            "fc1/fc2 inputs at the factors' positions, projected on curvature-ordered bands; ratio = mean band activation on "
            "noisy-label (memorized, both halves) training images / on clean-label training images. "
            "Separation = ln(r_bottom50) - ln(r_top10).", "",
            *summary_table(analysis["summary"], unit="blocks x fc"), "", "![bands](analysis/bands_memorized.png)", "",
            "Per-module tables: [analysis/analysis.md](analysis/analysis.md).", ""]


def _claim_lines(kfac: str, heldout_before: str, heldout_after: str, change: str, memorized_before: str, memorized_after: str) -> list[str]:
    return ["## The paper's claim, checked", "",
            "Paper (Table 2): after the K-FAC edit the memorized noisy labels are largely removed and validation accuracy rises.", "",
            f"- memorized noisy labels (validation half, never used for a choice): {memorized_before} -> {memorized_after} ({kfac})",
            f"- held-out accuracy: {heldout_before} -> {heldout_after}; change {change}", ""]


def write_vision_report(results: dict, out: Path) -> str:
    """report.md and plots for one seed; returns the main table."""
    n, methods, config = results["n"], results["methods"], results["config"]
    lines = ["| method | setting | rule met | " + " | ".join(title for _, _, title in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for name, point in methods.items():
        cells = " | ".join(pct(point[key], n[count]) for key, count, _ in COLUMNS)
        lines.append(f"| {METHOD_TITLES[name]} | {setting(name, point)} | {_rule(point)} | {cells} |")
    table = "\n".join(lines)
    _plots(results, out)
    info = config["vision"]
    noised, clean = info["noised_images"], info["train_images"] - info["noised_images"]
    base, kfac, diff = methods["baseline"], methods["kfac"], results["heldout_difference"]
    per_block = ["| block | K-FAC rho | rule met | memorized % (tuning) | memorized % (validation) | clean-train % | held-out % | "
                 "SVD energy | rule met | SVD memorized % (tuning) | SVD memorized % (validation) | SVD clean-train % | SVD held-out % |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, s in zip(results["per_block"]["kfac"], results["per_block"]["svd"]):
        row = [str(k["blocks"][0]), str(k["rho"]), _rule(k)] + [pct(k[key], n[c]) for key, c in
                                                                (("memorized_tuning", "tuning"), ("memorized_validation", "validation"),
                                                                 ("clean_train", "clean_train"), ("heldout", "heldout"))]
        row += [str(s["energy"]), _rule(s)] + [pct(s[key], n[c]) for key, c in (("memorized_tuning", "tuning"), ("memorized_validation", "validation"),
                                                                                 ("clean_train", "clean_train"), ("heldout", "heldout"))]
        per_block.append("| " + " | ".join(row) + " |")
    text = ["# unmemorize vision demo report", "",
            f"Command: `{config['command']}`", "",
            f"ViT with {info['parameters']:,} parameters on {config['dataset']} (seed {config['seed']}; {info['train_images']} training "
            f"images, {noised} with a wrong label, split into a tuning half of {n['tuning']} and a validation half of "
            f"{n['validation']}; {n['heldout']} held-out images). Trained to {pct(info['train_accuracy_noised_subset'], noised)} on "
            f"the noised labels and {pct(info['train_accuracy_clean_subset'], clean)} on the clean subset in {info['seconds']:.0f} s. "
            f"K-FAC factors on the CLS token, {config['fisher']} Fisher, over all training images.", "",
            f"Rule (both methods, {results['config']['candidates']['kfac']} K-FAC and {results['config']['candidates']['svd']} SVD "
            f"candidates; rho grid {config['rho_grid']}, energy grid {config['energy_grid']}): {config['selection_rule']}.", "",
            *_rule_sentences(results["rule_met"], config["clean_budget"]), "",
            "## Paper Table 2 analogue", "", "Percentages: value [95% Wilson interval] (n).", "", table, "",
            "Held-out accuracy change vs the baseline (paired bootstrap over the held-out images, 95%): " +
            "; ".join(f"{SHORT_TITLES[m]} {points(d)}" for m, d in diff.items()) + ".", "",
            *_claim_lines(setting("kfac", kfac), pct(base["heldout"], n["heldout"]), pct(kfac["heldout"], n["heldout"]), points(diff["kfac"]),
                          pct(base["memorized_validation"], n["validation"]), pct(kfac["memorized_validation"], n["validation"])),
            "## Per block (each block's own rule choice)", "", *per_block, "", "![per block](per_block.png)", "",
            "![tuning candidates](tuning_candidates.png)", "", *_analysis_lines(results),
            "## Wall times", "", "| stage | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in results["wall_seconds"].items()], ""]
    (out / "report.md").write_text("\n".join(text))
    return table


def aggregate(runs: dict[int, dict]) -> dict:
    """Per method and metric over seeds: each seed's fraction and n, their mean, sample std (ddof=1) and the
    95% t interval of the mean over seeds (clipped to [0, 1])."""
    seeds = list(runs)
    result = {}
    for method in runs[seeds[0]]["methods"]:
        result[method] = {}
        for key, count, _ in [*COLUMNS, ("recovery_tuning", "tuning", "")]:
            values = [runs[s]["methods"][method][key] for s in seeds]
            result[method][key] = {**over_seeds(values, bounds=(0.0, 1.0)), "n_per_seed": [runs[s]["n"][count] for s in seeds]}
    return result


def _mean_cell(cell: dict) -> str:
    return format_over_seeds(cell) + f" (n={'/'.join(map(str, cell['n_per_seed']))})"


def write_combined_report(config, runs: dict[int, dict], out: Path) -> dict:
    """Combined results.json and report.md over seeds (each seed's own are in ``seed-<k>/``)."""
    from dataclasses import asdict

    seeds = list(runs)
    first = runs[seeds[0]]
    agg = aggregate(runs)
    differences = {m: {**over_seeds([runs[s]["heldout_difference"][m]["value"] for s in seeds]),
                       "per_seed_intervals": [runs[s]["heldout_difference"][m] for s in seeds]} for m in first["heldout_difference"]}
    kfac_vs_svd = paired_over_seeds([runs[s]["methods"]["kfac"]["memorized_validation"] for s in seeds],
                                    [runs[s]["methods"]["svd"]["memorized_validation"] for s in seeds])
    results = {
        "config": {**asdict(config), "seeds": seeds, "rho_grid": first["config"]["rho_grid"], "energy_grid": first["config"]["energy_grid"],
                   "train_subset": first["config"]["train_subset"], "selection_rule": first["config"]["selection_rule"],
                   "candidates": first["config"]["candidates"]},
        "rule_met": {m: [runs[s]["rule_met"][m] for s in seeds] for m in first["rule_met"]},
        "aggregate": agg,
        "heldout_difference": differences,
        "kfac_vs_svd_memorized_validation": kfac_vs_svd,  # paired t test over seeds, K-FAC minus SVD
        "per_seed": {str(s): {"folder": f"seed-{s}", "n": runs[s]["n"], "rule_met": runs[s]["rule_met"], "methods": runs[s]["methods"],
                              "heldout_difference": runs[s]["heldout_difference"], "vision": runs[s]["config"]["vision"]} for s in seeds},
        "wall_seconds": {f"seed-{s}": round(sum(runs[s]["wall_seconds"].values()), 1) for s in seeds},
        "provenance": provenance(),
    }
    write_json(out / "results.json", results)
    header = "| method | " + " | ".join(title for _, _, title in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    table = [header, rule] + [f"| {METHOD_TITLES[m]} | " + " | ".join(_mean_cell(agg[m][key]) for key, _, _ in COLUMNS) + " |" for m in agg]
    rows = ["| seed | method | setting | rule met | " + " | ".join(title for _, _, title in COLUMNS) + " |", "|---|---|---|---|" + "---|" * len(COLUMNS)]
    for s in seeds:
        for m, point in runs[s]["methods"].items():
            rows.append(f"| {s} | {METHOD_TITLES[m]} | {setting(m, point)} | {_rule(point)} | " +
                        " | ".join(pct(point[key], runs[s]["n"][c]) for key, c, _ in COLUMNS) + " |")
    rule_lines = []
    for m, flags in results["rule_met"].items():
        missed = [s for s, f in zip(seeds, flags) if not f]
        name = SHORT_TITLES[m]
        rule_lines.append(f"- {name}: rule met in {len(seeds) - len(missed)} of {len(seeds)} seeds" +
                          (f"; **NOT met for seed(s) {', '.join(map(str, missed))}** (fallback: lowest tuning memorized % over all "
                           f"candidates, whatever its clean-train accuracy)." if missed else "."))
    change = differences["kfac"]
    info = first["config"]["vision"]
    base, kfac = agg["baseline"], agg["kfac"]
    text = ["# unmemorize vision demo report (seeds combined)", "",
            f"Command: `{config.command}`", "",
            f"Dataset {first['config']['dataset']}, {len(seeds)} seeds ({', '.join(map(str, seeds))}); per seed: {info['train_images']} "
            f"training images (the training subset), {info['noised_images']} with a wrong label (tuning half "
            f"{first['n']['tuning']}, validation half {first['n']['validation']}), {first['n']['heldout']} held-out images; ViT with "
            f"{info['parameters']:,} parameters. Each seed re-draws the noise, the halves, the initialisation"
            f"{' and the train/held-out split' if first['config']['dataset'] == 'digits' else ''}. Per-seed reports: " +
            ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds) + ".", "",
            f"Rule (both methods, same candidates): {first['config']['selection_rule']}.", "", *rule_lines, "",
            "## Paper Table 2 analogue, over seeds", "",
            "Cell: the mean over seeds in % [95% t interval of the mean over seeds, clipped to [0, 100]] (each seed's value) "
            "(each seed's n): seeds, not images, are the unit of replication.", "",
            *table, "",
            "K-FAC vs SVD on the memorized validation labels, paired t test over seeds: mean difference "
            f"{100 * kfac_vs_svd['mean_difference']:+.1f} points, "
            + (f"p = {kfac_vs_svd['p_value']:.3f}" if kfac_vs_svd["p_value"] is not None else "p not defined") + " ("
            + ("K-FAC removes more: shown" if kfac_vs_svd["p_value"] is not None and kfac_vs_svd["p_value"] < 0.05
               and kfac_vs_svd["mean_difference"] < 0 else "K-FAC removes more: not shown") + ").", "",
            "Held-out accuracy change vs baseline over seeds (points, mean [t interval] (per seed)): " +
            "; ".join(f"{SHORT_TITLES[m]} {format_over_seeds(d, 100, 1)}" for m, d in differences.items()) + ". Per seed, K-FAC: " +
            "; ".join(f"seed {s} {points(d)}" for s, d in zip(seeds, change["per_seed_intervals"])) + ".", "",
            "## The paper's claim, checked", "",
            "Paper (Table 2): after the K-FAC edit the memorized noisy labels are largely removed and validation accuracy rises.", "",
            f"- memorized noisy labels (validation half, never used for a choice): {_mean_cell(base['memorized_validation'])} -> "
            f"{_mean_cell(kfac['memorized_validation'])}",
            f"- held-out accuracy: {_mean_cell(base['heldout'])} -> {_mean_cell(kfac['heldout'])}; change "
            f"{format_over_seeds(change, 100, 1)} points; per-seed paired intervals above.", "",
            "## Every seed", "", *rows, "",
            "## Wall time per seed", "", "| seed | seconds |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in results["wall_seconds"].items()], ""]
    (out / "report.md").write_text("\n".join(text))
    return results
