"""The quotes world's reports: one per seed and one over seeds (``demo.py`` writes them).

Per seed: ``report.md``, ``results.json`` and two figures -- ``memorization_vs_duplication.png``
(strict recitation of the reported quotes per duplication count, 95% Wilson intervals, for every
model) and ``mia_auc_vs_duplication.png`` (membership AUC per count, Min-K% at k = 40%, MUSE's score, with
its bootstrap interval). Over seeds: the same tables
with the mean, the 95% t interval over seeds and each seed's value, and paired t tests over seeds
(``intervals.paired_over_seeds``, Holm-adjusted within each family of counts) for "the edit removes
quotes of count c" (baseline - K-FAC),
"K-FAC removes more than SVD / BSN" and "an edit's membership AUC is closer to the retrained
model's than another's".
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ...evaluate.intervals import format_over_seeds, over_seeds, paired_over_seeds, wilson_of_fraction
from ...jsonio import write_json
from ...provenance import provenance

METHOD_NAMES = {"baseline": "baseline", "kfac": "K-FAC", "svd": "SVD (matched ppl)", "bsn": "BSN", "retrained": "retrained without quotes"}
MIA_SHOWN = ("min_k_40", "loss", "zlib", "min_k_plus_plus")  # min_k_40: MUSE's PrivLeak score, Min-K% at k = 0.4
MIA_TITLES = {"min_k_40": "Min-K% (k = 40%; MUSE's PrivLeak score)", "loss": "loss", "zlib": "zlib ratio",
              "min_k_plus_plus": "Min-K%++ (k = 20%)"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _wilson(scores: dict, key: str = "strict") -> str:
    interval = wilson_of_fraction(scores[key], scores["n"])
    return f"{100 * interval.value:.0f} [{100 * interval.low:.0f}, {100 * interval.high:.0f}]"


def _groups(counts: list[int]) -> list[str]:
    return [f"count={c}" for c in counts]


def _plot(xs: list[int], series: dict[str, tuple[list[float], list[float] | None, list[float] | None]], ylabel: str, path: Path,
          chance: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (ys, lows, highs) in series.items():
        line = ax.plot(xs, ys, marker="o", label=METHOD_NAMES.get(name, name))[0]
        if lows is not None and highs is not None:
            ax.fill_between(xs, lows, highs, alpha=0.15, color=line.get_color())
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("duplication count (times the quote occurs in training)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_seed_report(results: dict, out: Path) -> None:
    counts, methods = results["counts"], results["methods"]
    groups = _groups(counts)
    lines = [f"# Quotes world, seed {results['config']['seed']}: memorization against duplication on real text", ""]
    model = results["testbeds"]["model"]
    lines += [f"Testbed: {model['parameters']:,} parameters, {model['tokens']:,} training tokens, {model['steps']} steps, "
              f"{model['seconds']:.0f} s on {model['threads']} threads (`{model['command']}`); retrained twin: "
              f"{results['testbeds']['retrained']['tokens']:,} tokens, {results['testbeds']['retrained']['seconds']:.0f} s. "
              f"Stream scan: {len(model['stream_scan']['leaks'])} quotes off their planned count.", ""]
    lines += ["Chosen on the tuning half of the quotes and heldout_tuning.txt (" + results["config"]["selection_rule"] + "): "
              + "; ".join(f"{METHOD_NAMES[m]}: `{methods[m]['setting']}`" for m in ("kfac", "svd", "bsn"))
              + f". Rule met: K-FAC {results['rule_met']['kfac']}, BSN {results['rule_met']['bsn']}.", ""]
    lines += ["## Recitation of the reported quotes per duplication count", "",
              "Strict accuracy % [95% Wilson], n per cell in the header; controls: quotes never inserted.", "",
              "| model | ppl | " + " | ".join(f"{g} (n={methods['baseline']['recitation']['reported'][g]['n']})" for g in groups)
              + f" | controls (n={methods['baseline']['recitation']['reported']['controls']['n']}) |",
              "|---|---|" + "---|" * (len(groups) + 1)]
    for name in methods:
        rec = methods[name]["recitation"]["reported"]
        lines.append(f"| {METHOD_NAMES[name]} | {methods[name]['perplexity']:.2f} | "
                     + " | ".join(_wilson(rec[g]) for g in groups + ["controls"]) + " |")
    lines += ["", "Loose accuracy % [95% Wilson] (at least 75% of the suffix tokens right), same n:", "",
              "| model | " + " | ".join(groups) + " | controls |", "|---|" + "---|" * (len(groups) + 1)]
    for name in methods:
        rec = methods[name]["recitation"]["reported"]
        lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(_wilson(rec[g], "loose") for g in groups + ["controls"]) + " |")
    tuning = methods["baseline"]["recitation"]["tuning"]
    lines += ["", "The tuning half (every choice was made on it; BSN's forget set), strict % [95% Wilson]: the reported half above "
              "is untargeted for every method -- K-FAC never sees a quote, BSN forgets the tuning half and is measured on the "
              "other, as in the paper's comparison.", "",
              "| model | " + " | ".join(f"{g} (n={tuning[g]['n']})" for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for name in methods:
        rec = methods[name]["recitation"]["tuning"]
        lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(_wilson(rec[g]) for g in groups) + " |")
    n_members = {g: methods["baseline"]["recitation"]["reported"][g]["n"] for g in groups}
    n_controls = methods["baseline"]["recitation"]["reported"]["controls"]["n"]
    lines += ["", "## Membership inference: reported quotes of each count against every control", "",
              f"AUC [95% stratified bootstrap] of the score of `<EOS> body` (members: the reported quotes of a count, n in the "
              f"header; non-members: the {n_controls} never-inserted quotes; 0.5: no signal). PrivLeak (MUSE): (AUC' - "
              "AUC'_retrained) / AUC'_retrained x 100 with MUSE's orientation AUC' = 1 - AUC: near -100, the quotes are as "
              "exposed as in a model that memorized them; 0, as in a model that never saw them. MUSE computes it on Min-K% at "
              "k = 40%, the first table; the others use the same formula on other scores.", ""]
    for score in MIA_SHOWN:
        lines += [f"**{MIA_TITLES[score]}**", "", "| model | " + " | ".join(f"{g} (n={n_members[g]})" for g in groups) + " | all counts | "
                  "PrivLeak (all counts) |", "|---|" + "---|" * (len(groups) + 2)]
        for name in methods:
            auc, interval = methods[name]["membership_auc"], methods[name]["membership_auc_interval"]
            leak = methods[name]["privacy_leak"]["all counts"][score]
            lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(f"{auc[g][score]:.2f} [{interval[g][score][0]:.2f}, "
                                                                  f"{interval[g][score][1]:.2f}]" for g in groups + ["all counts"])
                         + f" | {'-' if leak is None else f'{leak:+.1f}'} |")
        lines.append("")
    lines += ["## Band analysis per duplication count (paper Figure 2)", "",
              "Mean over MLP modules of the separation ln r(bottom 50% curvature) - ln r(top 10%) of the reported quotes of each "
              "count; r = band activation against held-out prose (vs clean) or against the never-inserted quotes (vs controls). "
              "Positive: the quotes load the low-curvature bands more.", "",
              "| basis | " + " | ".join(f"{g} vs clean | vs controls" for g in groups) + " |", "|---|" + "---|---|" * len(groups)]
    for kind, per in results["bands"]["separation"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{_num(per[g]['vs_clean'])} | {_num(per[g].get('vs_controls'))}" for g in groups) + " |")
    if results["attacks"]:
        lines += ["", "## Attacks: strict recitation % of the reported quotes per count", "",
                  f"n per cell as in the recitation table ({', '.join(f'{g}: {n_members[g]}' for g in groups)}); the baseline and the "
                  "retrained twin are the references (no edit; never saw a quote). Relearning: AdamW at lr 1e-3, batch 8, on 128-token "
                  "windows of training prose or on the tuning quotes.", ""]
        lines += ["Before any attack: " + "; ".join(f"{METHOD_NAMES[m]} " + " / ".join(_pct(methods[m]["recitation"]["reported"][g]["strict"])
                                                       for g in groups) for m in results["attacks"]) + " (counts in order). "
                  "Last column: the tuning quotes (every count) after relearning -- for the run on them, the positive control.", "",
                  "| edit | attack | " + " | ".join(groups) + " | tuning quotes |", "|---|---|" + "---|" * (len(groups) + 1)]
        for name, attacked in results["attacks"].items():
            for source, run in attacked["relearn"].items():
                for index, steps in enumerate(run["steps"]):
                    lines.append(f"| {METHOD_NAMES[name]} | relearn {steps} steps on {source.replace('_', ' ')} | "
                                 + " | ".join(_pct(run["sets"][g][index]["strict"]) for g in groups + ["tuning quotes"]) + " |")
            for bits, entry in attacked["quantization"]["by_bits"].items():
                lines.append(f"| {METHOD_NAMES[name]} | {bits} quantization | " + " | ".join(_pct(entry["sets"][g]["strict"]) for g in groups)
                             + " | - |")
    lines += ["", "Figures: [memorization_vs_duplication.png](memorization_vs_duplication.png), "
              "[mia_auc_vs_duplication.png](mia_auc_vs_duplication.png).", "",
              f"Wall time: {sum(results['wall_seconds'].values()):.0f} s. Provenance: commit {results['provenance'].get('commit')}, "
              f"command `{results['provenance'].get('command')}`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_json(out / "results.json", results)
    series = {}
    for name in methods:
        rec = methods[name]["recitation"]["reported"]
        intervals = [wilson_of_fraction(rec[g]["strict"], rec[g]["n"]) for g in groups]
        series[name] = ([i.value for i in intervals], [i.low for i in intervals], [i.high for i in intervals])
    _plot(counts, series, "strict recitation, reported quotes", out / "memorization_vs_duplication.png")
    _plot(counts, {name: ([methods[name]["membership_auc"][g]["min_k_40"] for g in groups],
                          [methods[name]["membership_auc_interval"][g]["min_k_40"][0] for g in groups],
                          [methods[name]["membership_auc_interval"][g]["min_k_40"][1] for g in groups]) for name in methods},
          "membership AUC (Min-K%, k=40%)", out / "mia_auc_vs_duplication.png", chance=0.5)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def write_seeds_report(per_seed: dict[int, dict], out: Path, config) -> dict:
    """The report over seeds (module doc) into ``out``; returns the summary written to results.json."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    counts, names = first["counts"], list(first["methods"])
    groups = _groups(counts)

    def strict(seed: int, method: str, group: str) -> float:
        return per_seed[seed]["methods"][method]["recitation"]["reported"][group]["strict"]

    def auc(seed: int, method: str, group: str, score: str) -> float:
        return per_seed[seed]["methods"][method]["membership_auc"][group][score]

    summary: dict = {"seeds": seeds, "counts": counts, "strict": {}, "perplexity": {}, "auc": {}, "tests": {}}
    for name in names:
        summary["strict"][name] = {g: over_seeds([strict(s, name, g) for s in seeds], (0, 1)) for g in groups + ["controls"]}
        summary["perplexity"][name] = over_seeds([per_seed[s]["methods"][name]["perplexity"] for s in seeds])
        summary["auc"][name] = {score: {g: over_seeds([auc(s, name, g, score) for s in seeds], (0, 1)) for g in groups + ["all counts"]}
                                for score in MIA_SHOWN}
    tests = summary["tests"]
    tests["removed"] = {g: paired_over_seeds([strict(s, "baseline", g) for s in seeds], [strict(s, "kfac", g) for s in seeds]) for g in groups}
    for other in ("svd", "bsn"):
        tests[f"kfac_below_{other}"] = {g: paired_over_seeds([strict(s, other, g) for s in seeds], [strict(s, "kfac", g) for s in seeds])
                                        for g in groups}
        tests[f"kfac_auc_closer_than_{other}"] = {
            g: paired_over_seeds([abs(auc(s, other, g, "min_k_40") - auc(s, "retrained", g, "min_k_40")) for s in seeds],
                                 [abs(auc(s, "kfac", g, "min_k_40") - auc(s, "retrained", g, "min_k_40")) for s in seeds])
            for g in groups + ["all counts"]}

    for family in tests.values():  # Holm's step-down adjustment within each family (one column of a table)
        _holm(family)

    def shown(test: dict, scale: float = 100, unit: str = " points") -> str:
        difference = "-" if test["mean_difference"] is None else f"{scale * test['mean_difference']:+.{1 if scale == 100 else 3}f}{unit}"
        if test["p_value"] is None:
            spread = test["differences"]
            if len(spread) >= 2 and len(set(spread)) == 1:
                return f"{difference} at every seed (no spread: no t test)"
            return f"{difference}, no test (fewer than 2 seeds)"
        holds = test["mean_difference"] > 0 and test["holm_p"] < 0.05
        return f"{difference}, p={test['p_value']:.3f}, Holm p={test['holm_p']:.3f} ({'shown' if holds else 'not shown'})"

    lines = [f"# Quotes world over seeds {', '.join(map(str, seeds))}: memorization against duplication on real text", "",
             "Every cell: mean over seeds [95% t interval over seeds] (each seed's value); seeds are the unit of replication, "
             "rows of different seeds are never pooled. Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds)
             + ".", "", "## Strict recitation % of the reported quotes per duplication count", "",
             "| model | ppl | " + " | ".join(groups) + " | controls |", "|---|---|" + "---|" * (len(groups) + 1)]
    for name in names:
        lines.append(f"| {METHOD_NAMES[name]} | {format_over_seeds(summary['perplexity'][name], scale=1, digits=2)} | "
                     + " | ".join(format_over_seeds(summary["strict"][name][g], digits=0) for g in groups + ["controls"]) + " |")
    lines += ["", "Paired t tests over seeds of the difference in strict recitation (two-sided p, and Holm-adjusted within each "
              "column over the counts; 'shown' needs the claimed direction and Holm p < 0.05):", "",
              "| count | baseline - K-FAC (removed) | SVD - K-FAC | BSN - K-FAC |", "|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g} | {shown(tests['removed'][g])} | {shown(tests['kfac_below_svd'][g])} | {shown(tests['kfac_below_bsn'][g])} |")
    lines += ["", "## Membership AUC against never-inserted quotes", ""]
    for score in MIA_SHOWN:
        lines += [f"**{MIA_TITLES[score]}**", "", "| model | " + " | ".join(groups + ["all counts"]) + " |", "|---|" + "---|" * (len(groups) + 1)]
        for name in names:
            lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(format_over_seeds(summary["auc"][name][score][g], scale=1, digits=2)
                                                              for g in groups + ["all counts"]) + " |")
        lines.append("")
    lines += ["Is K-FAC's Min-K% (k = 40%) AUC closer to the retrained model's than SVD's / BSN's? Paired over seeds on |AUC - AUC_retrained|:",
              "", "| count | SVD | BSN |", "|---|---|---|"]
    for g in groups + ["all counts"]:
        lines.append(f"| {g} | {shown(tests['kfac_auc_closer_than_svd'][g], 1, ' AUC')} | {shown(tests['kfac_auc_closer_than_bsn'][g], 1, ' AUC')} |")
    summary["privacy_leak"] = {name: {score: over_seeds([per_seed[s]["methods"][name]["privacy_leak"]["all counts"][score] for s in seeds])
                                      for score in MIA_SHOWN} for name in names}
    lines += ["", "PrivLeak (MUSE's formula; all counts pooled; 0 = the retrained model, near -100 = fully exposed; MUSE's own score "
              "is Min-K% at k = 40%):", "", "| model | " + " | ".join(MIA_TITLES[score] for score in MIA_SHOWN) + " |",
              "|---|" + "---|" * len(MIA_SHOWN)]
    for name in names:
        lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(format_over_seeds(summary["privacy_leak"][name][score], scale=1, digits=1)
                                                          for score in MIA_SHOWN) + " |")
    summary["bands"] = {kind: {g: {side: over_seeds([per_seed[s]["bands"]["separation"][kind][g].get(side) for s in seeds])
                                   for side in ("vs_clean", "vs_controls")} for g in groups}
                        for kind in first["bands"]["separation"]}
    lines += ["", "## Band analysis per duplication count (paper Figure 2)", "",
              "Mean over MLP modules of ln r(bottom 50% curvature) - ln r(top 10%) for the reported quotes of each count, against "
              "held-out prose and against the never-inserted quotes; positive: the quotes load low-curvature bands more.", "",
              "| basis | against | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for kind, per in summary["bands"].items():
        for side in ("vs_clean", "vs_controls"):
            lines.append(f"| {kind} | {side.replace('vs_', '')} | " + " | ".join(format_over_seeds(per[g][side], scale=1, digits=2) for g in groups) + " |")
    if first["attacks"]:
        summary["attacks"] = {}
        lines += ["", "## Attacks: strict recitation % of the reported quotes per count after each attack", "",
                  "| edit | attack | " + " | ".join(groups) + " | tuning quotes |", "|---|---|" + "---|" * (len(groups) + 1)]
        for name in first["attacks"]:
            for source, run in first["attacks"][name]["relearn"].items():
                for index, steps in enumerate(run["steps"]):
                    cells = {g: over_seeds([per_seed[s]["attacks"][name]["relearn"][source]["sets"][g][index]["strict"] for s in seeds], (0, 1))
                             for g in groups + ["tuning quotes"]}
                    summary["attacks"][f"{name} relearn {steps} on {source}"] = cells
                    lines.append(f"| {METHOD_NAMES[name]} | relearn {steps} steps on {source.replace('_', ' ')} | "
                                 + " | ".join(format_over_seeds(cells[g], digits=0) for g in groups + ["tuning quotes"]) + " |")
            for bits in first["attacks"][name]["quantization"]["by_bits"]:
                cells = {g: over_seeds([per_seed[s]["attacks"][name]["quantization"]["by_bits"][bits]["sets"][g]["strict"] for s in seeds], (0, 1))
                         for g in groups}
                summary["attacks"][f"{name} {bits}"] = cells
                lines.append(f"| {METHOD_NAMES[name]} | {bits} quantization | " + " | ".join(format_over_seeds(cells[g], digits=0) for g in groups)
                             + " | - |")
    lines += ["", "Figures: [memorization_vs_duplication.png](memorization_vs_duplication.png), "
              "[mia_auc_vs_duplication.png](mia_auc_vs_duplication.png) (mean over seeds, band: the t interval).", "",
              "Provenance: see each seed's results.json (commit, versions, machine, command)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    series = {name: ([summary["strict"][name][g]["mean"] for g in groups], [_or(summary["strict"][name][g], "low") for g in groups],
                     [_or(summary["strict"][name][g], "high") for g in groups]) for name in names}
    _plot(counts, series, "strict recitation, reported quotes", out / "memorization_vs_duplication.png")
    auc_series = {name: ([summary["auc"][name]["min_k_40"][g]["mean"] for g in groups], [_or(summary["auc"][name]["min_k_40"][g], "low") for g in groups],
                         [_or(summary["auc"][name]["min_k_40"][g], "high") for g in groups]) for name in names}
    _plot(counts, auc_series, "membership AUC (Min-K%, k=40%)", out / "mia_auc_vs_duplication.png", chance=0.5)
    record = {"config": asdict(config), "summary": summary, "provenance": provenance()}
    write_json(out / "results.json", record)
    return record


def _holm(family: dict) -> None:
    """Holm's step-down adjusted p ('holm_p') for every test of a family that has a p value (None for the others)."""
    tested = sorted((test["p_value"], key) for key, test in family.items() if test["p_value"] is not None)
    running = 0.0
    for rank, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        family[key]["holm_p"] = running
    for test in family.values():
        test.setdefault("holm_p", None)


def _or(stats: dict, key: str) -> float:
    return stats[key] if stats[key] is not None else stats["mean"]
