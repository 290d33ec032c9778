"""Choosing the weight matrices to measure and edit.

Two ways, which combine:

* **glob patterns** over matrix names (``matrices.model_matrices``), e.g. ``"model.layers.2[34].mlp.*_proj"``
  or ``"*.mlp.experts.*.down_proj"``; a glob naming a fused module or an experts parameter
  (``*.gate_up_proj``) selects all of its matrices;
* the model's **preset**, derived from its module structure (no hand list per family), narrowed with
  ``layers`` (block indices) and ``projections``.

How the preset is derived. A *block* is a module named ``...(layers|layer|h|blocks).<i>``. Inside
a block, the first path component after the block is its *section*: a section whose name contains
``attn`` or ``attention`` is attention, any other section holding matrices (``mlp``,
``block_sparse_moe``, ``feed_forward``, ...) is the MLP. The default targets are every MLP matrix of
every block (dense projections, both halves of a fused gate/up, every expert's gate/up/down, shared
experts) except **routers** (a matrix whose outputs are the experts' logits, or a single gate
scalar such as Qwen2-MoE's ``shared_expert_gate``), which are never edited unless named by a glob.

A projection in ``projections`` is a matrix's own short name (``gate_proj``, ``fc1``, ``c_fc``,
``query_key_value``, ``attn.c_proj``) or a role: ``gate``, ``up``, ``down`` for MLP matrices (from
the name, else from the shapes: d_out = hidden is ``down``; ``fc``/``proj`` are synonyms of
``up``/``down``) and ``q``, ``k``, ``v``, ``o``, ``qkv`` for attention. Asking for part of a fused
``qkv`` projection (``q`` alone) is an error naming it; ``q,k,v`` selects it whole.

Whatever chooses them, ``untouched`` lists what the targets leave of each targeted block's MLP, so
no command edits part of an MLP silently.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from .errors import UnmemorizeError
from .matrices import Matrix, model_matrices

_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks)\.(\d+))\.(.+)$")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
_EXPERT_INDEX = re.compile(r"\.\d+(?=\.)")
_EXPERT_SLOT = re.compile(r"\.\d+\.(?=[^.]+$)")  # the expert index before a matrix name

ATTENTION_ROLES = {
    "q": ("q_proj", "query", "q_a_proj", "q_b_proj", "q_lin"),
    "k": ("k_proj", "key", "k_lin"),
    "v": ("v_proj", "value", "v_lin"),
    "o": ("o_proj", "dense", "out_proj", "c_proj", "output.dense", "out_lin"),
    "kv": ("kv_a_proj_with_mqa", "kv_b_proj", "kv_proj"),
    "qkv": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv"),
}
ROLE_SYNONYMS = {"fc": "up", "proj": "down"}
_DOWN_NAMES = ("down", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "w2", "output.dense", "wo")
_UP_NAMES = ("up", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "w3", "intermediate.dense", "wi")
_GATE_NAMES = ("w1", "wi_0")  # Mixtral (transformers 4) and T5-style gated MLPs


@dataclass(frozen=True)
class Slot:
    """Where a matrix sits in the model's structure."""

    name: str
    block: int | None
    section: str | None  # first component after the block ("mlp", "self_attn", ...)
    kind: str | None  # "attention" | "mlp" | None (outside blocks)
    short: str  # the matrix's name inside its section, expert index removed ("gate_proj", "experts.gate_proj")
    role: str | None  # gate/up/down/router (MLP) or q/k/v/o/kv/qkv (attention)


def layer_index(module_name: str) -> int | None:
    """Block index in a name such as ``model.layers.12.mlp.up_proj`` (None if absent)."""
    match = _LAYER_INDEX.search(module_name)
    return int(match.group(1)) if match else None


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if isinstance(value, int):
            return value
    return None


def _num_experts(model: nn.Module) -> set[int]:
    config = getattr(model, "config", None)
    counts = set()
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if isinstance(value, int) and value > 0:
            counts.add(value)
    return counts


def _mlp_role(short: str, matrix: Matrix, hidden: int | None, experts: set[int]) -> str:
    last = short.rsplit(".", 1)[-1]
    d_out, d_in = matrix.shape
    if matrix.kind == "linear" and (d_out == 1 or d_out in experts) and not last.endswith("_proj"):
        return "router"  # the experts' logits (transformers 4's mlp.gate), or one gate scalar (shared_expert_gate)
    if "gate" in last or last in _GATE_NAMES:
        return "gate"
    if any(last == n or short.endswith(n) or last.startswith(n) for n in _DOWN_NAMES):
        return "down"
    if any(last == n or short.endswith(n) or last.startswith(n) for n in _UP_NAMES):
        return "up"
    return "down" if hidden is not None and d_out == hidden and d_in != hidden else "up"


def _attention_role(short: str) -> str | None:
    last = short.rsplit(".", 1)[-1]
    for role, names in ATTENTION_ROLES.items():
        if last in names or short in names:
            return role
    return None


def slots(model: nn.Module, matrices: dict[str, Matrix] | None = None) -> dict[str, Slot]:
    """Every matrix's place: block, section, attention or MLP, short name and role (see module docstring)."""
    matrices = model_matrices(model) if matrices is None else matrices
    hidden, experts = _hidden_size(model), _num_experts(model)
    placed = {}
    for name, matrix in matrices.items():
        match = _BLOCK.match(name)
        if not match:
            placed[name] = Slot(name, None, None, None, name, None)
            continue
        block, rest = int(match.group(2)), match.group(3)
        section, _, inner = rest.partition(".")
        inner = inner or section
        short = _EXPERT_INDEX.sub("", "." + inner)[1:] if matrix.kind == "expert" else inner
        if "attn" in section.lower() or "attention" in section.lower():
            placed[name] = Slot(name, block, section, "attention", short, _attention_role(short))
        else:
            placed[name] = Slot(name, block, section, "mlp", short, _mlp_role(short, matrix, hidden, experts))
    return placed


def mlp_projections(model: nn.Module) -> list[str]:
    """The MLP roles the model has, in the order gate, up, down (e.g. ['up', 'down'] for GPT-2)."""
    roles = {s.role for s in slots(model).values() if s.kind == "mlp"}
    return [r for r in ("gate", "up", "down") if r in roles]


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


def _matches_projection(slot: Slot, projection: str) -> bool:
    """Whether ``--proj projection`` names this matrix (a fused qkv is named by each of q, k, v: see ``_check_fused_qkv``)."""
    projection = ROLE_SYNONYMS.get(projection, projection) if slot.kind == "mlp" else projection
    if slot.role == "qkv" and projection in ("q", "k", "v"):
        return True
    if slot.role == "router":
        return slot.short == projection or slot.short.endswith("." + projection)
    return slot.role == projection or slot.short == projection or slot.short.endswith("." + projection) or \
        f"{slot.section}.{slot.short}" == projection


def _check_fused_qkv(placed: list[Slot], projections: list[str]) -> None:
    """``q`` alone on a model whose q, k and v are one fused matrix would edit k and v too: refuse, naming it."""
    asked = set(projections)
    fused = next((s for s in placed if s.role == "qkv"), None)
    if fused is None or "qkv" in asked or fused.short in asked:
        return
    parts = asked & {"q", "k", "v"}
    if parts and parts != {"q", "k", "v"}:
        raise UnmemorizeError(f"{', '.join(sorted(parts))} is fused with the rest of q, k, v in {fused.section}.{fused.short}: "
                              f"choose --proj q,k,v (or qkv) to edit it whole")


def preset_modules(model: nn.Module, layers: list[int] | None = None, projections: list[str] | None = None) -> list[str]:
    """Matrix names the preset selects: every MLP matrix but routers by default, in model order."""
    every = slots(model)
    placed = [s for s in every.values() if s.block is not None]
    if not placed:
        names = list(every)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise UnmemorizeError(f"{type(model).__name__} has no blocks named layers.N, layer.N, h.N or blocks.N to derive targets "
                              f"from; choose matrices with --targets GLOB; candidates: {shown or 'none (no linear module)'}")
    if projections:
        _check_fused_qkv([s for s in placed if s.kind == "attention"], projections)
        for projection in projections:
            if not any(_matches_projection(s, projection) for s in placed):
                known = sorted({s.role for s in placed if s.role and s.role != "router"} | {s.short for s in placed})
                raise UnmemorizeError(f"unknown projection {projection!r} for {type(model).__name__}; choose from {', '.join(known)}")
    chosen = []
    for slot in placed:
        if layers is not None and slot.block not in layers:
            continue
        if projections is None:
            if slot.kind == "mlp" and slot.role != "router":
                chosen.append(slot.name)
        elif any(_matches_projection(slot, p) for p in projections):
            chosen.append(slot.name)
    if not chosen:
        blocks = sorted({s.block for s in placed})
        raise UnmemorizeError(f"the preset selects no matrix of {type(model).__name__} for layers={layers} projections={projections}; "
                              f"the model has blocks {blocks[0]}..{blocks[-1]}")
    return chosen


def linear_module_names(model: nn.Module) -> list[str]:
    """Every target-able matrix name, in model order (kept name: linear modules, fused halves, experts)."""
    return list(model_matrices(model))


def match_globs(model: nn.Module, patterns: list[str]) -> list[str]:
    """Matrix names matching any glob (on the matrix's name or its source module/parameter), in model order."""
    matrices = model_matrices(model)
    selected: set[str] = set()
    for pattern in patterns:
        hits = [n for n, m in matrices.items() if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(m.source, pattern)]
        if not hits:
            candidates = list(dict.fromkeys([*matrices, *(m.source for m in matrices.values())]))
            close = difflib.get_close_matches(pattern, candidates, n=6, cutoff=0.3) or candidates[:6]
            raise UnmemorizeError(
                f"no linear module matches {pattern!r} in {type(model).__name__}; candidates: {', '.join(close)}"
                + (", ..." if len(candidates) > len(close) else "")
            )
        selected.update(hits)
    return [n for n in matrices if n in selected]


def resolve_targets(
    model: nn.Module,
    patterns: list[str] | None = None,
    layers: str | list[int] | None = None,
    projections: str | list[str] | None = None,
) -> list[str]:
    """The target matrix names, in model order.

    With globs only, the globs decide. With ``layers``/``projections`` (and no globs), the preset
    decides. With both, a matrix must satisfy both. With nothing, the preset's MLP matrices of
    every block are chosen.
    """
    layer_list = parse_layers(layers) if isinstance(layers, (str, type(None))) else sorted(layers)
    proj_list = parse_projections(projections) if isinstance(projections, (str, type(None))) else list(projections)
    if patterns:
        names = match_globs(model, list(patterns))
        if layer_list is not None or proj_list is not None:
            allowed = set(preset_modules(model, layer_list, proj_list))
            names = [n for n in names if n in allowed]
            if not names:
                raise UnmemorizeError(f"no module matches both the globs {patterns} and layers={layers} projections={projections}")
    else:
        names = preset_modules(model, layer_list, proj_list)
    refuse_tied(model, names)
    return names


def refuse_tied(model: nn.Module, targets: list[str]) -> None:
    """A target whose weight is also another module's (GPT-2's lm_head is its input embedding, tied) cannot be
    edited alone: the edit would change the other in silence. Refused, naming both."""
    holders: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(parameter), []).append(name)
    modules = dict(model.named_modules())
    for target in targets:
        weight = getattr(modules.get(target), "weight", None)
        others = [n for n in holders.get(id(weight), []) if n != f"{target}.weight"] if weight is not None else []
        if others:
            raise UnmemorizeError(f"{target}.weight is tied to {', '.join(others)} (one tensor): editing it would edit that too; "
                                  "untie the weights (config tie_word_embeddings=false, then save) or leave it out of the targets")


def untouched(model: nn.Module, targets: list[str]) -> dict[str, str]:
    """What the targets leave of the MLP of each block they touch: ``{pattern: why}``.

    Names are patterns over blocks (``model.layers.*.mlp.gate``) so a 64-block model gives one line
    per kind of matrix, not per block. Router weights (transformers' router modules included,
    which hold a plain ``weight`` parameter) are listed as never edited by default; a fused module
    or experts parameter of which only some matrices are targets is listed with what is left.
    """
    matrices = model_matrices(model)
    placed = slots(model, matrices)
    chosen = set(targets)
    blocks = {placed[n].block for n in targets if n in placed and placed[n].block is not None}
    left: dict[str, str] = {}

    def pattern(name: str) -> str:
        return re.sub(r"(?<=\.)(?:layers|layer|h|blocks)\.\d+(?=\.)", lambda m: m.group(0).rsplit(".", 1)[0] + ".*", name)

    experts_left: dict[str, set[int]] = {}
    for name, slot in placed.items():
        if slot.kind != "mlp" or slot.block not in blocks or name in chosen:
            continue
        matrix = matrices[name]
        if matrix.kind == "expert":  # grouped over experts: "experts.*.down_proj", or "experts.{3,7}.down_proj"
            experts_left.setdefault(pattern(_EXPERT_SLOT.sub(".*.", name)), set()).add(matrix.expert)
        else:
            left[pattern(name)] = "router: never edited by default" if slot.role == "router" else "not a target"
    counts = {}
    for matrix in matrices.values():
        if matrix.kind == "expert":
            counts[pattern(_EXPERT_SLOT.sub(".*.", matrix.name))] = len({m.expert for m in matrices.values() if m.owner == matrix.owner})
    for key, experts in experts_left.items():
        head, _, tail = key.rpartition(".*.")
        label = key if len(experts) == counts[key] else f"{head}.{{{','.join(map(str, sorted(experts)))}}}.{tail}"
        left[label] = "not a target"
    mlp_sections = {(s.block, s.section) for s in placed.values() if s.kind == "mlp" and s.block in blocks}
    owners = {m.owner for m in matrices.values()}
    for module_name, module in model.named_modules():
        match = _BLOCK.match(module_name)
        if not match or (int(match.group(2)), match.group(3).partition(".")[0]) not in mlp_sections:
            continue
        for parameter_name, parameter in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}"
            if parameter.ndim < 2 or module_name in owners:
                continue
            left[pattern(full)] = "router: never edited by default"
    return dict(sorted(left.items()))


def untouched_note(left: dict[str, str]) -> str | None:
    """One line for the user from ``untouched``'s answer (None when the targets leave nothing of an MLP)."""
    if not left:
        return None
    return "note: the targets leave untouched in the MLP of the blocks they edit: " + "; ".join(f"{k} ({v})" for k, v in left.items())
