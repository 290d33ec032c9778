"""K-FAC factors for mixture-of-experts layers, through the model's own eager expert loop.

transformers 5 stores a layer's experts as 3-D parameters (``experts.gate_up_proj``: experts x
2*intermediate x hidden, ``experts.down_proj``) and runs them in a loop over the experts hit by the
batch (the ``"eager"`` experts implementation)::

    current_state = hidden_states[token_idx]                          # rows routed to expert e
    gate, up = F.linear(current_state, gate_up_proj[e]).chunk(2, -1)  # or  x @ W  (transposed layouts)
    h = F.linear(act(gate) * up, down_proj[e])
    out[token_idx] += routing_weight * h

For expert e and each of its matrices W (gate, up, down), with a the matrix's input and y = W a its
output **before the routing weight is applied**:

    A_e = (1/N_e) sum_{t in P_e} a_t a_t^T,    G_e = (1/N_e) sum_{t in P_e} g_t g_t^T,   g_t = dL/dy_t

P_e is the set of counted positions (as for dense layers: real tokens with a next-token label)
routed to e, N_e = |P_e|; a token routed to e twice (never, with top-k routing) would count twice.
Why before the routing weight: W's gradient is dL/dW = sum_t g_t a_t^T with exactly this g (the
routing weight r_t is a factor of g_t = r_t * dL/d out_t through the chain rule), so G_e (x) A_e is
the K-FAC block of the parameter that is edited. Gate and up of one expert share A_e and have
their own G (the diagonal blocks of the fused output's G). Dividing by N_e rather than by all
positions N changes the Fisher block by the factor N_e / N only, which no selection depends on
(rho is a fraction of each matrix's own mass); N_e is recorded for every expert.

How: while the experts module runs, a ``TorchFunctionMode`` watches its tensor operations. Indexing
the module's input with ``token_idx`` tags the rows of this expert (so the counted mask follows
them); indexing an expert parameter tags the matrix; the ``F.linear``/``@`` that uses a tagged matrix
is computed as usual, its input recorded into A and its output kept (as a leaf that requires grad,
when nothing before it does) for the gradient. The experts implementation is set to ``"eager"``
while factors are collected (transformers' grouped kernels never show one expert's matrix); the
logits are those of the uninstrumented model (tested).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnmemorizeError
from ..matrices import Matrix, expert_layout

_LINEAR = {torch.nn.functional.linear}
_MATMUL = {torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul, torch._C.TensorBase.matmul}
_GETITEM = torch.Tensor.__getitem__


@contextmanager
def eager_experts(model: nn.Module):
    """Run every experts module with transformers' ``"eager"`` implementation (the per-expert loop)."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if expert_layout(module) is not None and config is not None and hasattr(config, "_experts_implementation"):
            configs[id(config)] = config
    saved = {key: config._experts_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._experts_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._experts_implementation = saved[key]


class ExpertTap(TorchFunctionMode):
    """Records A and keeps the outputs of the targeted matrices of one experts module (see module docstring).

    ``parts[(parameter, expert)]`` lists the target matrices computed by that matrix product, each
    with its A owner. ``record_activation(owner, rows)`` and ``keep_output(output, mask, parts)`` are
    the recorder's callbacks; ``counted`` (B, T) is set by the recorder before each batch.
    """

    def __init__(self, name: str, module: nn.Module, matrices: list[Matrix], record_activation, keep_output):
        super().__init__()
        self.name, self.module = name, module
        self.record_activation, self.keep_output = record_activation, keep_output
        self.parts: dict[tuple[str, int], list[Matrix]] = {}
        for matrix in matrices:
            self.parts.setdefault((matrix.parameter, matrix.expert), []).append(matrix)
        layout = expert_layout(module)
        names = ("gate_up_proj" if layout.has_gate else "up_proj", "down_proj")
        self.parameters = {id(getattr(module, p)): p for p in names}  # every expert matrix is tagged: down finds its rows
        self.counted: torch.Tensor | None = None
        self._original = None
        self._reset(None)

    def _reset(self, hidden_states) -> None:
        self.hidden_states = hidden_states
        self.rows: dict[int, torch.Tensor] = {}  # id(tensor) -> counted mask of its rows
        self.weights: dict[int, tuple[str, int]] = {}  # id(tensor) -> (parameter, expert)
        self.mask_of_expert: dict[int, torch.Tensor] = {}
        self.alive: list[torch.Tensor] = []  # keeps tagged tensors alive so their ids stay theirs

    def install(self) -> None:
        original = self.module.forward

        def forward(hidden_states, *args, **kwargs):
            if hidden_states.ndim != 2 or self.counted is None or hidden_states.shape[0] != self.counted.numel():
                raise UnmemorizeError(f"{self.name}: the experts receive input of shape {tuple(hidden_states.shape)}, not the "
                                      "flattened (tokens, hidden) rows this instrumentation reads")
            self._reset(hidden_states)
            try:
                with self:
                    return original(hidden_states, *args, **kwargs)
            finally:
                self._reset(None)

        self._original = original
        self.module.forward = forward

    def remove(self) -> None:
        if self._original is not None:
            del self.module.forward  # the instance attribute: the class's forward is back
            self._original = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is _GETITEM and args:
            if args[0] is self.hidden_states:
                self._tag_rows(result, args[1])
            elif id(args[0]) in self.parameters and args[0] is getattr(self.module, self.parameters[id(args[0])]):
                self.weights[id(result)] = (self.parameters[id(args[0])], int(args[1]))
                self.alive.append(result)
        elif (func in _LINEAR and len(args) >= 2 and id(args[1]) in self.weights) or \
                (func in _MATMUL and len(args) >= 2 and id(args[1]) in self.weights):
            result = self._product(args[0], self.weights[id(args[1])], result)
        return result

    def _tag_rows(self, rows_tensor: torch.Tensor, index) -> None:
        counted = self.counted.reshape(-1).to(rows_tensor.device)
        self.rows[id(rows_tensor)] = counted[index]
        self.alive.append(rows_tensor)

    def _product(self, inputs: torch.Tensor, key: tuple[str, int], output: torch.Tensor) -> torch.Tensor:
        parameter, expert = key
        if id(inputs) in self.rows:  # the first matrix of the expert reads the routed rows themselves
            mask = self.rows[id(inputs)]
            self.mask_of_expert[expert] = mask
        elif expert in self.mask_of_expert and self.mask_of_expert[expert].shape[0] == inputs.shape[0]:
            mask = self.mask_of_expert[expert]  # down_proj: the same rows, in the same order, after the activation
        else:
            raise UnmemorizeError(f"{self.name}: cannot tell which tokens reach expert {expert}'s {parameter} in "
                                  f"{type(self.module).__name__}'s forward; its experts cannot be instrumented")
        parts = self.parts.get(key)
        if not parts:
            return output
        owners = dict.fromkeys(m.name for m in parts[:1])
        for owner in owners:
            self.record_activation(owner, inputs.detach()[mask])
        if not output.requires_grad:  # no target before this one: the graph starts here
            output = output.detach().requires_grad_(True)
        self.keep_output(output, mask, parts)
        return output
