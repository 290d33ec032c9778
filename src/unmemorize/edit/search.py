"""Label-free tuning: the most aggressive K-FAC plan whose clean perplexity stays within a budget.

Choosing layers with memorized examples was the paper's reviewers' main objection. This search
uses clean held-out text only. Candidates are layer sets (each block, the first half, the second
half, all blocks) x projection sets x rho values; each is applied, scored by perplexity on the
held-out windows, and undone. Among candidates with

    perplexity <= ppl_budget x baseline perplexity

the chosen plan removes the most curvature pairs (sum over its modules of pairs dropped; ties go
to the lower perplexity). If none fits, nothing is edited. The whole search is returned.

Settings (``SearchConfig``, the ``--search-*`` options of ``unmemorize edit``): the held-out text
is cut into windows of ``search_seq_len`` tokens, ``search_tokens`` tokens in all (so about
search_tokens / search_seq_len windows), and every layer set x projection set is tried at every
rho of ``search_rhos``: len(rhos) x layer sets x projection sets candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..basis import ModuleBasis
from ..curvature.factors import KFACFactors
from ..errors import UnmemorizeError
from ..evaluate import perplexity
from ..targets import mlp_projections, preset_modules
from .apply import edited
from .plan import rho_list

DEFAULT_RHOS = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


@dataclass
class SearchConfig:
    """Held-out windows and rho grid of the label-free search (saved with its result)."""

    search_seq_len: int = field(default=128, metadata={"help": "--ppl-budget: length of the held-out windows, in tokens."})
    search_tokens: int = field(default=20_000, metadata={"help": "--ppl-budget: held-out tokens every candidate is scored on "
                               "(windows: about tokens / seq-len)."})
    search_rhos: str = field(default=",".join(map(str, DEFAULT_RHOS)), metadata={"help": "--ppl-budget: the rho values tried for "
                             "every layer set x projection set (comma-separated)."})

    def rho_values(self) -> tuple[float, ...]:
        return tuple(rho_list(self.search_rhos, "--search-rhos"))

    def validate(self) -> None:
        self.rho_values()
        if self.search_seq_len < 2:
            raise UnmemorizeError(f"--search-seq-len must be >= 2, got {self.search_seq_len}")
        if self.search_tokens < self.search_seq_len:
            raise UnmemorizeError(f"--search-tokens ({self.search_tokens}) must hold at least one window of --search-seq-len "
                                  f"({self.search_seq_len}) tokens")


def heldout_windows(path: str | Path, tokenizer, model: nn.Module, config: SearchConfig) -> list[list[int]]:
    """The held-out text (file or folder) as windows of ``config.search_seq_len`` tokens,
    ``config.search_tokens`` tokens in all, checked against the model's vocabulary and positions."""
    from ..data import iter_windows, list_data_files
    from ..models import model_limits

    config.validate()
    windows = list(iter_windows(list_data_files(path), tokenizer, config.search_seq_len, config.search_tokens, *model_limits(model)))
    if not windows:
        raise UnmemorizeError(f"--heldout {path}: no window of at least 2 tokens")
    return windows


def default_layer_sets(num_layers: int) -> dict[str, list[int]]:
    sets = {f"L{i}": [i] for i in range(num_layers)}
    half = max(1, num_layers // 2)
    sets[f"L0-{half - 1}"] = list(range(half))
    sets[f"L{half}-{num_layers - 1}"] = list(range(half, num_layers))
    sets["all"] = list(range(num_layers))
    return sets


@dataclass
class PlanSearch:
    """The chosen plan (None if no candidate fits the budget) and every candidate scored."""

    plan: dict[str, float] | None
    baseline_perplexity: float
    budget: float
    candidates: list[dict] = field(default_factory=list)
    chosen: dict | None = None
    settings: dict = field(default_factory=dict)  # rhos, held-out windows and tokens the search used


def default_projection_sets(model: nn.Module) -> dict[str, list[str]]:
    """The model's first two MLP roles (gate+up for Llama), and all of them."""
    projections = mlp_projections(model)
    return {"+".join(projections[:2]): projections[:2], "+".join(projections): projections}


def candidate_plans(model: nn.Module, factors: KFACFactors, rhos, layer_sets: dict[str, list[int]] | None = None,
                    projection_sets: dict[str, list[str]] | None = None):
    """Yield (layer set name, projection set name, rho, plan) for every candidate of a sweep."""
    layer_sets = layer_sets or default_layer_sets(model.config.num_hidden_layers)
    projection_sets = projection_sets or default_projection_sets(model)
    for layer_name, layers in layer_sets.items():
        for projection_name, projections in projection_sets.items():
            modules = [m for m in preset_modules(model, layers, projections) if m in factors.activation]
            if modules:
                for rho in rhos:
                    yield layer_name, projection_name, rho, {name: rho for name in modules}


def search_plan(model: nn.Module, factors: KFACFactors, bases: dict[str, ModuleBasis], heldout_windows: list[list[int]],
                budget: float, rhos=DEFAULT_RHOS, layer_sets: dict[str, list[int]] | None = None,
                projection_sets: dict[str, list[str]] | None = None, batch_size: int = 32) -> PlanSearch:
    """Search plans on clean held-out text only (see module docstring); ``budget`` is a ratio, e.g. 1.10.

    ``heldout_windows``: token windows (``heldout_windows()`` cuts them from a file); ``rhos``: the
    rho grid. ``PlanSearch.settings`` records the rhos and the windows' count and tokens.
    """
    if not budget >= 1.0:
        raise UnmemorizeError(f"--ppl-budget is a ratio to the baseline perplexity and must be >= 1, got {budget}")
    rhos = tuple(rhos)
    if not rhos:
        raise UnmemorizeError("the rho grid of the search is empty")
    baseline = perplexity(model, heldout_windows, batch_size).perplexity
    search = PlanSearch(None, baseline, budget, settings={"rhos": list(rhos), "windows": len(heldout_windows),
                                                          "tokens": sum(len(w) for w in heldout_windows)})
    for layer_name, projection_name, rho, plan in candidate_plans(model, factors, rhos, layer_sets, projection_sets):
        with edited(model, plan, factors, bases=bases) as edit:
            ppl = perplexity(model, heldout_windows, batch_size).perplexity
        removed = sum(s.total_pairs - s.kept_pairs for s in edit.modules.values())
        search.candidates.append({"layers": layer_name, "projections": projection_name, "rho": rho, "perplexity": ppl,
                                  "perplexity_ratio": ppl / baseline, "removed_pairs": removed, "plan": plan})
    fitting = [c for c in search.candidates if c["perplexity"] <= budget * baseline]
    if fitting:
        search.chosen = max(fitting, key=lambda c: (c["removed_pairs"], -c["perplexity"]))
        search.plan = search.chosen["plan"]
    return search
