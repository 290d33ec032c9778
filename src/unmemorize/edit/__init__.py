"""Edit: select curvature components, project the weights, save the edited model."""

from .apply import AppliedEdit, EditConfig, ModuleEdit, apply_edit, edited, save_edited_model
from .methods import kfac_edit, random_edit, svd_edit
from .plan import load_plan, parse_plan, uniform_plan
from .selection import PairSelection, select_pairs, select_per_side

__all__ = [
    "AppliedEdit", "EditConfig", "ModuleEdit", "PairSelection", "apply_edit", "edited", "kfac_edit", "load_plan",
    "parse_plan", "random_edit", "save_edited_model", "select_pairs", "select_per_side", "svd_edit", "uniform_plan",
]
