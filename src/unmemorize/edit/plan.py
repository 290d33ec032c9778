"""Per-module rho: a uniform value or a plan file.

A plan file is JSON in one of two spellings (they may be mixed):

* preset terms, as in the paper's code: ``{"23": {"gate": 0.6, "up": 0.6}, "24": {...}}`` --
  block index -> projection short name -> rho;
* module names: ``{"model.layers.23.mlp.gate_proj": 0.6, ...}``.

Modules a plan does not name are not edited.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from ..errors import UnmemorizeError
from ..targets import linear_module_names, preset_modules


def check_rho(rho, where: str) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or math.isnan(rho) or not 0.0 <= rho <= 1.0:
        raise UnmemorizeError(f"rho must be a number in [0, 1]; {where} has {rho!r}")
    return float(rho)


def rho_list(text: str, option: str = "--rhos") -> list[float]:
    """'0.9,0.99' -> [0.9, 0.99]; every value a number in [0, 1]."""
    try:
        values = [float(r) for r in str(text).split(",") if r.strip()]
    except ValueError:
        raise UnmemorizeError(f"{option} {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise UnmemorizeError(f"{option} is empty; give rho values like 0.9,0.99")
    return [check_rho(value, option) for value in values]


def uniform_plan(targets: list[str], rho: float) -> dict[str, float]:
    rho = check_rho(rho, "--rho")
    return {name: rho for name in targets}


def parse_plan(model: nn.Module, spec: dict) -> dict[str, float]:
    """Module name -> rho, in model order, from a plan dict (see module docstring)."""
    if not isinstance(spec, dict) or not spec:
        raise UnmemorizeError("a plan must be a non-empty JSON object")
    linear = set(linear_module_names(model))
    plan: dict[str, float] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            try:
                layer = int(key)
            except ValueError:
                raise UnmemorizeError(f"plan key {key!r} maps to an object, so it must be a block index like \"23\"") from None
            for proj, rho in value.items():
                rho = check_rho(rho, f"plan entry {key}.{proj}")
                for name in preset_modules(model, [layer], [proj]):
                    plan[name] = rho
        else:
            if key not in linear:
                raise UnmemorizeError(f"plan names {key!r}, which is not a weight matrix of {type(model).__name__} (a linear module, "
                                      "a half of a fused gate_up_proj, or an expert's matrix like mlp.experts.0.down_proj)")
            plan[key] = check_rho(value, f"plan entry {key}")
    if not plan:
        raise UnmemorizeError(f"the plan selects no matrix ({json.dumps(spec)[:80]}): an edit of it would save an unchanged copy; "
                              "name projections, e.g. {\"0\": {\"gate\": 0.6}}")
    order = {name: i for i, name in enumerate(linear_module_names(model))}
    return dict(sorted(plan.items(), key=lambda item: order[item[0]]))


def load_plan(path: str | Path, model: nn.Module) -> dict[str, float]:
    file = Path(path)
    if not file.is_file():
        raise UnmemorizeError(f"plan file {str(file)!r} does not exist")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UnmemorizeError(f"plan file {str(file)!r} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UnmemorizeError(f"plan file {str(file)!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    return parse_plan(model, spec)
