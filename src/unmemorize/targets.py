"""Choosing the linear layers to measure and edit.

Two ways, which combine:

* **glob patterns** over ``model.named_modules()`` names, e.g. ``"model.layers.2[34].mlp.*_proj"``;
* a **preset** for the model's architecture family, narrowed with ``layers`` (block indices) and
  ``projections`` (short names such as ``gate``, ``up``, ``down``).

Only linear-like modules (``nn.Linear`` and GPT-2's ``Conv1D``) can be targets. ``lm_head`` and
embeddings are never part of a preset; a glob may still name ``lm_head`` explicitly.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from .errors import UnmemorizeError
from .models import is_linear_like


@dataclass(frozen=True)
class Preset:
    """Module-name suffixes per projection, for one architecture family.

    ``mlp`` and ``attention`` map a short projection name to the suffixes it can have (several
    when transformers renamed modules across versions). ``aliases`` maps generic names
    (``up``/``down``) onto the family's own.
    """

    family: str
    mlp: dict[str, tuple[str, ...]]
    attention: dict[str, tuple[str, ...]]
    aliases: dict[str, str]


LLAMA = Preset(
    family="llama",
    mlp={"gate": ("mlp.gate_proj",), "up": ("mlp.up_proj",), "down": ("mlp.down_proj",)},
    attention={"q": ("self_attn.q_proj",), "k": ("self_attn.k_proj",), "v": ("self_attn.v_proj",), "o": ("self_attn.o_proj",)},
    aliases={},
)
GPT2 = Preset(
    family="gpt2",
    mlp={"fc": ("mlp.c_fc",), "proj": ("mlp.c_proj",)},
    attention={"qkv": ("attn.c_attn",), "o": ("attn.c_proj",)},
    aliases={"up": "fc", "down": "proj"},
)
NEOX = Preset(
    family="gpt_neox",
    mlp={"fc": ("mlp.dense_h_to_4h",), "proj": ("mlp.dense_4h_to_h",)},
    attention={"qkv": ("attention.query_key_value",), "o": ("attention.dense",)},
    aliases={"up": "fc", "down": "proj"},
)
VIT = Preset(
    family="vit",
    # transformers >= 5 names them mlp.fc1/fc2; 4.x used intermediate.dense/output.dense.
    mlp={"fc1": ("mlp.fc1", "intermediate.dense"), "fc2": ("mlp.fc2", "output.dense")},
    attention={
        "q": ("attention.q_proj", "attention.attention.query"),
        "k": ("attention.k_proj", "attention.attention.key"),
        "v": ("attention.v_proj", "attention.attention.value"),
        "o": ("attention.o_proj", "attention.output.dense"),
    },
    aliases={"up": "fc1", "down": "fc2", "fc": "fc1", "proj": "fc2"},
)
PRESETS: dict[str, Preset] = {
    **{t: LLAMA for t in ("llama", "olmo", "olmo2", "olmo3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
    "gpt2": GPT2,
    "gpt_neox": NEOX,
    "vit": VIT,
}

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


def preset_for(model: nn.Module) -> Preset:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PRESETS:
        raise UnmemorizeError(
            f"no preset for model_type {model_type!r} ({type(model).__name__}); "
            f"presets exist for {', '.join(sorted(PRESETS))}. Choose modules with --targets GLOB instead."
        )
    return PRESETS[model_type]


def layer_index(module_name: str) -> int | None:
    """Block index in a module name such as ``model.layers.12.mlp.up_proj`` (None if absent)."""
    match = _LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if name and is_linear_like(module)]


def parse_layers(spec: str | None) -> list[int] | None:
    """``"23,24,25"`` or ``"0-3,7"`` -> sorted block indices; None/empty means all blocks."""
    if spec is None or str(spec).strip() in ("", "all"):
        return None
    layers: set[int] = set()
    try:
        for part in str(spec).split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                layers.update(range(int(lo), int(hi) + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise UnmemorizeError(f"--layers {spec!r} is not a list like '23,24,25' or '0-3'") from None
    return sorted(layers)


def parse_projections(spec: str | None) -> list[str] | None:
    if spec is None or str(spec).strip() in ("", "all"):
        return None
    return [p.strip() for p in str(spec).split(",") if p.strip()]


def _resolve_projection(preset: Preset, name: str) -> tuple[str, ...]:
    name = preset.aliases.get(name, name)
    table = {**preset.mlp, **preset.attention}
    if name not in table:
        known = sorted(set(table) | set(preset.aliases))
        raise UnmemorizeError(f"unknown projection {name!r} for {preset.family}; choose from {', '.join(known)}")
    return table[name]


def preset_modules(model: nn.Module, layers: list[int] | None = None, projections: list[str] | None = None) -> list[str]:
    """Module names a preset selects: the MLP projections by default, in model order."""
    preset = preset_for(model)
    suffixes: list[str] = []
    for proj in projections or list(preset.mlp):
        suffixes.extend(_resolve_projection(preset, proj))
    names = []
    for name in linear_module_names(model):
        index = layer_index(name)
        if index is None or (layers is not None and index not in layers):
            continue
        if any(name.endswith("." + suffix) for suffix in suffixes):
            names.append(name)
    if not names:
        available = sorted({i for n in linear_module_names(model) if (i := layer_index(n)) is not None})
        raise UnmemorizeError(
            f"the {preset.family} preset selects no module for layers={layers} projections={projections}; "
            f"the model has blocks {available[0] if available else '?'}..{available[-1] if available else '?'}"
        )
    return names


def match_globs(model: nn.Module, patterns: list[str]) -> list[str]:
    """Linear-like module names matching any glob, in model order; a glob matching nothing is an error."""
    candidates = linear_module_names(model)
    selected: set[str] = set()
    for pattern in patterns:
        hits = [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, candidates, n=6, cutoff=0.3) or candidates[:6]
            raise UnmemorizeError(
                f"no linear module matches {pattern!r} in {type(model).__name__}; candidates: {', '.join(close)}"
                + (", ..." if len(candidates) > len(close) else "")
            )
        selected.update(hits)
    return [n for n in candidates if n in selected]


def resolve_targets(
    model: nn.Module,
    patterns: list[str] | None = None,
    layers: str | list[int] | None = None,
    projections: str | list[str] | None = None,
) -> list[str]:
    """The target module names, in model order.

    With globs only, the globs decide. With ``layers``/``projections`` (and no globs), the preset
    decides. With both, a module must satisfy both. With nothing, the preset's MLP projections of
    every block are chosen.
    """
    layer_list = parse_layers(layers) if isinstance(layers, (str, type(None))) else sorted(layers)
    proj_list = parse_projections(projections) if isinstance(projections, (str, type(None))) else list(projections)
    if patterns:
        names = match_globs(model, list(patterns))
        if layer_list is None and proj_list is None:
            return names
        allowed = set(preset_modules(model, layer_list, proj_list))
        both = [n for n in names if n in allowed]
        if not both:
            raise UnmemorizeError(f"no module matches both the globs {patterns} and layers={layers} projections={projections}")
        return both
    return preset_modules(model, layer_list, proj_list)
