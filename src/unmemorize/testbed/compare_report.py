"""Tables, verdicts and the Pareto plot of ``compare.py``'s results (report.md, results.json, pareto.png).

Seeds are the unit of replication: every cross-seed cell is the mean over seeds, the 95% t interval
of that mean over seeds (clipped to [0, 100] for percentages) and each seed's value (``intervals.over_seeds``); items of several seeds are
never pooled into one sample (each seed's own Wilson interval over items is in its seed-<k>/results).
Verdicts:

* **paper claim** (Table 1): at matched perplexity K-FAC removes more *untargeted* memorization
  (quotes strict) than BSN, while BSN removes more of its *targeted* forget set (the tuning split).
  Checked twice: for the points each method's rule chose under the same budget (per seed, and over
  seeds by a paired t test, ``intervals.paired_over_seeds``: "holds" needs p < 0.05 in the claimed
  direction, else "not shown"), and for the paper's matching (the SVD and BSN candidates whose sweep
  perplexity is closest to K-FAC's, ``matched_points``, per seed).
* **does a removal survive an attack?** restored = (after - edited) / (baseline - edited) of strict
  recitation, on the validation split and on the quotes, after the largest k of each relearning run
  and after the bf16 round trip, mean over seeds. Survives: restored < 0.25; partly: 0.25-0.75;
  restored: > 0.75; undefined at a seed where the edit removed fewer than ``MIN_REMOVED`` items.
  The unedited baseline after the same attack is in the attack tables: relearning can also make a
  model forget (or learn afresh), so read the ratio beside it.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..evaluate.intervals import format_over_seeds, mean_std, over_seeds, paired_over_seeds
from ..jsonio import write_json
from ..provenance import provenance

METHOD_ORDER = ("baseline", "kfac", "svd", "bsn")
MIN_REMOVED = 5  # items an edit must remove at a seed for a survival ratio there
CATEGORIES = ("math", "closed_book_qa", "open_book_qa", "logic")


def _count(fraction: float, n: int) -> tuple[int, int]:
    return int(round(fraction * n)), n


def _percent_cell(values: list[tuple[int, int]]) -> dict:
    """k/n per seed: the mean over seeds, its 95% t interval over seeds (clipped to [0, 1]), each seed's value and n."""
    return {**over_seeds([k / n for k, n in values], bounds=(0.0, 1.0)), "n_per_seed": [n for _, n in values]}


def _plain_cell(values: list[float | None]) -> dict:
    return over_seeds(values)


def _fmt(cell: dict, percent: bool = True, digits: int = 1) -> str:
    return format_over_seeds(cell, 100 if percent else 1, digits)


def _largest(run: dict, name: str) -> dict:
    return run["sets"][name][-1]


def summarize(per_seed: dict[int, dict]) -> dict:
    """Per method: the Table-1 cells and the attack cells over seeds."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    attack_keys = list(first["methods"]["baseline"]["checks"]["relearn"])
    summary = {}
    for method in METHOD_ORDER:
        rows = [per_seed[s]["methods"][method] for s in seeds]
        cells = {}
        for name, label in (("memorized_validation", "val"), ("quotes", "quotes"), ("memorized_tuning", "forget (tuning)"),
                            ("control_sequences", "control seq")):
            cells[f"{label} strict"] = _percent_cell([_count(r[name]["strict"], r[name]["n"]) for r in rows])
        cells["val loose"] = _percent_cell([_count(r["memorized_validation"]["loose"], r["memorized_validation"]["n"]) for r in rows])
        cells["quotes loose"] = _percent_cell([_count(r["quotes"]["loose"], r["quotes"]["n"]) for r in rows])
        cells["perplexity"] = _plain_cell([r["perplexity"] for r in rows])
        cells["nDCG@10"] = _plain_cell([r["checks"]["ndcg"]["ndcg"] for r in rows])
        for name, label in (("memorized_validation", "val"), ("quotes", "quotes")):
            cells[f"stress {label} original"] = _plain_cell([r["checks"]["stress"][name]["summary"]["original"]["mean"] for r in rows])
            cells[f"stress {label} perturbed"] = _plain_cell([r["checks"]["stress"][name]["summary"]["stressed"]["mean"] for r in rows])
        for category in CATEGORIES:
            cells[f"retention {category}"] = _plain_cell([r.get("category_retention", {}).get(category) for r in rows])
        attacks = {}
        for key in attack_keys:
            runs = [r["checks"]["relearn"][key] for r in rows]
            steps = runs[0]["steps"]
            for name in runs[0]["sets"]:
                for index, k in enumerate(steps):
                    attacks[f"{key} k={k} {name}"] = _percent_cell([_count(run["sets"][name][index]["strict"], run["sets"][name][index]["n"])
                                                                    for run in runs])
        for name in ("memorized_validation", "quotes", "control_sequences", "control_quotes"):
            samples = [r["checks"]["sample"][name] for r in rows]
            attacks[f"sample exact {name}"] = over_seeds([s["exact_rate"] for s in samples], bounds=(0.0, 1.0))  # a fraction of samples
            attacks[f"sample items {name}"] = _percent_cell([_count(s["items_with_exact"], s["n"]) for s in samples])
            attacks[f"sample loglik {name}"] = _plain_cell([s["mean_log_likelihood_per_token"] for s in samples])
            bf16 = [r["checks"]["bf16"]["sets"][name] for r in rows]
            attacks[f"bf16 {name}"] = _percent_cell([_count(b["strict"], b["n"]) for b in bf16])
        if all("quantization" in r["checks"] for r in rows):
            for width in rows[0]["checks"]["quantization"]["by_bits"]:
                runs = [r["checks"]["quantization"]["by_bits"][width] for r in rows]
                for name in runs[0]["sets"]:
                    attacks[f"{width} {name}"] = _percent_cell([_count(q["sets"][name]["strict"], q["sets"][name]["n"]) for q in runs])
                attacks[f"{width} weight change"] = _plain_cell([q["weights"]["max_relative_frobenius_change"] for q in runs])
        if all("edit_size" in r for r in rows):
            for stat in ("relative_frobenius_mean", "relative_frobenius_min", "relative_frobenius_max", "entries_changed_mean"):
                bounds = (0.0, 1.0) if stat.startswith("entries") else (0.0, math.inf)  # a fraction; a norm ratio >= 0
                cells[f"edit {stat}"] = over_seeds([r["edit_size"][stat] for r in rows], bounds=bounds)
        summary[method] = {"cells": cells, "attacks": attacks,
                           "setting": {str(s): per_seed[s]["methods"][method].get("setting", "-") for s in seeds},
                           "rule_met": {str(s): per_seed[s]["methods"][method].get("rule_met", True) for s in seeds}}
    return summary


SIGNIFICANCE = 0.05  # a paired test over seeds must reach this for "holds"


def paper_claim(per_seed: dict[int, dict], summary: dict) -> dict:
    """K-FAC vs BSN on quotes (untargeted) and on the forget set (targeted): per seed, and over seeds by a paired
    t test (holds: p < SIGNIFICANCE in the claimed direction)."""
    claim = {"per_seed": {}}
    for seed, result in sorted(per_seed.items()):
        k, b = result["methods"]["kfac"], result["methods"]["bsn"]
        claim["per_seed"][str(seed)] = {"kfac_quotes": k["quotes"]["strict"], "bsn_quotes": b["quotes"]["strict"],
                                        "kfac_forget": k["memorized_tuning"]["strict"], "bsn_forget": b["memorized_tuning"]["strict"],
                                        "quotes_half_holds": k["quotes"]["strict"] < b["quotes"]["strict"],
                                        "forget_half_holds": b["memorized_tuning"]["strict"] < k["memorized_tuning"]["strict"]}
    rows = list(claim["per_seed"].values())
    quotes = paired_over_seeds([r["kfac_quotes"] for r in rows], [r["bsn_quotes"] for r in rows])  # K-FAC - BSN: < 0 claimed
    forget = paired_over_seeds([r["bsn_forget"] for r in rows], [r["kfac_forget"] for r in rows])  # BSN - K-FAC: < 0 claimed

    def holds(test: dict) -> bool:
        return test["p_value"] is not None and test["p_value"] < SIGNIFICANCE and test["mean_difference"] < 0

    claim["over_seeds"] = {"quotes": quotes, "forget": forget, "quotes_half_holds": holds(quotes), "forget_half_holds": holds(forget),
                           "test": f"paired t test over seeds, two-sided, holds at p < {SIGNIFICANCE} in the claimed direction"}
    matched = matched_points(per_seed)
    claim["matched_perplexity"] = {seed: {"quotes_half_holds": matched["kfac"][seed]["quotes strict"] < matched["bsn"][seed]["quotes strict"],
                                          "forget_half_holds": matched["bsn"][seed]["forget (tuning) strict"]
                                          < matched["kfac"][seed]["forget (tuning) strict"]} for seed in matched["kfac"]}
    return claim


def claim_line(claim: dict) -> str:
    """The over-seeds verdict as the reports print it, with each test's p-value."""
    def part(name: str, label: str) -> str:
        test = claim["over_seeds"][name]
        p = "p not defined (every seed's difference the same)" if test["p_value"] is None else f"p = {test['p_value']:.3f}"
        verdict = "holds" if claim["over_seeds"][f"{name}_half_holds"] else "not shown"
        return f"{label} {verdict} (mean difference {100 * test['mean_difference']:+.1f} points, {p}, n = {test['n']} seeds)"

    return (f"the rule's choices (same budget), paired t test over seeds: {part('quotes', 'quotes half (K-FAC minus BSN)')}; "
            f"{part('forget', 'forget-set half (BSN minus K-FAC)')}.")


def _ppl(candidate: dict) -> float:
    """A candidate's sweep perplexity; inf where it was not finite (strict JSON stores that as null)."""
    value = candidate.get("perplexity")
    return float("inf") if value is None or value != value else float(value)


def candidate_setting(candidate: dict) -> str:
    """A candidate as the reports name it: 'layers projections rho=...', '... energy=...' or BSN's key."""
    if candidate["method"] == "bsn":
        return candidate["key"]
    knob = "rho" if candidate["method"] == "kfac" else "energy"
    return f"{candidate['layers']} {candidate['projections']} {knob}={candidate[knob]}"


def matched_points(per_seed: dict[int, dict]) -> dict:
    """The paper's matching: per seed, the SVD and BSN candidates whose sweep perplexity (on
    ``heldout_tuning.txt``) is closest to the chosen K-FAC edit's (|log ratio|), with their
    recitation. Reads only the sweep perplexity to pick; reports the candidates' scores."""
    import math

    out = {"kfac": {}, "svd": {}, "bsn": {}}
    for seed, result in sorted(per_seed.items()):
        target = _ppl(result["chosen"]["kfac"])
        for method in out:
            candidates = result["candidates"][method]
            point = (result["chosen"]["kfac"] if method == "kfac"
                     else min((c for c in candidates if math.isfinite(_ppl(c))), key=lambda c: abs(math.log(_ppl(c) / target)),
                              default=candidates[0]))
            out[method][str(seed)] = {"setting": candidate_setting(point), "sweep_perplexity": _ppl(point),
                                      "sweep_perplexity_ratio": _ppl(point) / result["baseline_sweep_perplexity"],
                                      "forget (tuning) strict": point["memorized_tuning"]["strict"],
                                      "val strict": point["reported"]["memorized_validation"]["strict"],
                                      "quotes strict": point["reported"]["quotes"]["strict"],
                                      "n": {"forget (tuning) strict": point["memorized_tuning"]["n"],
                                            "val strict": point["reported"]["memorized_validation"]["n"],
                                            "quotes strict": point["reported"]["quotes"]["n"]}}
    return out


def survival(per_seed: dict[int, dict]) -> dict:
    """Per edit method, set and attack: restored fraction of strict recitation, mean over seeds."""
    out = {}
    seeds = sorted(per_seed)
    keys = list(per_seed[seeds[0]]["methods"]["baseline"]["checks"]["relearn"])
    quantized = [f"quant {w}" for w in per_seed[seeds[0]]["methods"]["baseline"]["checks"].get("quantization", {}).get("by_bits", {})]
    for method in ("kfac", "svd", "bsn"):
        out[method] = {}
        for name in ("memorized_validation", "quotes"):
            for attack in keys + quantized + ["bf16"]:
                values, removed = [], []
                for s in seeds:
                    result = per_seed[s]["methods"]
                    n = result["baseline"][name]["n"]
                    base, edited = result["baseline"][name]["strict"], result[method][name]["strict"]
                    checks = result[method]["checks"]
                    after = (checks["bf16"]["sets"][name]["strict"] if attack == "bf16"
                             else checks["quantization"]["by_bits"][attack[len("quant "):]]["sets"][name]["strict"] if attack.startswith("quant ")
                             else _largest(checks["relearn"][attack], name)["strict"])
                    removed.append(round((base - edited) * n))
                    values.append(None if removed[-1] < MIN_REMOVED else (after - edited) / (base - edited))
                stats = mean_std(values)
                mean = stats["mean"]
                verdict = "undefined" if mean is None else "survives" if mean < 0.25 else "partly" if mean <= 0.75 else "restored"
                out[method][f"{name} {attack}"] = {**stats, "per_seed": dict(zip(map(str, seeds), values)),
                                                   "removed_items": dict(zip(map(str, seeds), removed)), "verdict": verdict}
    return out


def plot_pareto(per_seed: dict[int, dict], path: Path, budget: float) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    colors = {"kfac": "tab:blue", "svd": "tab:orange", "bsn": "tab:green"}
    fig, axes = plt.subplots(2, len(seeds), figsize=(4.2 * len(seeds), 7), squeeze=False)
    for column, seed in enumerate(seeds):
        result = per_seed[seed]
        base = result["baseline_sweep_perplexity"]
        for row, name in enumerate(("memorized_validation", "quotes")):
            ax = axes[row][column]
            for method, candidates in result["candidates"].items():
                finite = [c for c in candidates if math.isfinite(_ppl(c))]
                xs = [_ppl(c) / base for c in finite]
                ys = [100 * c["reported"][name]["strict"] for c in finite]
                ax.scatter(xs, ys, s=14, alpha=0.55, color=colors[method], label=method)
                chosen = result["chosen"][method]
                ax.scatter([_ppl(chosen) / base], [100 * chosen["reported"][name]["strict"]], s=90, facecolors="none",
                           edgecolors="black", linewidths=1.5)
            ax.axvline(1 + budget, color="gray", linestyle="--", linewidth=1)
            right = 1 + 3.5 * budget  # the region where choices happen; farther candidates are counted in the title
            beyond = sum(_ppl(c) / base > right for cs in result["candidates"].values() for c in cs)
            ax.set_xlim(min(0.99, min((_ppl(c) / base for cs in result["candidates"].values() for c in cs), default=1) - 0.005), right)
            ax.set_xlabel("perplexity / baseline (heldout_tuning)")
            ax.set_ylabel(f"{name} strict %")
            ax.set_title(f"seed {seed}: {name} ({beyond} candidates beyond x = {right:.2f})", fontsize=9)
            if row == 0 and column == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Every candidate (circled: chosen on the tuning split; dashed: budget)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_front(candidates: list[dict], baseline_perplexity: float, name: str = "memorized_validation") -> list[dict]:
    """The candidates no other candidate beats on both axes -- sweep perplexity ratio and ``name``'s strict
    recitation (both lower is better) -- sorted by perplexity; ties on both axes keep the first."""
    import math

    points = sorted(((c for c in candidates if math.isfinite(_ppl(c)))), key=lambda c: (_ppl(c), c["reported"][name]["strict"]))
    front, best = [], float("inf")
    for c in points:
        value = c["reported"][name]["strict"]
        if value < best:
            front.append({"setting": candidate_setting(c), "perplexity_ratio": _ppl(c) / baseline_perplexity, name: value,
                          "quotes": c["reported"]["quotes"]["strict"], "memorized_tuning": c["memorized_tuning"]["strict"]})
            best = value
    return front


def pareto_lines(per_seed: dict[int, dict]) -> list[str]:
    lines = ["", "## Pareto fronts (every candidate of each sweep; perplexity / baseline on heldout_tuning vs validation strict %; "
             "no other candidate of the method is better on both)", "", "| method | seed | front: perplexity ratio -> val strict % "
             "(quotes %) |", "|---|---|---|"]
    for method in ("kfac", "svd", "bsn"):
        for seed, result in sorted(per_seed.items()):
            front = pareto_front(result["candidates"][method], result["baseline_sweep_perplexity"])
            lines.append(f"| {method} | {seed} | " + "; ".join(f"{p['perplexity_ratio']:.3f} -> {100 * p['memorized_validation']:.0f} "
                                                           f"({100 * p['quotes']:.0f})" for p in front) + " |")
    return lines


def by_budget_summary(per_seed: dict[int, dict]) -> dict:
    """Per budget and method: cells over seeds; per budget: paired tests K-FAC vs each other method on val and quotes."""
    seeds = sorted(per_seed)
    budgets = list(per_seed[seeds[0]].get("by_budget", {}))
    out = {}
    for budget in budgets:
        rows = {m: [per_seed[s]["by_budget"][budget][m] for s in seeds] for m in ("kfac", "svd", "bsn")}
        entry = {"methods": {}, "tests": {}}
        for method, values in rows.items():
            entry["methods"][method] = {
                "settings": [v["setting"] for v in values], "rule_met": [v["rule_met"] for v in values],
                "perplexity_ratio": _plain_cell([v["perplexity_ratio"] for v in values]),
                **{name: _percent_cell([_count(v[name], v["n"][name]) for v in values])
                   for name in ("memorized_validation", "quotes")},
                "memorized_tuning": over_seeds([v["memorized_tuning"] for v in values], bounds=(0.0, 1.0))}
        for other in ("svd", "bsn"):
            for name in ("memorized_validation", "quotes"):
                entry["tests"][f"kfac - {other} {name}"] = paired_over_seeds([v[name] for v in rows["kfac"]], [v[name] for v in rows[other]])
        out[budget] = entry
    return out


def _test_text(test: dict) -> str:
    if test["p_value"] is None:
        return f"{100 * test['mean_difference']:+.1f} (p undefined)"
    verdict = " **K-FAC lower**" if test["p_value"] < SIGNIFICANCE and test["mean_difference"] < 0 else (
        " **K-FAC higher**" if test["p_value"] < SIGNIFICANCE else "")
    return f"{100 * test['mean_difference']:+.1f}, p = {test['p_value']:.3f}{verdict}"


def by_budget_lines(per_seed: dict[int, dict]) -> list[str]:
    summary = by_budget_summary(per_seed)
    if not summary:
        return []
    lines = ["", "## Matched perplexity at several budgets (each method chosen by the same rule on the tuning split at each budget; "
             "recitation from the sweep's scoring; paired t test over seeds of K-FAC minus the other method, in points)", "",
             "| budget | method | settings per seed | perplexity / baseline | val strict | quotes strict | forget (tuning) strict |",
             "|---|---|---|---|---|---|---|"]
    for budget, entry in summary.items():
        for method, cell in entry["methods"].items():
            met = "" if all(cell["rule_met"]) else " (rule not met at a seed: least-bad candidate)"
            lines.append(f"| +{100 * float(budget):g}% | {method} | " + "; ".join(cell["settings"]) + met + " | "
                         f"{_fmt(cell['perplexity_ratio'], False, 3)} | {_fmt(cell['memorized_validation'])} | {_fmt(cell['quotes'])} | "
                         f"{_fmt(cell['memorized_tuning'])} |")
    lines += ["", "| budget | K-FAC - SVD, val | K-FAC - SVD, quotes | K-FAC - BSN, val | K-FAC - BSN, quotes |", "|---|---|---|---|---|"]
    for budget, entry in summary.items():
        t = entry["tests"]
        lines.append(f"| +{100 * float(budget):g}% | " + " | ".join(_test_text(t[f"kfac - {o} {n}"]) for o in ("svd", "bsn")
                                                                    for n in ("memorized_validation", "quotes")) + " |")
    return lines


def edit_size_lines(summary: dict) -> list[str]:
    cells = ["edit relative_frobenius_mean", "edit relative_frobenius_min", "edit relative_frobenius_max", "edit entries_changed_mean"]
    if not all(c in summary[m]["cells"] for m in ("kfac", "svd", "bsn") for c in cells):
        return []
    lines = ["", "## Edit sizes (per target matrix: ||W' - W||_F / ||W||_F and the fraction of entries changed; mean, min and max "
             "over the matrices, then over seeds)", "", "| method | " + " | ".join(c.replace("edit ", "") for c in cells) + " |",
             "|---|" + "---|" * len(cells)]
    for method in ("kfac", "svd", "bsn"):
        lines.append(f"| {method} | " + " | ".join(_fmt(summary[method]["cells"][c], False, 3) for c in cells) + " |")
    return lines


def plot_relearning(per_seed: dict[int, dict], path: Path) -> None:
    """Relearning curves: strict recitation (mean over seeds; each seed as a thin line) against steps k, per
    relearning source and learning rate (columns) and measured set (rows), one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(per_seed)
    keys = list(per_seed[seeds[0]]["methods"]["baseline"]["checks"]["relearn"])
    rows = ("memorized_tuning", "memorized_validation", "quotes", "control_sequences")
    colors = {"baseline": "black", "kfac": "tab:blue", "svd": "tab:orange", "bsn": "tab:green"}
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(3.3 * len(keys), 2.5 * len(rows)), squeeze=False, sharex="col")
    for column, key in enumerate(keys):
        for row, name in enumerate(rows):
            ax = axes[row][column]
            for method in METHOD_ORDER:
                runs = [per_seed[s]["methods"][method]["checks"]["relearn"][key] for s in seeds]
                steps = runs[0]["steps"]
                if name not in runs[0]["sets"]:
                    continue
                values = [[100 * point["strict"] for point in run["sets"][name]] for run in runs]
                for series in values:
                    ax.plot([max(k, 0.5) for k in steps], series, color=colors[method], alpha=0.25, linewidth=0.8)
                mean = [sum(v[i] for v in values) / len(values) for i in range(len(steps))]
                ax.plot([max(k, 0.5) for k in steps], mean, color=colors[method], marker="o", markersize=3, label=method)
            ax.set_xscale("log")
            ax.set_ylim(-3, 103)
            if row == 0:
                ax.set_title(key, fontsize=9)
            if column == 0:
                ax.set_ylabel(f"{name} strict %", fontsize=8)
            if row == len(rows) - 1:
                ax.set_xlabel("relearning steps k", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Relearning curves (thick: mean over seeds; thin: each seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(summary: dict, cells: list[str], percent: set[str]) -> list[str]:
    lines = ["| method | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for method in METHOD_ORDER:
        source = {**summary[method]["cells"], **summary[method]["attacks"]}
        lines.append(f"| {method} | " + " | ".join(_fmt(source[c], c in percent, 1 if c in percent else 3) for c in cells) + " |")
    return lines


def command_line(config) -> str:
    """``unmemorize compare`` with every setting that differs from its default (the quick grids included)."""
    from dataclasses import fields

    parts = ["unmemorize compare"]
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("out", "overwrite", "reuse") or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        parts.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return " ".join(parts)


def write_compare_report(per_seed: dict[int, dict], out: Path, config) -> dict:
    seeds = sorted(per_seed)
    summary = summarize(per_seed)
    claim = paper_claim(per_seed, summary)
    survives = survival(per_seed)
    plot_pareto(per_seed, out / "pareto.png", config.ppl_budget)
    plot_relearning(per_seed, out / "relearning.png")
    first = per_seed[seeds[0]]
    n = {name: first["methods"]["baseline"][name]["n"] for name in ("memorized_validation", "quotes", "memorized_tuning")}
    lines = [f"# K-FAC vs SVD vs BalancedSubnet on the testbed ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
             f"Command: `{command_line(config)}`. Every method is chosen by the same rule on the tuning split "
             f"({first['config']['selection_rule']}); the validation split (n={n['memorized_validation']} per seed) and the quotes "
             f"(n={n['quotes']}) are never used for a choice. BSN's forget set is the tuning split (n={n['memorized_tuning']}); its "
             f"retain set and K-FAC's factors are the same factor data ({config.factor_data}). Cells: mean over seeds "
             "[95% t interval of the mean over seeds, clipped to [0, 100] for percentages] (each seed's value): seeds, not items, "
             "are the unit of replication.", "",
             f"Grids: K-FAC rho {config.rhos} x the layer and projection sets; SVD energy {config.energies} x the same sets; BSN "
             f"masks {' / '.join(v.replace(',', '+') for v in config.bsn_projections.split(';'))} x ratio {config.bsn_ratios} x "
             f"alpha {config.bsn_alphas} x score lr {config.bsn_lrs} x epochs {config.bsn_epochs}.", ""]
    lines += ["## Settings chosen per seed", "", "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | rule met |",
              "|---|" + "---|" * (len(seeds) + 1)]
    for method in ("kfac", "svd", "bsn"):
        lines.append(f"| {method} | " + " | ".join(summary[method]["setting"][str(s)] for s in seeds) + " | "
                     + ", ".join(f"{s}: {'yes' if summary[method]['rule_met'][str(s)] else '**no**'}" for s in seeds) + " |")
    lines += ["", "## Table 1 analogue (memorization %, perplexity on the reported held-out text, nDCG@10 against the baseline)", ""]
    percent = {"val strict", "val loose", "quotes strict", "quotes loose", "forget (tuning) strict", "control seq strict"}
    lines += _table(summary, ["val strict", "val loose", "quotes strict", "quotes loose", "forget (tuning) strict", "control seq strict",
                              "perplexity", "nDCG@10"], percent)
    matched = matched_points(per_seed)
    lines += ["", "## At matched perplexity (the paper's matching: per seed, the SVD and BSN candidates whose sweep perplexity is "
              "closest to the chosen K-FAC edit's; recitation from the sweep, no attacks)", "",
              "| method | settings per seed | sweep perplexity / baseline | forget (tuning) strict | val strict | quotes strict |",
              "|---|---|---|---|---|---|"]
    for method, rows in matched.items():
        cells = []
        for cell in ("forget (tuning) strict", "val strict", "quotes strict"):
            cells.append(_fmt(_percent_cell([_count(r[cell], r["n"][cell]) for r in rows.values()])))
        ratios = _fmt(_plain_cell([r["sweep_perplexity_ratio"] for r in rows.values()]), False, 3)
        lines.append(f"| {method} | " + "; ".join(r["setting"] for r in rows.values()) + f" | {ratios} | " + " | ".join(cells) + " |")
    lines += ["", f"## Stress test (mean exact-match length in tokens, original vs perturbed prompts, t = {config.stress_t}) "
              "and task retention (edited / baseline accuracy, learned tasks only)", ""]
    lines += _table(summary, ["stress val original", "stress val perturbed", "stress quotes original", "stress quotes perturbed"]
                    + [f"retention {c}" for c in CATEGORIES], set())
    lines += ["", "## The paper's claim", ""]
    for seed, row in claim["per_seed"].items():
        lines.append(f"- seed {seed}, the rule's choices (same budget): quotes strict K-FAC {100 * row['kfac_quotes']:.1f}% vs BSN {100 * row['bsn_quotes']:.1f}% "
                     f"({'K-FAC removes more' if row['quotes_half_holds'] else 'K-FAC does not remove more'}); forget set strict "
                     f"BSN {100 * row['bsn_forget']:.1f}% vs K-FAC {100 * row['kfac_forget']:.1f}% "
                     f"({'BSN removes more' if row['forget_half_holds'] else 'BSN does not remove more'}).")
    for seed, row in claim["matched_perplexity"].items():
        lines.append(f"- seed {seed}, at matched perplexity (table above): K-FAC removes more quotes than BSN: "
                     f"{'yes' if row['quotes_half_holds'] else 'no'}; BSN removes more of its forget set: "
                     f"{'yes' if row['forget_half_holds'] else 'no'}.")
    lines.append(f"- {claim_line(claim)}")
    lines += by_budget_lines(per_seed)
    lines += pareto_lines(per_seed)
    lines += edit_size_lines(summary)
    lines += ["", "## Attacks: strict % after relearning (cells: mean [95% t interval over seeds] (each seed's value); baseline = "
              "the unedited model under the same attack)", "", "![relearning](relearning.png)", ""]
    attack_keys = list(first["methods"]["baseline"]["checks"]["relearn"])
    for key in attack_keys:
        run = first["methods"]["baseline"]["checks"]["relearn"][key]
        steps, measured = run["steps"], list(run["sets"])
        source = key.split("@")[0]
        relearned = {"tuning_items": "memorized_tuning", "control_items": "control_sequences"}.get(source)
        shown = ([relearned] if relearned else []) + [m for m in ("memorized_validation", "quotes") if m != relearned]
        if source != "control_items":
            shown += [m for m in ("control_sequences",) if m in measured and m != relearned]
        cells = [f"{key} k={k} {name}" for k in steps for name in shown]
        what = {"clean": "clean factor-data text (no memorized item)",
                "tuning_items": "the tuning half of the memorized items (BSN's forget set): the relearned items (memorized_tuning) "
                                "and the held-out ones",
                "control_items": "the never-trained control sequences: the positive control, how fast each model learns new random "
                                 "sequences"}.get(source, source)
        lines += [f"**{key}**: relearning on {what}; columns: k steps, set", ""]
        header = [c.replace(f"{key} ", "").replace("memorized_validation", "val").replace("memorized_tuning", "relearned tuning")
                  .replace("control_sequences", "control seq") for c in cells]
        body = _table(summary, cells, set(cells))
        lines += ["| method | " + " | ".join(header) + " |"] + body[1:] + [""]
    widths = list(first["methods"]["baseline"]["checks"].get("quantization", {}).get("by_bits", {}))
    if widths:
        cells = [f"{w} {n_}" for w in widths for n_ in ("memorized_validation", "quotes", "memorized_tuning")]
        lines += ["**Low-bit weight quantization** (optimum-quanto, weights only: int4 affine in groups of 128, int8 symmetric per "
                  "output row; the attack of Zhang et al., ICLR 2025): strict % on the quantized copy, and the largest relative "
                  "Frobenius change of a linear weight", ""]
        header = [c.replace("memorized_validation", "val").replace("memorized_tuning", "tuning") for c in cells]
        body = _table(summary, cells + [f"{w} weight change" for w in widths], set(cells))
        lines += ["| method | " + " | ".join(header + [f"{w} max rel. change" for w in widths]) + " |"] + body[1:] + [""]
    sets = ("memorized_validation", "quotes", "control_sequences", "control_quotes")
    cells = [f"sample {kind} {n_}" for n_ in sets for kind in ("exact", "items")]
    lines += [f"**Sampled extraction** ({config.samples} samples per item, T = 1, top-k 40): per set, % of samples equal to the "
              "suffix and % of items with at least one exact sample (each: mean over seeds [t interval over seeds] (per seed)); "
              "then the gold suffix's mean log-likelihood per token", ""]
    body = _table(summary, cells, set(cells))
    lines += ["| method | " + " | ".join(c.replace("sample exact ", "samples ").replace("sample items ", "items ") for c in cells) + " |"]
    lines += body[1:] + [""]
    cells = [f"sample loglik {n_}" for n_ in ("memorized_validation", "quotes", "control_sequences", "control_quotes")]
    body = _table(summary, cells, set())
    lines += ["| method | " + " | ".join(c.replace("sample loglik ", "log-lik ") for c in cells) + " |"] + body[1:] + [""]
    cells = [f"bf16 {n_}" for n_ in ("memorized_validation", "quotes")]
    body = _table(summary, cells, set(cells))
    lines += ["**bf16 round trip** of every weight (kept for comparison with earlier reports; not a recognised attack, the "
              "quantization above is): strict %", "", "| method | " + " | ".join(cells) + " |"] + body[1:] + [""]
    lines += ["## Does the removal survive? (restored = (after - edited) / (baseline - edited) of strict recitation after the "
              f"largest k, mean over seeds; '-' where the edit removed fewer than {MIN_REMOVED} items at every seed; the baseline "
              "after the same attack is in the tables above)", "",
              "| method | set | " + " | ".join(key for key in attack_keys + [f"quant {w}" for w in widths] + ["bf16"]) + " |",
              "|---|---|" + "---|" * (len(attack_keys) + len(widths) + 1)]
    for method, row in survives.items():
        for name in ("memorized_validation", "quotes"):
            cells = [row[f"{name} {attack}"] for attack in attack_keys + [f"quant {w}" for w in widths] + ["bf16"]]
            lines.append(f"| {method} | {name} | " + " | ".join("-" if r["mean"] is None else f"{r['mean']:.2f} ({r['verdict']})"
                                                              for r in cells) + " |")
    timing = [per_seed[s]["timing"] for s in seeds]
    lines += ["", "## Wall time (this machine; seconds)", "",
              "One K-FAC edit = factors + eigendecomposition + applying the chosen plan; one BSN edit = training the chosen "
              "setting's masks. The sweeps include scoring every candidate (recitation and perplexity).", "",
              "| seed | K-FAC factors + eigh | K-FAC chosen plan applied | K-FAC sweep incl. factors and scoring | BSN chosen setting: training "
              "| BSN all settings: training | BSN sweep incl. scoring |", "|---|---|---|---|---|---|---|"]
    for s, t in zip(seeds, timing):
        lines.append(f"| {s} | {t['kfac_factors_seconds']:.1f} | {t['kfac_chosen_edit_seconds']:.2f} | {t['kfac_pipeline_seconds']:.1f} | "
                     f"{t['bsn_chosen_training_seconds']:.1f} | {t['bsn_training_seconds_all_settings']:.1f} ({t['bsn_settings']} settings) | "
                     f"{t['bsn_sweep_seconds']:.1f} |")
    lines += ["", "![pareto](pareto.png)", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    record = {"seeds": seeds, "config": {k: v for k, v in vars(config).items()}, "summary": summary, "paper_claim": claim,
              "matched_perplexity": matched, "by_budget": by_budget_summary(per_seed),
              "pareto_fronts": {m: {str(s): pareto_front(per_seed[s]["candidates"][m], per_seed[s]["baseline_sweep_perplexity"])
                                    for s in seeds} for m in ("kfac", "svd", "bsn")},
              "survival": survives, "timing": {str(s): t for s, t in zip(seeds, timing)}, "provenance": provenance()}
    write_json(out / "results.json", record)
    print(text)
    return record
