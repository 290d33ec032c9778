"""The weight matrices a target name denotes: linear modules, halves of fused projections, experts.

Every target is one matrix W of shape (d_out, d_in) with y = W a (+ b). Three kinds exist:

* ``linear``: an ``nn.Linear`` (or GPT-2's ``Conv1D``, stored transposed) — the name is the module's;
* ``fused``: one half of a fused gate/up projection (Phi-3's ``mlp.gate_up_proj`` computes
  ``[gate; up] = W_gate_up a``). Each half is its own matrix, named as the module it replaces
  (``mlp.gate_proj``, ``mlp.up_proj``): its output rows of the fused weight;
* ``expert``: one expert's matrix inside a mixture-of-experts 3-D parameter (transformers 5 stores
  the experts of Mixtral, OLMoE, Qwen-MoE, DeepSeek-V3, gpt-oss, ... as ``experts.gate_up_proj`` of
  shape (experts, 2 * intermediate, hidden) and ``experts.down_proj``). Expert e's matrices are named
  as transformers 4 and the hub checkpoints name them: ``experts.<e>.gate_proj``, ``.up_proj``,
  ``.down_proj``. The layout (transposed, gate/up concatenated or interleaved, gate present) is read
  from the attributes transformers' ``@use_experts_implementation`` sets on the experts module.

``Matrix.weight()`` is always a (d_out, d_in) *view* of the stored parameter, so reading,
fingerprinting and writing an edit in place work the same for every kind; ``Matrix.source`` is the
real module or parameter it lives in (what a glob may also name, and what ``save_pretrained`` writes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .models import is_linear_like

FUSED_GATE_UP = "gate_up_proj"  # a linear module of this name holds [gate; up] along its outputs (Phi-3, GLM)


@dataclass(frozen=True)
class Matrix:
    """One (d_out, d_in) weight matrix (see module docstring)."""

    name: str
    kind: str  # "linear" | "fused" | "expert"
    owner: str  # the module holding the parameter
    parameter: str  # the parameter's attribute name on ``owner``
    module: nn.Module = field(compare=False, repr=False)
    expert: int | None = None
    rows: tuple[int, int, int] | None = None  # (start, stop, step) of W's rows within the fused matrix
    transposed: bool = False  # the parameter stores W^T (Conv1D; transposed experts)

    @property
    def source(self) -> str:
        """The real module (linear, fused) or parameter (experts) this matrix is part of."""
        return self.owner if self.kind != "expert" else f"{self.owner}.{self.parameter}"

    @property
    def part(self) -> str | None:
        """'gate'/'up' for a half of a fused projection, None otherwise."""
        return self.name.rsplit(".", 1)[-1].removesuffix("_proj") if self.rows is not None else None

    def parameter_tensor(self) -> torch.Tensor:
        return getattr(self.module, self.parameter)

    def weight(self) -> torch.Tensor:
        """W as a (d_out, d_in) view of the stored parameter (no copy)."""
        tensor = self.parameter_tensor().data
        if self.expert is not None:
            tensor = tensor[self.expert]
        if self.transposed:
            tensor = tensor.T
        if self.rows is not None:
            start, stop, step = self.rows
            tensor = tensor[start:stop:step]
        return tensor

    @property
    def shape(self) -> tuple[int, int]:
        d_out, d_in = self.weight().shape
        return int(d_out), int(d_in)

    @torch.no_grad()
    def write(self, weight: torch.Tensor) -> None:
        """Write a (d_out, d_in) matrix into the parameter, in place, cast to its dtype."""
        view = self.weight()
        view.copy_(weight.to(device=view.device, dtype=view.dtype))

    def fingerprint(self) -> str:
        """sha256 of W rounded to bfloat16: the same for a checkpoint loaded in float32 or bfloat16."""
        weight = self.weight().detach().to(torch.bfloat16).contiguous().view(torch.int16).cpu()
        return hashlib.sha256(weight.numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class ExpertLayout:
    """How an experts module stores its matrices (from transformers' ``@use_experts_implementation`` flags)."""

    num_experts: int
    transposed: bool  # parameters are (experts, d_in, d_out): used as ``a @ W``
    concatenated: bool  # gate/up halves [gate; up] (True) or interleaved gate0, up0, gate1, ... (False)
    has_gate: bool  # gate_up_proj (True) or up_proj only (False)
    intermediate: int

    def parts(self) -> list[tuple[str, str, tuple[int, int, int] | None]]:
        """(matrix short name, parameter, rows) for one expert."""
        size = self.intermediate
        if not self.has_gate:
            return [("up_proj", "up_proj", None), ("down_proj", "down_proj", None)]
        if self.concatenated:
            gate, up = (0, size, 1), (size, 2 * size, 1)
        else:
            gate, up = (0, 2 * size, 2), (1, 2 * size, 2)
        return [("gate_proj", "gate_up_proj", gate), ("up_proj", "gate_up_proj", up), ("down_proj", "down_proj", None)]


def expert_layout(module: nn.Module) -> ExpertLayout | None:
    """The layout of a mixture-of-experts module holding 3-D expert parameters, or None for any other module."""
    down = getattr(module, "down_proj", None)
    first = getattr(module, "gate_up_proj", None)
    has_gate = isinstance(first, nn.Parameter)
    if not has_gate:
        first = getattr(module, "up_proj", None)
    if not (isinstance(down, nn.Parameter) and isinstance(first, nn.Parameter) and down.ndim == 3 and first.ndim == 3):
        return None
    transposed = bool(getattr(module, "is_transposed", False))
    concatenated = bool(getattr(module, "is_concatenated", True))
    if hasattr(module, "has_gate"):
        has_gate = bool(module.has_gate) and has_gate
    # down_proj maps intermediate -> hidden: (E, hidden, intermediate), or (E, intermediate, hidden) transposed
    intermediate = int(down.shape[1] if transposed else down.shape[2])
    return ExpertLayout(int(down.shape[0]), transposed, concatenated, has_gate, intermediate)


def _is_fused_gate_up(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] == FUSED_GATE_UP and module.out_features % 2 == 0


def model_matrices(model: nn.Module) -> dict[str, Matrix]:
    """Every matrix that can be a target, by name, in model order (see module docstring)."""
    found: dict[str, Matrix] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        if is_linear_like(module):
            transposed = not isinstance(module, nn.Linear)  # Conv1D stores (d_in, d_out)
            if _is_fused_gate_up(name, module):
                half = module.out_features // 2
                prefix = name.rsplit(".", 1)[0]
                for part, rows in (("gate_proj", (0, half, 1)), ("up_proj", (half, 2 * half, 1))):
                    found[f"{prefix}.{part}"] = Matrix(f"{prefix}.{part}", "fused", name, "weight", module, rows=rows)
            else:
                found[name] = Matrix(name, "linear", name, "weight", module, transposed=transposed)
            continue
        layout = expert_layout(module)
        if layout is None:
            continue
        for expert in range(layout.num_experts):
            for short, parameter, rows in layout.parts():
                matrix_name = f"{name}.{expert}.{short}"
                found[matrix_name] = Matrix(matrix_name, "expert", name, parameter, module, expert=expert, rows=rows,
                                            transposed=layout.transposed)
    return found


def matrices_for(model: nn.Module, names: list[str]) -> dict[str, Matrix]:
    """The named matrices (a KeyError names the first unknown one)."""
    every = model_matrices(model)
    return {n: every[n] for n in names}


def offloaded_matrices(model: nn.Module, names: list[str]) -> list[str]:
    """The named matrices whose parameter accelerate keeps off the model (on 'meta'), streaming it in from
    CPU memory or disk at each forward: they cannot be read, fingerprinted or edited in place."""
    matrices = model_matrices(model)
    return [name for name in names if name in matrices and matrices[name].parameter_tensor().device.type == "meta"]
