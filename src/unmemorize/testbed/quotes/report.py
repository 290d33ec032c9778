"""The quotes world's reports: one per seed and one over seeds (``demo.py`` writes them).

Per seed: ``report.md``, ``results.json`` and two figures -- ``memorization_vs_duplication.png``
(strict recitation of the reported quotes per duplication count, 95% Wilson intervals, for every
model) and ``mia_auc_vs_duplication.png`` (membership AUC per count). Over seeds: the same tables
with the mean, the 95% t interval over seeds and each seed's value, and paired t tests over seeds
(``intervals.paired_over_seeds``) for "the edit removes quotes of count c" (baseline - K-FAC),
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
MIA_SHOWN = ("loss", "zlib", "min_k_plus_plus")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _wilson(scores: dict) -> str:
    interval = wilson_of_fraction(scores["strict"], scores["n"])
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
    lines += ["", "Loose accuracy % (at least 75% of the suffix tokens right):", "",
              "| model | " + " | ".join(groups) + " | controls |", "|---|" + "---|" * (len(groups) + 1)]
    for name in methods:
        rec = methods[name]["recitation"]["reported"]
        lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(_pct(rec[g]["loose"]) for g in groups + ["controls"]) + " |")
    lines += ["", "## Membership inference: reported quotes of each count against every control", "",
              "AUC (0.5: no signal) for each score; PrivLeak (MUSE): (AUC' - AUC'_retrained) / AUC'_retrained x 100 with MUSE's "
              "orientation AUC' = 1 - AUC (near -100: the quotes are as exposed as a model that memorized them; 0: as a model "
              "that never saw them).", ""]
    for score in MIA_SHOWN:
        lines += [f"**{score}**", "", "| model | " + " | ".join(groups + ["all counts"]) + " | PrivLeak (all counts) |",
                  "|---|" + "---|" * (len(groups) + 2)]
        for name in methods:
            auc = methods[name]["membership_auc"]
            lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(f"{auc[g][score]:.3f}" for g in groups + ["all counts"])
                         + f" | {methods[name]['privacy_leak']['all counts'][score]:+.1f} |")
        lines.append("")
    lines += ["## Band analysis per duplication count (paper Figure 2)", "",
              "Mean over MLP modules of the separation ln r(bottom 50% curvature) - ln r(top 10%) of the reported quotes of each "
              "count; r = band activation against held-out prose (vs clean) or against the never-inserted quotes (vs controls). "
              "Positive: the quotes load the low-curvature bands more.", "",
              "| basis | " + " | ".join(f"{g} vs clean | vs controls" for g in groups) + " |", "|---|" + "---|---|" * len(groups)]
    for kind, per in results["bands"]["separation"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{_num(per[g]['vs_clean'])} | {_num(per[g].get('vs_controls'))}" for g in groups) + " |")
    if results["attacks"]:
        lines += ["", "## Attacks on the edits: strict recitation % of the reported quotes per count", ""]
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
    _plot(counts, series, "strict recitation (reported quotes)", out / "memorization_vs_duplication.png")
    _plot(counts, {name: ([methods[name]["membership_auc"][g]["min_k_plus_plus"] for g in groups], None, None) for name in methods},
          "membership AUC (Min-K%++), vs never-inserted quotes", out / "mia_auc_vs_duplication.png", chance=0.5)


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
            g: paired_over_seeds([abs(auc(s, other, g, "min_k_plus_plus") - auc(s, "retrained", g, "min_k_plus_plus")) for s in seeds],
                                 [abs(auc(s, "kfac", g, "min_k_plus_plus") - auc(s, "retrained", g, "min_k_plus_plus")) for s in seeds])
            for g in groups + ["all counts"]}

    def shown(test: dict) -> str:
        if test["p_value"] is None:
            return f"diff {_pct(test['mean_difference'])}, p n/a"
        holds = test["mean_difference"] > 0 and test["p_value"] < 0.05
        return f"diff {_pct(test['mean_difference'])}, p={test['p_value']:.3f} ({'shown' if holds else 'not shown'})"

    lines = [f"# Quotes world over seeds {', '.join(map(str, seeds))}: memorization against duplication on real text", "",
             "Every cell: mean over seeds [95% t interval over seeds] (each seed's value); seeds are the unit of replication, "
             "rows of different seeds are never pooled. Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds)
             + ".", "", "## Strict recitation % of the reported quotes per duplication count", "",
             "| model | ppl | " + " | ".join(groups) + " | controls |", "|---|---|" + "---|" * (len(groups) + 1)]
    for name in names:
        lines.append(f"| {METHOD_NAMES[name]} | {format_over_seeds(summary['perplexity'][name], scale=1, digits=2)} | "
                     + " | ".join(format_over_seeds(summary["strict"][name][g], digits=0) for g in groups + ["controls"]) + " |")
    lines += ["", "Paired t tests over seeds (two-sided p; 'shown' needs the claimed direction and p < 0.05):", "",
              "| count | baseline - K-FAC (removed) | SVD - K-FAC | BSN - K-FAC |", "|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g} | {shown(tests['removed'][g])} | {shown(tests['kfac_below_svd'][g])} | {shown(tests['kfac_below_bsn'][g])} |")
    lines += ["", "## Membership AUC against never-inserted quotes", ""]
    for score in MIA_SHOWN:
        lines += [f"**{score}**", "", "| model | " + " | ".join(groups + ["all counts"]) + " |", "|---|" + "---|" * (len(groups) + 1)]
        for name in names:
            lines.append(f"| {METHOD_NAMES[name]} | " + " | ".join(format_over_seeds(summary["auc"][name][score][g], scale=1, digits=2)
                                                              for g in groups + ["all counts"]) + " |")
        lines.append("")
    lines += ["Is K-FAC's Min-K%++ AUC closer to the retrained model's than SVD's / BSN's? Paired over seeds on |AUC - AUC_retrained|:",
              "", "| count | SVD | BSN |", "|---|---|---|"]
    for g in groups + ["all counts"]:
        lines.append(f"| {g} | {shown(tests['kfac_auc_closer_than_svd'][g])} | {shown(tests['kfac_auc_closer_than_bsn'][g])} |")
    summary["privacy_leak"] = {name: {score: over_seeds([per_seed[s]["methods"][name]["privacy_leak"]["all counts"][score] for s in seeds])
                                      for score in MIA_SHOWN} for name in names}
    lines += ["", "PrivLeak (MUSE; all counts pooled; 0 = the retrained model, near -100 = fully exposed):", "",
              "| model | " + " | ".join(MIA_SHOWN) + " |", "|---|" + "---|" * len(MIA_SHOWN)]
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
    _plot(counts, series, "strict recitation (reported quotes), mean over seeds", out / "memorization_vs_duplication.png")
    auc_series = {name: ([summary["auc"][name]["min_k_plus_plus"][g]["mean"] for g in groups], None, None) for name in names}
    _plot(counts, auc_series, "membership AUC (Min-K%++), mean over seeds", out / "mia_auc_vs_duplication.png", chance=0.5)
    record = {"config": asdict(config), "summary": summary, "provenance": provenance()}
    write_json(out / "results.json", record)
    return record


def _or(stats: dict, key: str) -> float:
    return stats[key] if stats[key] is not None else stats["mean"]
