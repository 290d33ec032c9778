"""Writing a band analysis: ``analysis.json``, ``analysis.md``, one Figure-2 plot per compared source,
and, given retention numbers, the Figure-4 scatter with its rank correlation."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..jsonio import write_json
from .retention import example_table
from .plots import comparison_label, plot_band_ratios, plot_loading_vs_retention, ratio_table, verdict_table
from .run import LEFT_OUT_REASON, retention_correlation, summarize, task_loading, task_loading_counts


def retention_from_file(path: str | Path) -> dict[str, float]:
    """{source: retention} from a flat JSON mapping, or from a demo ``results.json`` (method ``kfac``).

    From a demo file: learned tasks (baseline >= 50%) by task name, plus ``memorized`` (the
    memorized validation set's strict accuracy retention) and ``quotes``.
    """
    from ..errors import UnmemorizeError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UnmemorizeError(f"--retention {path}: unreadable ({exc})") from None
    if isinstance(data, dict) and "methods" in data:
        try:
            method = data["methods"]["kfac"]
            retention = {name: task["retention"] for name, task in method["tasks"].items() if task.get("learned", True)}
            categories = method.get("category_retention", {})
        except (KeyError, TypeError, AttributeError) as exc:
            raise UnmemorizeError(f"--retention {path}: not a demo results.json with a 'kfac' method and task retentions "
                                  f"(missing {exc})") from None
        for source, key in (("memorized", "memorized_validation"), ("quotes", "quotes")):
            if categories.get(key) is not None:
                retention[source] = categories[key]
        return {k: v for k, v in retention.items() if isinstance(v, (int, float))}
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise UnmemorizeError(f"--retention {path}: expected {{\"task\": retention, ...}} or a demo results.json")
    return {k: float(v) for k, v in data.items()}


def summary_table(summaries: dict[str, dict], reference: str = "clean", unit: str = "layers") -> list[str]:
    """Markdown rows of ``summarize`` results, {source: {basis: summary}}: one row per comparison and basis.

    Mean and max separation are over the finite separations; the last two columns count the
    modules they leave out: +inf (top-10% ratio exactly 0, the strongest low-curvature lean) and
    undefined (NaN, see ``run.LEFT_OUT_REASON``). Works on summaries read back from analysis.json
    (non-finite numbers are null there)."""
    lines = [f"| comparison | basis | {unit} | bottom-50% > 1 | top-10% < 1 | both | mean separation (finite) | max separation "
             "(finite) | +inf (top-10% ratio 0) | -inf | left out (undefined) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, per_basis in summaries.items():
        for kind, s in per_basis.items():
            lines.append(f"| {comparison_label(source, reference)} | {kind} | {s['modules']} | {s['bottom50_above_1']} | "
                         f"{s['top10_below_1']} | {s['both']} | {_number(s['mean_separation'])} | {_number(s['max_separation'])} | "
                         f"{s.get('plus_inf', '?')} | {s.get('minus_inf', '?')} | {s.get('left_out', '?')} |")
    return lines


def _number(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _loading_cell(counts: dict) -> str:
    """'0.123', or '0.123 (2 +inf, 1 left out)' when some modules are not in the mean."""
    notes = [f"{counts[k]} {label}" for k, label in (("plus_inf", "+inf"), ("minus_inf", "-inf"), ("left_out", "left out")) if counts[k]]
    return _number(counts["mean"]) + (f" ({', '.join(notes)})" if notes else "")


def loading_table(result: dict, sources: list[str], modules: list[str] | None = None) -> str:
    """Markdown: per source and basis, the mean separation over the finite modules, with the
    count of +inf, -inf and left-out (undefined) modules next to it when there are any."""
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    loadings = {kind: task_loading_counts(result, kind, modules) for kind in basis_names}
    lines = ["| source | " + " | ".join(f"{k} loading" for k in basis_names) + " |", "|---|" + "---|" * len(basis_names)]
    for source in sources:
        lines.append(f"| {source} | " + " | ".join(_loading_cell(loadings[k][source]) for k in basis_names) + " |")
    return "\n".join(lines)


def write_analysis(result: dict, out: str | Path, compared: list[str], tasks: list[str] = (), retention: dict | None = None,
                   modules_for_tasks: list[str] | None = None, examples: dict | None = None) -> dict:
    """Write every artefact into ``out``; returns {"summary", "correlation"} (also stored in the JSON).

    ``compared``: sources (or ``"a/b"`` keys from ``add_comparison``) that get a section and a
    Figure-2 plot. Correlations of loading vs retention are computed over every source with a
    retention ("all") and over the task sources only ("tasks"). ``examples``: the per-example
    result of ``retention.example_retention``, tabled and stored.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    summaries = {source: summarize(result, source) for source in compared}
    correlations = {}
    if retention:
        for kind in basis_names:
            loading = task_loading(result, kind, modules_for_tasks)
            correlations[kind] = {"all": retention_correlation(loading, retention),
                                  "tasks": retention_correlation({k: v for k, v in loading.items() if k in tasks}, retention)}
    text = ["# Curvature band analysis", "",
            f"Counted positions: {json.dumps(result['counted_positions'])}. Reference: `{result['reference']}`. "
            "Band ratio = mean band activation on the source / on the reference; separation = ln(r_bottom50) - ln(r_top10). "
            "Means are over the finite separations; a top-10% ratio of exactly 0 gives +inf (the strongest lean on low "
            f"curvature), counted in its own column; modules left out: {LEFT_OUT_REASON}.", ""]
    for source in compared:
        slug = source.replace("/", "_vs_")
        plot_band_ratios(result, source, out / f"bands_{slug}.png")
        text += [f"## {comparison_label(source, result['reference'])}", "",
                 *summary_table({source: summaries[source]}, result["reference"]), "", f"![bands](bands_{slug}.png)", "", verdict_table(result, source), "",
                 "Band ratios (top10 / 10-25 / 25-50 / bottom50):", "", ratio_table(result, source), ""]
    others = [s for s in result["counted_positions"] if s != result["reference"]]
    text += ["## Low-curvature loading per source", "",
             "Mean separation against the reference over " + (", ".join(modules_for_tasks) if modules_for_tasks else "all analysed modules") + ".",
             "", loading_table(result, others, modules_for_tasks), ""]
    for kind, pair in correlations.items():
        corr = pair["all"]
        if corr["n"] >= 2:
            plot_loading_vs_retention(corr, out / f"loading_vs_retention_{kind}.png",
                                      f"{kind}: Spearman rho = {corr['spearman']:.2f} (n = {corr['n']}); tasks only: "
                                      f"{pair['tasks']['spearman']:.2f} (n = {pair['tasks']['n']})")
            left_out = f" (left out, no finite loading: {', '.join(corr['left_out'])})" if corr["left_out"] else ""
            text += [f"### Retention vs loading, {kind} basis: Spearman rho = {corr['spearman']:.3f} over {corr['n']} sources, "
                     f"{pair['tasks']['spearman']:.3f} over the {pair['tasks']['n']} tasks alone{left_out}", "",
                     f"![loading vs retention](loading_vs_retention_{kind}.png)", ""]
    if examples:
        text += ["## Per example: do rows the edit breaks lean on low curvature?", "",
                 "Rows the base model answers correctly; loading = mean over the edited modules of ln(a_bottom50 / clean) - "
                 "ln(a_top10 / clean) over the row's positions; AUC = P(loading of a lost row > loading of a kept row), 0.5 = "
                 "no information.", "", example_table(examples), ""]
    extra = {"summary": summaries, "correlation": correlations, "tasks": list(tasks), **({"examples": examples} if examples else {})}
    saved = {k: v for k, v in result.items() if k != "per_sequence"}
    write_json(out / "analysis.json", {**saved, **extra})  # strict JSON: NaN and +-inf become null (counts in "summary")
    (out / "analysis.md").write_text("\n".join(text))
    return extra


def print_summary(extra: dict) -> None:
    """The headline numbers of ``write_analysis``'s return value, one line each."""
    for source, summary in extra["summary"].items():
        for kind, s in summary.items():
            counted = "" if s.get("in_mean", s["modules"]) == s["modules"] else (
                f" over {s['in_mean']} finite ({s['plus_inf']} +inf, {s['minus_inf']} -inf, {s['left_out']} left out: undefined)")
            print(f"{comparison_label(source)}, {kind}: {s['both']}/{s['modules']} layers with bottom-50% > 1 and top-10% < 1; "
                  f"mean separation {_number(s['mean_separation'])}{counted}")
    for kind, pair in extra["correlation"].items():
        print(f"retention vs low-curvature loading ({kind}): Spearman {pair['all']['spearman']:.3f} over {pair['all']['n']} sources, "
              f"{pair['tasks']['spearman']:.3f} over {pair['tasks']['n']} tasks")
    for kind, block in extra.get("examples", {}).items():
        pooled = block["pooled"]
        print(f"per example ({kind}): {pooled['lost']} of {pooled['lost'] + pooled['kept']} correct rows lost; "
              f"AUC(loading: lost > kept) = {pooled['auc']:.3f}")

