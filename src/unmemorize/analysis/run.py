"""Band activation ratios of memorized / task / clean inputs, per layer and basis (paper Figures 2 and 4).

``band_analysis(model, modules, bases, sources, reference="clean")`` runs each source through
the model once, with a forward pre-hook on every analysed module: the hook reads the module's
input at the counted positions, projects it on each basis of ``bands.py`` and adds the band
activations a_b(x) to a running mean -- no hidden state is stored, so 7B layers and long
sources fit in memory. Read-outs are applied in float64 on CPU and float32 on accelerators.

Result (JSON-ready)::

    {"bands": [...], "reference": "clean", "counted_positions": {source: n},
     "modules": {name: {"layer": L, "projection": p, "d_in": n,
                        "bases": {basis: {"mean": {source: [a_b]}, "ratio": {source: [a_b / a_b(clean)]},
                                          "separation": {source: ln r_bottom50 - ln r_top10}}}}}}

``add_comparison`` adds ratios between any two sources (memorized vs never-trained controls is
the control the paper lacks: it separates memorization from mere distribution shift).
``summarize`` counts, per basis and source, the layers showing the paper's pattern (bottom-50%
ratio > 1 and top-10% ratio < 1) and the mean separation (over the finite ones; +inf, -inf and
undefined separations are counted, never silently dropped); ``task_loading`` and
``retention_correlation`` turn per-task separations into the Figure 4 claim (tasks leaning on
low-curvature bands lose more after the edit: a negative Spearman correlation);
``sequence_loading`` and ``auc`` do it per example (``retention.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..basis import ModuleBasis
from ..errors import UnmemorizeError
from ..matrices import model_matrices
from ..targets import layer_index
from .bands import BAND_EDGES, BAND_NAMES, BASES, DEFAULT_FLOOR, BandMeans, band_ratios, build_readout, rank_correlation, separation_score


@dataclass
class AnalyzeConfig:
    """Settings of ``unmemorize analyze`` (saved in its analysis.json)."""

    bases: str = field(default="whitened,pairs,svd", metadata={"help": "Comma-separated bases: whitened (K-FAC, default "
                       "panel: SVD of G^1/2 W A^1/2), pairs (K-FAC, the paper's A eigenbasis with lambda*mu pair bands), svd."})
    positions: str = field(default="auto", metadata={"help": "Counted positions: next_token (text default), continuation, "
                           "all; images: cls (default) or all. 'auto' picks next_token / cls."})
    skip_first: int = field(default=0, metadata={"help": "Leave out each sequence's first k positions (1: the attention-sink "
                            "position). Text only."})
    seq_len: int = field(default=128, metadata={"help": "Longest sequence or window, in tokens."})
    max_tokens: int = field(default=20_000, metadata={"help": "Token budget per source (per task for task files); images: "
                            "counted positions per source."})
    batch_size: int = field(default=16, metadata={"help": "Sequences or images per forward pass."})
    floor: float = field(default=DEFAULT_FLOOR, metadata={"help": "Whitened basis: mu is clamped at floor * mu_max before A^-1/2."})
    modules_per_pass: int = field(default=0, metadata={"help": "Analyse this many modules per pass over the sources; 0: as many "
                                  "as --readout-memory-gb allows."})
    readout_memory_gb: float = field(default=4.0, metadata={"help": "With --modules-per-pass 0: largest total size of the "
                                     "read-outs held at once (one pass over the sources per group of modules)."})

    def basis_list(self) -> list[str]:
        names = [b.strip() for b in self.bases.split(",") if b.strip()]
        unknown = [b for b in names if b not in BASES]
        if unknown or not names:
            raise UnmemorizeError(f"--bases {self.bases!r}: choose from {', '.join(BASES)}")
        return names

    def validate(self) -> None:
        self.basis_list()
        if self.positions not in ("auto", "next_token", "continuation", "all", "cls"):
            raise UnmemorizeError(f"--positions {self.positions!r}: choose auto, next_token, continuation, all or cls")
        if self.modules_per_pass < 0 or self.skip_first < 0:
            raise UnmemorizeError("--modules-per-pass and --skip-first must be >= 0")
        if not self.readout_memory_gb > 0:
            raise UnmemorizeError("--readout-memory-gb must be > 0")
        if self.seq_len < 2:
            raise UnmemorizeError("--seq-len must be >= 2 (a sequence needs a position that predicts a next token)")
        for name in ("max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UnmemorizeError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.floor < 1:
            raise UnmemorizeError("--floor must be in (0, 1)")


Batches = Callable[[], Iterable[tuple[dict, torch.Tensor]]]


def _projection_name(module_name: str) -> str:
    index = layer_index(module_name)
    if index is None:
        return module_name
    return module_name.split(f".{index}.", 1)[1]


@torch.no_grad()
def band_analysis(model, modules: list[str], bases: dict[str, ModuleBasis], sources: dict[str, Batches], reference: str = "clean",
                  basis_names: list[str] = ("whitened", "pairs", "svd"), floor: float = DEFAULT_FLOOR,
                  per_sequence: Iterable[str] = (), modules_per_pass: int = 0, readout_memory_gb: float = 4.0) -> dict:
    """Band means and ratios for every module, basis and source (see module doc).

    ``sources`` maps a name to a function returning batches of (model inputs, counted mask);
    ``reference`` names the source the ratios divide by. For the sources named in
    ``per_sequence`` the result also holds ``result["per_sequence"][source][module][basis]``: a
    (sequences, bands) float64 tensor of each sequence's mean a_b over its counted positions, NaN
    for a sequence left with none (not JSON; ``write_analysis`` leaves it out).

    Memory: each module holds one (k, d_in) read-out per basis on the model's device, k <= d_in
    (float32 on accelerators: ~540 MB for the three bases of a 7B gate/up, ~1 GB for a down
    projection). Modules are analysed in groups, one pass over the sources per group:
    ``modules_per_pass = k > 0`` modules at a time, or by default as many consecutive modules as
    fit in ``readout_memory_gb``.
    """
    if reference not in sources:
        raise UnmemorizeError(f"the reference source {reference!r} is missing")
    named = model_matrices(model)
    missing = [m for m in modules if m not in named]
    if missing:
        raise UnmemorizeError(f"modules not in the model: {', '.join(missing[:5])}")
    experts = [m for m in modules if named[m].kind == "expert"]
    if experts:  # each expert reads only its routed tokens: the readouts would need the experts' own instrumentation
        raise UnmemorizeError(f"the band analysis reads inputs of linear modules; {experts[0]} is an expert's matrix "
                              "(choose the attention or dense MLP matrices, or a dense model)")
    needs_kfac = any(b != "svd" for b in basis_names)
    if needs_kfac:
        absent = [m for m in modules if m not in bases]
        if absent:
            raise UnmemorizeError(f"no K-FAC factors for {', '.join(absent[:5])}; collect them or use --bases svd")
    per_sequence = set(per_sequence)
    if per_sequence - set(sources):
        raise UnmemorizeError(f"per_sequence names unknown sources: {sorted(per_sequence - set(sources))}")
    device = next(model.parameters()).device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    means = {(s, m, k): BandMeans(len(BAND_NAMES)) for s in sources for m in modules for k in basis_names}
    counted: dict[str, int] = {}
    current = {"source": None, "mask": None}
    sequence_sums: dict[tuple, list[torch.Tensor]] = {}

    def hook_for(name, readouts):
        def hook(module, args):
            inputs = args[0]
            mask = current["mask"].to(inputs.device)
            if mask.shape != inputs.shape[:-1]:
                raise UnmemorizeError(f"{name}: input shape {tuple(inputs.shape)} does not match the position mask {tuple(mask.shape)}")
            rows = inputs[mask].to(dtype)
            if current["source"] in per_sequence:
                owners = mask.nonzero()[:, 0]
                counts = mask.sum(1, keepdim=True).to(torch.float64)
            for kind in basis_names:
                activations = readouts[kind].band_activations(rows).double()
                means[current["source"], name, kind].update(activations)
                if current["source"] in per_sequence:
                    sums = torch.zeros(mask.shape[0], activations.shape[1], dtype=torch.float64, device=activations.device)
                    sums.index_add_(0, owners, activations)
                    per_row = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)  # no counted position: NaN
                    sequence_sums.setdefault((current["source"], name, kind), []).append(per_row.cpu())
        return hook

    was_training = model.training
    model.eval()
    try:
        for group in _module_groups(named, modules, basis_names, modules_per_pass, readout_memory_gb, dtype):
            handles = []  # one pass over every source per group of modules
            for name in group:
                readouts = {}
                for kind in basis_names:
                    readout = build_readout(kind, named[name].weight(), bases.get(name), BAND_EDGES, floor)
                    readout.directions = readout.directions.to(device, dtype)
                    readout.band_weights = readout.band_weights.to(device, dtype)
                    readouts[kind] = readout
                handles.append(named[name].module.register_forward_pre_hook(hook_for(name, readouts)))
            try:
                for source, batches in sources.items():
                    current["source"] = source
                    counted[source] = 0
                    for inputs, mask in batches():
                        current["mask"] = mask
                        model(**{k: v.to(device) for k, v in inputs.items()})
                        counted[source] += int(mask.sum())
            finally:
                for handle in handles:
                    handle.remove()
    finally:
        model.train(was_training)
    result = {"bands": list(BAND_NAMES), "band_edges": list(BAND_EDGES), "reference": reference, "counted_positions": counted,
              "modules": {}}
    for name in modules:
        entry = {"layer": layer_index(name), "projection": _projection_name(name), "d_in": named[name].shape[1], "bases": {}}
        for kind in basis_names:
            mean = {s: means[s, name, kind].mean for s in sources}
            ratio = {s: band_ratios(mean[s], mean[reference]) for s in sources if s != reference}
            entry["bases"][kind] = {"mean": mean, "ratio": ratio, "separation": {s: separation_score(r) for s, r in ratio.items()}}
        result["modules"][name] = entry
    if per_sequence:
        result["per_sequence"] = {s: {m: {k: torch.cat(sequence_sums[s, m, k]) for k in basis_names} for m in modules} for s in per_sequence}
    return result


def _module_groups(named, modules, basis_names, modules_per_pass, memory_gb, dtype) -> list[list[str]]:
    if modules_per_pass > 0:
        return [modules[k: k + modules_per_pass] for k in range(0, len(modules), modules_per_pass)]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    groups, size = [[]], 0.0
    for name in modules:
        d_out, d_in = named[name].shape
        rows = {"pairs": d_in}
        need = sum(rows.get(kind, min(d_out, d_in)) * d_in for kind in basis_names) * itemsize / 2**30
        if groups[-1] and size + need > memory_gb:
            groups.append([])
            size = 0.0
        groups[-1].append(name)
        size += need
    return groups


def add_comparison(result: dict, source: str, reference: str) -> str:
    """Add the ratios and separation of ``source`` against another source (e.g. memorized vs
    never-trained controls of the same form); returns the key ``"source/reference"`` used for them."""
    key = f"{source}/{reference}"
    for entry in result["modules"].values():
        for stats in entry["bases"].values():
            if source not in stats["mean"] or reference not in stats["mean"]:
                raise UnmemorizeError(f"cannot compare {source!r} with {reference!r}: both must be analysed sources")
            stats["ratio"][key] = band_ratios(stats["mean"][source], stats["mean"][reference])
            stats["separation"][key] = separation_score(stats["ratio"][key])
    return key


LEFT_OUT_REASON = ("separation undefined (NaN): a band ratio is undefined (the reference's band mean is 0, or the source "
                   "had no counted position) or both the top-10% and bottom-50% ratios are 0")


def separation_mean(separations: list[float]) -> dict:
    """The mean separation over modules, and what it does not average, counted.

    ``mean``/``max`` are over the finite separations (``in_mean`` of them); ``plus_inf`` counts
    modules whose top-10% ratio is exactly 0 (the strongest lean on low curvature, +inf),
    ``minus_inf`` those whose bottom-50% ratio is 0; ``left_out`` counts undefined (NaN) ones,
    for the reason ``LEFT_OUT_REASON``. in_mean + plus_inf + minus_inf + left_out = modules.
    """
    values = [float(v) if v is not None else math.nan for v in separations]
    finite = [v for v in values if math.isfinite(v)]
    return {"mean": sum(finite) / len(finite) if finite else math.nan, "max": max(finite) if finite else math.nan,
            "in_mean": len(finite), "plus_inf": sum(v == math.inf for v in values),
            "minus_inf": sum(v == -math.inf for v in values), "left_out": sum(math.isnan(v) for v in values)}


def summarize(result: dict, source: str) -> dict:
    """Per basis: layers with bottom-50% ratio > 1, with top-10% < 1, with both; the mean and max
    separation over the finite ones, and how many are +inf, -inf or left out (``separation_mean``)."""
    summary = {}
    basis_names = list(next(iter(result["modules"].values()))["bases"])
    for kind in basis_names:
        rows = [m["bases"][kind]["ratio"][source] for m in result["modules"].values()]
        counts = separation_mean([m["bases"][kind]["separation"][source] for m in result["modules"].values()])
        summary[kind] = {
            "modules": len(rows),
            "bottom50_above_1": sum(r[-1] > 1 for r in rows),
            "top10_below_1": sum(r[0] < 1 for r in rows),
            "both": sum(r[-1] > 1 and r[0] < 1 for r in rows),
            "mean_separation": counts["mean"],
            "max_separation": counts["max"],
            "in_mean": counts["in_mean"],
            "plus_inf": counts["plus_inf"],
            "minus_inf": counts["minus_inf"],
            "left_out": counts["left_out"],
            **({"left_out_reason": LEFT_OUT_REASON} if counts["left_out"] else {}),
        }
    return summary


def task_loading_counts(result: dict, basis: str, modules: list[str] | None = None) -> dict[str, dict]:
    """Per source: ``separation_mean`` of its separations (vs the reference) over ``modules``."""
    names = modules or list(result["modules"])
    sources = [s for s in result["modules"][names[0]]["bases"][basis]["separation"] if "/" not in s]
    return {source: separation_mean([result["modules"][n]["bases"][basis]["separation"][source] for n in names])
            for source in sources}


def task_loading(result: dict, basis: str, modules: list[str] | None = None) -> dict[str, float]:
    """Per source: the mean separation (ln r_bottom50 - ln r_top10 vs clean) over the finite ones
    among ``modules``; ``task_loading_counts`` says how many were +inf, -inf or left out."""
    return {source: counts["mean"] for source, counts in task_loading_counts(result, basis, modules).items()}


def sequence_loading(result: dict, source: str, basis: str, modules: list[str] | None = None) -> torch.Tensor:
    """Per sequence of ``source``: mean over modules of ln(a_bottom50 / clean) - ln(a_top10 / clean),
    from ``band_analysis(..., per_sequence=[source])`` (the per-example version of ``task_loading``)."""
    names = modules or list(result["modules"])
    reference = result["reference"]
    terms = []
    for name in names:
        per_row = result["per_sequence"][source][name][basis]
        clean = result["modules"][name]["bases"][basis]["mean"][reference]
        terms.append(torch.log(per_row[:, -1] / clean[-1]) - torch.log(per_row[:, 0] / clean[0]))
    return torch.stack(terms).mean(0)


def auc(positives, negatives) -> float:
    """P(a positive scores above a negative), ties counted 1/2 (the Mann-Whitney U / (n_pos n_neg))."""
    pos, neg = torch.as_tensor(positives, dtype=torch.float64), torch.as_tensor(negatives, dtype=torch.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auc_standard_error(value: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from n_pos positives and n_neg negatives:
    sqrt((A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg)), Q1 = A/(2-A), Q2 = 2A^2/(1+A)."""
    if not positives or not negatives or not math.isfinite(value):
        return float("nan")
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def retention_correlation(loading: dict[str, float], retention: dict[str, float]) -> dict:
    """Spearman rho between low-curvature loading and retention over the sources both name;
    sources with a retention but no finite loading are listed in ``left_out``."""
    both = [n for n in loading if n in retention and retention[n] is not None]
    names = [n for n in both if math.isfinite(loading[n])]
    points = [{"source": n, "loading": loading[n], "retention": retention[n]} for n in names]
    from ..evaluate.intervals import spearman

    test = spearman([p["loading"] for p in points], [p["retention"] for p in points])
    return {"points": points, "n": len(points), "left_out": [n for n in both if n not in names],
            "spearman": rank_correlation([p["loading"] for p in points], [p["retention"] for p in points]),
            "p_value": test["p_value"]}  # two-sided, scipy.stats.spearmanr (None when n < 3 or a side is constant)
