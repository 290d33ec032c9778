"""Collecting K-FAC factors with forward hooks and one ``autograd.grad`` per batch.

For a linear module y = W a (+ b), W of shape (d_out, d_in), the Fisher block of vec(W)
(row-major) is approximated as F_W ~ G (x) A with

    A = (1/N) sum_{n,t in P} a_{n,t} a_{n,t}^T          (d_in, d_in)
    G = (1/N) sum_{n,t in P} g_{n,t} g_{n,t}^T          (d_out, d_out)
    g_{n,t} = d L / d y_{n,t},   L = sum_{n,t in P} -log p(y*_{n,t+1} | x_{n,<=t})

P is the set of counted positions: every real token that has a next-token label (the last
position of each window and all padding are excluded), N = |P|. L is SUM-reduced, so g is a
per-token quantity that does not depend on the batch size. The label y* is sampled from the
model's own softmax with a seeded generator (``fisher="true"``, the paper's choice) or is the
gold next token (``fisher="empirical"``).

How it runs: all parameters are frozen; a forward hook on each target records A from its input
(modules that read the very same input tensor, like gate_proj/up_proj, share one A
accumulator) and, if the module's output does not already require grad, replaces it by a
detached leaf that does. The graph therefore starts at the earliest targeted module: backward
never runs below it. After the forward pass, ``torch.autograd.grad(L, outputs)`` returns every
g at once. Accumulation is in float32 (or float64) whatever the model dtype.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import data_fingerprint, iter_batches, iter_windows, list_data_files, pad_token_id
from ..errors import UnmemorizeError, check_seed
from ..models import get_weight, model_limits, parse_dtype, weight_fingerprint, weight_shape
from .factors import KFACFactors
from .objectives import NextTokenObjective


@dataclass
class CollectConfig:
    """How K-FAC factors are collected (saved in factors.json next to the factors)."""

    fisher: Literal["true", "empirical"] = field(
        default="true",
        metadata={"help": "'true': next-token labels sampled from the model's softmax (seeded); 'empirical': gold next tokens."},
    )
    seq_len: int = field(default=512, metadata={"help": "Window length in tokens for text data."})
    max_tokens: int | None = field(
        default=1_000_000, metadata={"help": "Token budget over all windows (0 or None: the whole data)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Windows per forward/backward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the label sampler (true Fisher)."})
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata={"help": "Accumulation dtype of A and G, whatever the model dtype."}
    )
    modules_per_pass: int = field(
        default=0, metadata={"help": "Bound memory: collect at most N modules per data pass (0: all in one pass)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with tokens/s and ETA."})

    def validate(self) -> None:
        if self.fisher not in ("true", "empirical"):
            raise UnmemorizeError(f"--fisher must be 'true' or 'empirical', got {self.fisher!r}")
        if self.dtype not in ("float32", "float64"):
            raise UnmemorizeError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        for name in ("seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise UnmemorizeError(f"--{name.replace('_', '-')} must be positive")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise UnmemorizeError("--max-tokens must be >= 0")
        if self.modules_per_pass < 0:
            raise UnmemorizeError("--modules-per-pass must be >= 0")
        check_seed(self.seed)


@contextmanager
def _frozen(model: nn.Module):
    """Freeze every parameter (so backward builds no weight gradients) and use eval mode."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


class _PassRecorder:
    """Hooks for one pass over the data: A and G accumulators for a group of modules."""

    def __init__(self, modules: dict[str, nn.Module], dtype: torch.dtype, device: torch.device):
        self.modules = modules
        self.dtype = dtype
        self.activation: dict[str, torch.Tensor] = {}  # owner name -> A sum
        self.gradient = {n: torch.zeros(weight_shape(m)[0], weight_shape(m)[0], dtype=dtype, device=device) for n, m in modules.items()}
        self.activation_owner: dict[str, str] = {}  # module -> module whose A it shares
        self.device = device
        self.counted: torch.Tensor | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.batch_inputs: dict[str, torch.Tensor] = {}  # owner -> input tensor of this batch
        self.handles = []

    def __enter__(self):
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            a = inputs[0]
            owner = self.activation_owner.get(name)
            if owner is None:  # first batch: find a module that read this very tensor
                owner = next((o for o, t in self.batch_inputs.items() if t is a), name)
                self.activation_owner[name] = owner
            if owner == name:
                self.batch_inputs[name] = a
                rows = a.detach()[self.counted].to(self.dtype)  # (N_batch, d_in)
                if name not in self.activation:
                    self.activation[name] = torch.zeros(rows.shape[1], rows.shape[1], dtype=self.dtype, device=self.device)
                self.activation[name].addmm_(rows.T, rows)
            elif self.batch_inputs.get(owner) is not a:
                raise RuntimeError(f"{name} stopped sharing its input with {owner}; cannot share A")
            if not output.requires_grad:  # earliest target: the graph starts here
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output

        return hook

    def accumulate_gradients(self, loss: torch.Tensor) -> None:
        names = list(self.outputs)
        grads = torch.autograd.grad(loss, [self.outputs[n] for n in names])
        for name, grad in zip(names, grads):
            rows = grad[self.counted].to(self.dtype)  # (N_batch, d_out)
            self.gradient[name].addmm_(rows.T, rows)
        self.outputs.clear()
        self.batch_inputs.clear()


def _module_groups(names: list[str], per_pass: int) -> list[list[str]]:
    if per_pass <= 0 or per_pass >= len(names):
        return [names]
    return [names[i : i + per_pass] for i in range(0, len(names), per_pass)]


def collect_factors(
    model: nn.Module,
    batches: Callable[[], Iterable[dict[str, torch.Tensor]]] | list[dict[str, torch.Tensor]],
    targets: list[str],
    config: CollectConfig | None = None,
    objective=None,
    total_tokens: int | None = None,
    on_pass: Callable[[int, int, dict, dict], None] | None = None,
) -> KFACFactors:
    """K-FAC factors for ``targets`` over ``batches`` (dicts with input_ids and attention_mask).

    ``batches`` is a list, or a callable returning a fresh iterable (needed when
    ``config.modules_per_pass`` splits the targets over several passes). Every pass re-seeds the
    label sampler, so several passes give exactly the factors of one.

    ``on_pass(index, passes, activation, gradient)``, if given, receives each pass's factors
    (module name -> CPU tensor) as soon as the pass ends and they are not kept: memory then holds
    one pass's factors at a time, and the returned object carries only the metadata.
    """
    config = config or CollectConfig()
    config.validate()
    objective = objective or NextTokenObjective()
    make_batches = batches if callable(batches) else (lambda: batches)
    modules = dict(model.named_modules())
    missing = [n for n in targets if n not in modules]
    if missing:
        raise UnmemorizeError(f"target modules not in the model: {', '.join(missing)}")
    dtype = parse_dtype(config.dtype)
    device = next(model.parameters()).device
    fingerprints = {n: weight_fingerprint(modules[n]) for n in targets}  # the weights these factors belong to
    activation: dict[str, torch.Tensor] = {}
    gradient: dict[str, torch.Tensor] = {}
    shared: dict[str, str] = {}
    groups = _module_groups(targets, config.modules_per_pass)
    num_positions = 0
    tokens_seen = 0
    start = time.perf_counter()
    bar = tqdm(
        total=None if total_tokens is None else total_tokens * len(groups),
        unit=objective.unit,
        unit_scale=True,
        desc="collect K-FAC",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    with _frozen(model), bar:
        for index, group in enumerate(groups):
            generator = torch.Generator(device=device).manual_seed(config.seed)
            positions = 0
            with _PassRecorder({n: modules[n] for n in group}, dtype, device) as recorder:
                for batch in make_batches():
                    batch = {k: v.to(device) for k, v in batch.items()}
                    counted = objective.counted_positions(batch)
                    if not counted.any():
                        continue
                    recorder.counted = counted
                    with torch.enable_grad():
                        loss = objective.loss(model, batch, counted, config.fisher, generator)
                        recorder.accumulate_gradients(loss)
                    positions += int(counted.sum())
                    units = objective.batch_units(batch)
                    tokens_seen += units
                    bar.update(units)
                    bar.set_postfix_str(f"pass {index + 1}/{len(groups)}", refresh=False)
            if index == 0:
                num_positions = positions
            elif positions != num_positions:
                raise RuntimeError("the batches changed between passes; pass a callable that replays the same data")
            if positions == 0:
                raise UnmemorizeError("the data has no position with a next-token label (every window is shorter than 2 tokens)")
            pass_activation, pass_gradient = {}, {}
            for name in group:
                owner = recorder.activation_owner[name]
                if owner != name:
                    shared[name] = owner
                pass_activation[name] = (recorder.activation[owner] / positions).cpu()
                pass_gradient[name] = (recorder.gradient[name] / positions).cpu()
            if on_pass is not None:
                on_pass(index, len(groups), pass_activation, pass_gradient)
            else:
                activation.update(pass_activation)
                gradient.update(pass_gradient)
    seconds = time.perf_counter() - start
    shapes = {n: list(weight_shape(modules[n])) for n in targets}
    return KFACFactors(
        activation=activation,
        gradient=gradient,
        num_positions=num_positions,
        metadata={
            "fisher": config.fisher,
            "seed": config.seed,
            "seq_len": config.seq_len,
            "max_tokens": config.max_tokens,
            "batch_size": config.batch_size,
            "accumulation_dtype": config.dtype,
            "model_dtype": str(get_weight(modules[targets[0]]).dtype).replace("torch.", ""),
            "objective": objective.name,
            "positions": objective.positions_description,
            "normalization": "A and G are means over counted positions; g is the gradient of the SUM-reduced loss",
            "kronecker_order": "F_W ~ G (x) A for row-major vec(W), W of shape (d_out, d_in)",
            "shared_activation": shared,
            "module_shapes": shapes,
            "weight_fingerprints": fingerprints,
            "passes": len(groups),
            "tokens": tokens_seen // len(groups),
            "seconds": round(seconds, 3),
        },
    )


def collect_from_files(model: nn.Module, tokenizer, data: str, targets: list[str], config: CollectConfig | None = None,
                       on_pass=None) -> KFACFactors:
    """Collect factors from a .txt/.jsonl file or folder (see ``unmemorize.data``); ``on_pass`` as in ``collect_factors``."""
    config = config or CollectConfig()
    config.validate()
    files = list_data_files(data)
    budget = config.max_tokens or None
    pad_id = pad_token_id(tokenizer) if tokenizer is not None else 0

    vocab_size, max_length = model_limits(model)

    def batches():
        return iter_batches(iter_windows(files, tokenizer, config.seq_len, budget, vocab_size, max_length), config.batch_size, pad_id)

    if next(iter(batches()), None) is None:
        raise UnmemorizeError(f"data path {data!r} holds no window of at least 2 tokens")
    factors = collect_factors(model, batches, targets, config, total_tokens=budget, on_pass=on_pass)
    factors.metadata["data"] = {
        "path": str(data),
        "files": [str(f) for f in files],
        "fingerprint": data_fingerprint(files, config.seq_len, budget),
    }
    return factors
