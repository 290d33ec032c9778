"""Collecting K-FAC factors with forward hooks and one ``autograd.grad`` per batch.

For a linear module y = W a (+ b), W of shape (d_out, d_in), the Fisher block of vec(W)
(row-major) is approximated as F_W ~ G (x) A with

    A = (1/N) sum_{n,t in P} a_{n,t} a_{n,t}^T          (d_in, d_in)
    G = (1/N) sum_{n,t in P} g_{n,t} g_{n,t}^T          (d_out, d_out)
    g_{n,t} = d L / d y_{n,t},   L = sum_{n,t in P} -log p(y*_{n,t+1} | x_{n,<=t})

P is the set of counted positions: every real token that has a next-token label (the last
position of each window and all padding are excluded), N = |P|. L is SUM-reduced, so g is a
per-token quantity that does not depend on the batch size. The label y* is sampled from the
model's own softmax (``fisher="true"``, the paper's choice) with a generator seeded per window
(``objectives.window_seed(seed, window index)``), or is the gold next token (``fisher="empirical"``).

At scale: ``torchrun`` shares the windows between processes (``distributed.py``), the partial
sums are checkpointed atomically and a run resumes where it was killed (``checkpoint.py``), and a
model dispatched over several devices (``--device-map auto``) accumulates each factor on its
module's device.

How it runs: all parameters are frozen; a forward hook on each target records A from its input
(modules that read the very same input tensor, like gate_proj/up_proj, share one A
accumulator) and, if the module's output does not already require grad, replaces it by a
detached leaf that does. The graph therefore starts at the earliest targeted module: backward
never runs below it. After the forward pass, ``torch.autograd.grad(L, outputs)`` returns every
g at once. Accumulation is in float32 (or float64) whatever the model dtype.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import iter_windows, list_data_files, listing_fingerprint, pad_batch, pad_token_id
from ..errors import UnmemorizeError, check_seed
from ..matrices import Matrix, model_matrices
from ..models import model_limits, parse_dtype
from .checkpoint import Checkpoint, UnusableCheckpoint
from .distributed import SINGLE_PROCESS, ProcessGroup
from .experts import ExpertTap, eager_experts
from .factors import KFACFactors
from .objectives import NextTokenObjective, window_seed

CHECKPOINT_SECONDS = 600  # default checkpoint interval: about every 10 minutes of work


@dataclass
class CollectConfig:
    """How K-FAC factors are collected (saved in factors.json next to the factors)."""

    fisher: Literal["true", "empirical"] = field(
        default="true",
        metadata={"help": "'true': next-token labels sampled from the model's softmax (seeded per window); 'empirical': gold next tokens."},
    )
    seq_len: int = field(default=512, metadata={"help": "Window length in tokens for text data."})
    max_tokens: int | None = field(
        default=1_000_000, metadata={"help": "Token budget over all windows (0 or None: the whole data)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Windows per forward/backward pass (per process under torchrun)."})
    seed: int = field(default=0, metadata={"help": "Seed of the label sampler (true Fisher)."})
    dtype: Literal["float32", "float64"] = field(
        default="float32", metadata={"help": "Accumulation dtype of A and G, whatever the model dtype."}
    )
    modules_per_pass: int = field(
        default=0, metadata={"help": "Bound memory: collect at most N modules per data pass (0: all in one pass)."}
    )
    text_field: str = field(default="text", metadata={"help": "Field (or column) holding the text in .jsonl, parquet and datasets data."})
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "Checkpoint the partial sums every N tokens (default: about every 10 minutes of work; 0: never)."}
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
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise UnmemorizeError("--checkpoint-every must be >= 0 tokens")
        if not self.text_field:
            raise UnmemorizeError("--text-field is empty")
        check_seed(self.seed)


@dataclass
class Step:
    """One step of this process: its share of a round of windows, and where the round ends.

    ``batch`` holds ``input_ids``/``attention_mask`` (and ``window_index``, the global index of
    each row) or is None when this process's share of the round is empty; ``position`` is the
    number of windows of the whole stream consumed once the round is done (None: unknown)."""

    batch: dict | None
    position: int | None = None


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


def _input_device(model: nn.Module) -> torch.device:
    """Where batches go: the first parameter's device (accelerate's dispatch moves them on from there)."""
    return next(model.parameters()).device


class _PassRecorder:
    """Hooks for one pass over the data: A and G sums for a group of matrices, each on its parameter's device.

    Matrices that read the very same input tensor (gate_proj and up_proj; the two halves of a fused
    gate_up_proj; q, k, v) share one A sum; which ones do is found once, before the data, by a
    forward pass on a dummy input, so every process holds the same accumulators in the same order
    (what the all-reduce needs). A fused half's G is its rows' block of the fused output's G.
    Expert matrices are recorded through ``experts.ExpertTap`` with their own position counts."""

    def __init__(self, matrices: dict[str, Matrix], dtype: torch.dtype, dummy_batch: dict):
        self.matrices = matrices
        self.dtype = dtype
        self.counted: torch.Tensor | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.batch_inputs: dict[str, torch.Tensor] = {}
        self.expert_outputs: list[tuple[torch.Tensor, torch.Tensor, list[Matrix]]] = []
        self.handles = []
        self.taps: list[ExpertTap] = []
        dense = {n: m for n, m in matrices.items() if m.kind != "expert"}
        self.activation_owner = self.find_owners(dense, dummy_batch) if dense else {}
        self.activation_owner.update(expert_activation_owners(matrices))
        self.activation = {o: self._zeros(matrices[o], 1) for o in dict.fromkeys(self.activation_owner.values())}  # owner -> sum a a^T
        self.gradient = {n: self._zeros(m, 0) for n, m in matrices.items()}  # matrix -> sum g g^T
        self.expert_counts = {o: torch.zeros(1, dtype=torch.float64, device=matrices[o].weight().device)
                              for o in self.activation if matrices[o].kind == "expert"}  # owner -> routed counted positions

    def _zeros(self, matrix: Matrix, side: int) -> torch.Tensor:
        size = matrix.shape[side]
        return torch.zeros(size, size, dtype=self.dtype, device=matrix.weight().device)

    @staticmethod
    def find_owners(matrices: dict[str, Matrix], dummy_batch: dict) -> dict[str, str]:
        """matrix -> the first matrix that reads the very same input tensor (itself if none)."""
        dummy_batch = dict(dummy_batch)
        model_forward, seen, owners = dummy_batch.pop("_forward"), [], {}

        def hook(name):
            def record(module, inputs):
                owner = next((o for o, t in seen if t is inputs[0]), name)
                seen.append((name, inputs[0]))
                owners[name] = owner
            return record

        handles = [m.module.register_forward_pre_hook(hook(n)) for n, m in matrices.items()]
        try:
            with torch.no_grad():
                model_forward(dummy_batch)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in matrices if n not in owners]
        if missing:
            raise UnmemorizeError(f"target modules never run in a forward pass of this model: {', '.join(missing)}")
        return owners

    def __enter__(self):
        by_experts: dict[str, list[Matrix]] = {}
        for name, matrix in self.matrices.items():
            if matrix.kind == "expert":
                by_experts.setdefault(matrix.owner, []).append(matrix)
            else:
                self.handles.append(matrix.module.register_forward_hook(self._hook(name)))
        for owner, matrices in by_experts.items():
            tap = ExpertTap(owner, matrices[0].module, matrices, self._record_expert_activation, self._keep_expert_output)
            tap.counted = self.counted
            tap.install()
            self.taps.append(tap)
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        for tap in self.taps:
            tap.remove()

    def set_counted(self, counted: torch.Tensor) -> None:
        self.counted = counted
        for tap in self.taps:
            tap.counted = counted

    def tensors(self) -> list[torch.Tensor]:
        """Every sum, in a fixed order (the same on every process)."""
        return [*self.activation.values(), *self.gradient.values(), *self.expert_counts.values()]

    def sums(self) -> dict[str, torch.Tensor]:
        return {**{f"{o}.A": t for o, t in self.activation.items()}, **{f"{n}.G": t for n, t in self.gradient.items()},
                **{f"{o}.N": t for o, t in self.expert_counts.items()}}

    def load_sums(self, sums: dict[str, torch.Tensor]) -> None:
        for key, tensor in self.sums().items():
            if key not in sums or sums[key].shape != tensor.shape:
                raise UnusableCheckpoint(f"the checkpoint has no partial sum {key!r} of shape {tuple(tensor.shape)}; delete it to start over")
            tensor.copy_(sums[key])

    def _hook(self, name: str):
        def hook(module, inputs, output):
            a = inputs[0]
            owner = self.activation_owner[name]
            counted = _token_mask(self.counted, a, name)
            if owner == name:
                self.batch_inputs[name] = a
                rows = a.detach()[counted].to(self.dtype)  # (N_batch, d_in)
                self.activation[name].addmm_(rows.T, rows)
            elif self.batch_inputs.get(owner) is not a:
                raise RuntimeError(f"{name} stopped sharing its input with {owner}; cannot share A")
            if not output.requires_grad:  # earliest target: the graph starts here
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output

        return hook

    def _record_expert_activation(self, owner: str, rows: torch.Tensor) -> None:
        if owner in self.activation:
            rows = rows.to(self.dtype)
            self.activation[owner].addmm_(rows.T, rows)
            self.expert_counts[owner] += rows.shape[0]

    def _keep_expert_output(self, output: torch.Tensor, mask: torch.Tensor, parts: list[Matrix]) -> None:
        self.expert_outputs.append((output, mask, parts))

    def accumulate_gradients(self, loss: torch.Tensor) -> None:
        names = list(self.outputs)
        distinct = list({id(t): t for t in [*self.outputs.values(), *(o for o, _, _ in self.expert_outputs)]}.values())
        grads = dict(zip(map(id, distinct), torch.autograd.grad(loss, distinct, allow_unused=True)))
        for name in names:
            output = self.outputs[name]
            grad = grads[id(output)]
            grad = torch.zeros_like(output) if grad is None else grad
            rows = grad[_token_mask(self.counted, grad, name)].to(self.dtype)  # (N_batch, d_out of the module)
            self._add_gradient(name, rows)
        for output, mask, parts in self.expert_outputs:
            grad = grads[id(output)]
            grad = torch.zeros_like(output) if grad is None else grad
            rows = grad[mask].to(self.dtype)
            for matrix in parts:
                self._add_gradient(matrix.name, rows)
        self.outputs.clear()
        self.batch_inputs.clear()
        self.expert_outputs.clear()

    def _add_gradient(self, name: str, rows: torch.Tensor) -> None:
        matrix = self.matrices[name]
        if matrix.rows is not None:  # a half of a fused output: its rows of W are these output columns
            start, stop, step = matrix.rows
            rows = rows[:, start:stop:step]
        self.gradient[name].addmm_(rows.T, rows)


def expert_activation_owners(matrices: dict[str, Matrix]) -> dict[str, str]:
    """Expert matrix -> the first of the group that reads the same rows (an expert's gate and up: one A)."""
    first: dict[tuple, str] = {}
    owners = {}
    for name, matrix in matrices.items():
        if matrix.kind == "expert":
            owners[name] = first.setdefault((matrix.owner, matrix.parameter, matrix.expert), name)
    return owners


def _token_mask(counted: torch.Tensor, tensor: torch.Tensor, name: str) -> torch.Tensor:
    """The counted-position mask for a module's input or output: (B, T) rows, or the (B*T,) rows of a
    module that reads the flattened tokens (a shared expert of Qwen2-MoE)."""
    counted = counted.to(tensor.device)
    if tuple(tensor.shape[:-1]) == tuple(counted.shape):
        return counted
    if tensor.ndim == 2 and tensor.shape[0] == counted.numel():
        return counted.reshape(-1)
    raise UnmemorizeError(f"{name}: its input or output has shape {tuple(tensor.shape)}, which does not map onto the batch's "
                          f"{tuple(counted.shape)} token positions; choose other targets")


def _module_groups(names: list[str], per_pass: int) -> list[list[str]]:
    if per_pass <= 0 or per_pass >= len(names):
        return [names]
    return [names[i : i + per_pass] for i in range(0, len(names), per_pass)]


def _dummy_batch(model: nn.Module, objective) -> dict:
    """The smallest input the objective's model takes, and how to run it (for ``find_owners``)."""
    batch = objective.dummy_batch(model, _input_device(model))
    return {**batch, "_forward": lambda b: objective.forward(model, b)}


def _steps(batches, start: int) -> Iterator[Step]:
    """The steps of a list, or of a callable ``batches(start_window)`` / ``batches()``, as ``Step``s."""
    if callable(batches):
        items = batches(start) if start else batches()
    elif start:
        raise UnmemorizeError("resuming needs a callable that can skip the windows already done")
    else:
        items = batches
    for item in items:
        yield item if isinstance(item, Step) else Step(item)


def _rows(batch: dict) -> int:
    first = batch.get("input_ids", batch.get("pixel_values"))
    return int(first.shape[0])


class _Cadence:
    """When to checkpoint: every N rounds, N from --checkpoint-every tokens or, by default, from the
    measured work time of rounds 1-4 of this run (rank 0 measures, every rank receives the same N).

    The clock starts when round 0 ends, so it counts neither the start-up nor, after ``--resume``,
    loading the saved sums and re-reading the data up to the checkpoint (which made a resumed run
    checkpoint far too often), nor round 0's own warm-up."""

    def __init__(self, config: CollectConfig, group: ProcessGroup, tokens_per_round: int):
        self.group = group
        self.every = None
        if config.checkpoint_every:
            self.every = max(1, math.ceil(config.checkpoint_every / max(1, tokens_per_round)))
        elif config.checkpoint_every == 0:
            self.every = 0
        self.round_zero_done: float | None = None

    def due(self, step: int) -> bool:
        if self.every is None:
            if step == 0:
                self.round_zero_done = time.perf_counter()
            elif step == 4 and self.round_zero_done is not None:
                per_round = (time.perf_counter() - self.round_zero_done) / 4
                self.every = self.group.broadcast_int(max(1, int(CHECKPOINT_SECONDS / max(per_round, 1e-9))))
        return bool(self.every) and (step + 1) % self.every == 0


def collect_factors(
    model: nn.Module,
    batches: Callable[..., Iterable] | list,
    targets: list[str],
    config: CollectConfig | None = None,
    objective=None,
    total_tokens: int | None = None,
    on_pass: Callable[[int, int, dict, dict], None] | None = None,
    group: ProcessGroup = SINGLE_PROCESS,
    checkpoint: Checkpoint | None = None,
) -> KFACFactors:
    """K-FAC factors for ``targets`` over ``batches`` (dicts with input_ids and attention_mask, or ``Step``s).

    ``batches`` is a list, or a callable returning a fresh iterable (needed when
    ``config.modules_per_pass`` splits the targets over several passes; with a ``checkpoint`` it
    is called as ``batches(start_window)`` to skip the windows already done). A batch's
    ``window_index`` (B,) gives each row's index in the data stream, which seeds its labels;
    without it rows are numbered in the order they come. Several passes, several processes
    (``group``) and resumed runs therefore all give the factors of one uninterrupted pass.

    ``on_pass(index, passes, activation, gradient)``, if given, receives each pass's factors
    (module name -> CPU tensor) as soon as the pass ends and they are not kept: memory then holds
    one pass's factors at a time, and the returned object carries only the metadata.
    """
    config = config or CollectConfig()
    config.validate()
    check_model_dtype(model, targets)
    run = _Collection(model, batches, config, objective or NextTokenObjective(), group, checkpoint)
    missing = [n for n in targets if n not in run.matrices]
    if missing:
        raise UnmemorizeError(f"target modules not in the model: {', '.join(missing)}")
    # the weights these factors belong to (a checkpoint's settings already hold them: hashed once)
    fingerprints = (checkpoint.settings.get("weights") if checkpoint is not None else None) or \
        {n: run.matrices[n].fingerprint() for n in targets}
    if not group.same_on_all_ranks(_short_hash(json.dumps(fingerprints, sort_keys=True))):
        raise UnmemorizeError(f"rank {group.rank}: the ranks hold different weights for the target modules (their sha256 "
                              "fingerprints differ); every rank must load the same model")
    activation: dict[str, torch.Tensor] = {}
    gradient: dict[str, torch.Tensor] = {}
    groups = _module_groups(targets, config.modules_per_pass)
    start = time.perf_counter()
    run.bar = tqdm(total=None if total_tokens is None else total_tokens * len(groups), unit=run.objective.unit, unit_scale=True,
                   desc="collect K-FAC", disable=not config.progress or not group.is_main, dynamic_ncols=True)
    if group.is_main and (run.skipped["passes"] or run.skipped["windows"]):
        print(f"resuming from the checkpoint: {run.skipped['passes']} of {len(groups)} pass(es) done, then "
              f"{run.skipped['windows']} windows ({run.skipped['tokens']} tokens) of pass {run.skipped['passes'] + 1} already counted "
              "and skipped", file=sys.stderr)
    with _frozen(model), eager_experts(model), run.bar:
        for index, names in enumerate(groups):
            if index < run.passes_done:  # finished before the run was interrupted: rank 0 has its factors
                if not group.is_main:
                    continue
                pass_activation, pass_gradient = checkpoint.finished_pass(index)
                run.shared.update({n: o for n, o in run.state.get("shared", {}).items() if n in names})
                run.bar.update(int(run.state.get("pass_tokens", 0)))
            else:
                pass_activation, pass_gradient = run.one_pass(index, names, len(groups))
            if on_pass is not None:
                on_pass(index, len(groups), pass_activation, pass_gradient)
            else:
                activation.update(pass_activation)
                gradient.update(pass_gradient)
            del pass_activation, pass_gradient  # with on_pass, one pass's factors at a time: not this pass's during the next
    return KFACFactors(
        activation=activation,
        gradient=gradient,
        num_positions=run.num_positions,
        metadata={
            "fisher": config.fisher,
            "seed": config.seed,
            "label_seeding": "per window: blake2b(seed/window index)",
            "seq_len": config.seq_len,
            "max_tokens": config.max_tokens,
            "batch_size": config.batch_size,
            "accumulation_dtype": config.dtype,
            "model_dtype": str(run.matrices[targets[0]].weight().dtype).replace("torch.", ""),
            "objective": run.objective.name,
            "positions": run.objective.positions_description,
            "normalization": "A and G are means over counted positions; g is the gradient of the SUM-reduced loss",
            "kronecker_order": "F_W ~ G (x) A for row-major vec(W), W of shape (d_out, d_in)",
            "shared_activation": run.shared,
            "module_shapes": {n: list(run.matrices[n].shape) for n in targets},
            "fused": {n: {"source": m.source, "kind": m.kind, **({"rows": list(m.rows)} if m.rows else {}),
                          **({"expert": m.expert} if m.expert is not None else {})}
                      for n in targets if (m := run.matrices[n]).kind != "linear"},
            **({"expert_positions": run.expert_positions, "unrouted_experts": run.unrouted} if run.expert_positions or run.unrouted else {}),
            "weight_fingerprints": fingerprints,
            "passes": len(groups),
            "processes": group.world_size,
            "resumed": bool(run.skipped["passes"] or run.skipped["windows"]),
            "resume_skipped": run.skipped,  # passes finished before, then windows and tokens of the next pass counted before
            "tokens": run.tokens or int(run.state.get("pass_tokens", 0)),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )


class _Collection:
    """The state of one ``collect_factors`` call: where it resumes, counts, and how to run a pass."""

    def __init__(self, model, batches, config: CollectConfig, objective, group: ProcessGroup, checkpoint: Checkpoint | None):
        self.model, self.batches, self.config, self.objective = model, batches, config, objective
        self.group, self.checkpoint = group, checkpoint
        self.matrices = model_matrices(model)
        self.dtype = parse_dtype(config.dtype)
        self.device = _input_device(model)
        self.state = _resume_point(checkpoint, group)
        self.expert_positions: dict[str, int] = dict(self.state.get("expert_positions", {}))
        self.unrouted: list[str] = list(self.state.get("unrouted", []))
        self.passes_done = int(self.state.get("passes_done", 0))
        self.num_positions = int(self.state.get("num_positions", 0))
        partial = bool(self.state.get("sums"))  # the checkpoint is inside a pass: its windows so far are skipped
        self.skipped = {"passes": self.passes_done, "windows": int(self.state.get("windows") or 0) if partial else 0,
                        "tokens": int(self.state.get("tokens") or 0) if partial else 0}
        self.shared: dict[str, str] = {}
        self.tokens = 0
        self.cadence = _Cadence(config, group, group.world_size * config.batch_size * config.seq_len)
        self.bar = None

    def one_pass(self, index: int, names: list[str], passes: int) -> tuple[dict, dict]:
        """Sums over the data for ``names`` (from the checkpoint's, when resuming this pass), reduced over
        the processes and divided by the counted positions: (A, G) per module, on the CPU."""
        group, config = self.group, self.config
        recorder = _PassRecorder({n: self.matrices[n] for n in names}, self.dtype, _dummy_batch(self.model, self.objective))
        resume = self.state if self.state.get("pass", self.passes_done) == index and self.state.get("sums") else {}
        window = int(resume.get("windows", 0))
        positions = tokens = 0
        if resume and isinstance(self.batches, WindowSteps) and resume.get("windows_sha256"):
            self.batches.expected = (window, resume["windows_sha256"])  # rank 0 checks the windows it skips
        if resume and group.is_main:  # the checkpoint holds the sums of every process so far
            recorder.load_sums(self.checkpoint.sums())
            positions, tokens = int(resume["positions"]), int(resume["tokens"])
            self.bar.update(tokens)
        with recorder:
            for step_no, step in enumerate(_steps(self.batches, window)):
                if step.batch is not None:
                    batch = dict(step.batch)
                    indices = batch.pop("window_index", None)
                    if indices is None:  # rows numbered in the order they come
                        indices = list(range(window, window + _rows(batch)))
                        window = indices[-1] + 1
                    counted, units = self._step(recorder, batch, [int(i) for i in indices])
                    positions += counted
                    tokens += units
                    self.bar.update(units * group.world_size)
                    self.bar.set_postfix_str(f"pass {index + 1}/{passes}", refresh=False)
                if step.position is not None:
                    window = step.position
                    if self.checkpoint is not None and self.cadence.due(step_no):
                        self._check_same_data()
                        positions, tokens = _reduce(group, recorder, positions, tokens)
                        if group.is_main:
                            self.checkpoint.save({"pass": index, "windows": window, "positions": positions, "tokens": tokens,
                                                  "num_positions": self.num_positions, "windows_sha256": self._digest()},
                                                 recorder.sums())
        self._check_same_data()
        positions, tokens = _reduce(group, recorder, positions, tokens, final=True)
        if index == 0 or (index == self.passes_done and self.num_positions == 0):
            self.num_positions = positions
        elif positions != self.num_positions:
            raise RuntimeError("the batches changed between passes; pass a callable that replays the same data")
        if positions == 0:
            raise UnmemorizeError("the data has no position with a next-token label (every window is shorter than 2 tokens)")
        activation, gradient = {}, {}
        for name in names:
            owner = recorder.activation_owner[name]
            count = positions
            if owner in recorder.expert_counts:  # an expert: means over the counted positions routed to it
                count = int(recorder.expert_counts[owner].item())
                self.expert_positions[name] = count
                if count == 0:  # never routed to: no curvature measured, nothing to edit it by
                    self.unrouted.append(name)
                    continue
            if owner != name:
                self.shared[name] = owner
            if group.is_main:  # the other ranks never hold the factors: rank 0 writes them
                activation[name] = (recorder.activation[owner] / count).cpu()
                gradient[name] = (recorder.gradient[name] / count).cpu()
        self.tokens = tokens
        if self.checkpoint is not None and group.is_main:
            self.checkpoint.save_finished_pass(index, activation, gradient,
                                               {"pass": index + 1, "windows": 0, "positions": 0, "tokens": 0, "sums": None,
                                                "num_positions": self.num_positions, "shared": self.shared, "pass_tokens": tokens,
                                                "expert_positions": self.expert_positions, "unrouted": self.unrouted})
        return activation, gradient

    def _digest(self) -> str | None:
        return self.batches.digest if isinstance(self.batches, WindowSteps) else None

    def _check_same_data(self) -> None:
        """Under torchrun: every rank has read the same windows so far (their sha256 agree), else one error on every rank."""
        digest = self._digest()
        if digest is not None and not self.group.same_on_all_ranks(_short_hash(digest)):
            raise UnmemorizeError(f"rank {self.group.rank}: the ranks read different data (the sha256 of their windows differ): "
                                  "every rank must see the same --data (a folder on every node, with the same files)")

    def _step(self, recorder: _PassRecorder, batch: dict, indices: list[int]) -> tuple[int, int]:
        """One forward and backward: (counted positions, tokens) of this batch."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        counted = self.objective.counted_positions(batch)
        if not counted.any():
            return 0, 0
        recorder.set_counted(counted)
        seeds = [window_seed(self.config.seed, i) for i in indices]
        with torch.enable_grad():
            loss = self.objective.loss(self.model, batch, counted, self.config.fisher, seeds)
            recorder.accumulate_gradients(loss)
        return int(counted.sum()), self.objective.batch_units(batch)


def _resume_point(checkpoint: Checkpoint | None, group: ProcessGroup) -> dict:
    """Rank 0 reads (and checks) the checkpoint; every rank learns where to start."""
    if checkpoint is None:
        return {}
    state, refusal = {}, ""
    if group.is_main and checkpoint.exists():
        try:
            state = checkpoint.load()
        except UnmemorizeError as exc:  # every rank stops with this message, none waits for a collective that never comes
            refusal = str(exc)
    refusal = group.broadcast_text(refusal)
    if refusal:
        raise UnusableCheckpoint(refusal if group.is_main else f"rank {group.rank}: stopped because rank 0 refused the checkpoint: {refusal}")
    found = group.broadcast_int(1 if state else 0)
    if not found:
        return {}
    where = {key: group.broadcast_int(int(state.get(key) or 0)) for key in ("passes_done", "pass", "windows")}
    where["sums"] = group.broadcast_int(1 if state.get("sums") else 0)
    return state if group.is_main else where


def _reduce(group: ProcessGroup, recorder: _PassRecorder, positions: int, tokens: int, final: bool = False) -> tuple[int, int]:
    """All-reduce the sums and counts. At a checkpoint rank 0 keeps the totals and the others start
    again from zero; at the end of a pass (``final``) every rank keeps the totals."""
    if not group.distributed:
        return positions, tokens
    group.all_reduce(recorder.tensors())
    positions, tokens = group.all_reduce_int(positions), group.all_reduce_int(tokens)
    if not group.is_main and not final:
        for tensor in recorder.tensors():
            tensor.zero_()
        return 0, 0
    return positions, tokens


def _short_hash(text: str) -> int:
    """48 bits of sha256(text): an integer compared across ranks (exact in float64)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


class WindowSteps:
    """``steps(start_window)``: this process's ``Step``s over the files' windows (see ``distributed.py``).

    Every window read (those skipped on a resume included) is hashed in stream order: sha256 over
    each window's length and token ids (int64, little-endian). ``digest`` is the hash of the windows
    up to the last step given out, so a checkpoint records what it counted and the factors record
    what the run read, without a second read of the corpus; with ``expected`` = (start, digest) a
    resumed run checks that the windows before its checkpoint are those the checkpoint counted."""

    def __init__(self, files, tokenizer, config: CollectConfig, pad_id: int, group: ProcessGroup = SINGLE_PROCESS,
                 vocab_size: int | None = None, max_length: int | None = None):
        self.files, self.tokenizer, self.config, self.pad_id, self.group = files, tokenizer, config, pad_id, group
        self.vocab_size, self.max_length = vocab_size, max_length
        self.digest: str | None = None
        self.expected: tuple[int, str] | None = None

    def _check(self, start: int, digest) -> None:
        if self.expected is not None and self.expected[0] == start and digest.hexdigest() != self.expected[1]:
            raise UnusableCheckpoint(f"the data is not the data of the checkpoint: its first {start} windows hash to "
                                  f"{digest.hexdigest()[:16]}..., the checkpoint counted windows hashing to {self.expected[1][:16]}... "
                                  "(a file changed, or another corpus); rerun on the same data, or delete the checkpoint to start over")

    def __call__(self, start: int = 0) -> Iterator[Step]:
        config, round_size = self.config, self.group.world_size * self.config.batch_size
        windows = iter_windows(self.files, self.tokenizer, config.seq_len, config.max_tokens or None, self.vocab_size, self.max_length,
                               config.text_field)
        digest = hashlib.sha256()
        chunk: list[list[int]] = []
        first = index = 0
        for index, window in enumerate(windows):
            if index == start:
                self._check(start, digest)
            digest.update(len(window).to_bytes(8, "little") + array("q", window).tobytes())
            if index < start:
                continue
            if not chunk:
                first = index
            chunk.append(window)
            if len(chunk) == round_size:
                self.digest = digest.hexdigest()
                yield _share(chunk, first, self.group, self.pad_id)
                chunk = []
        if start and index + 1 <= start:  # the checkpoint was at the very end of the data
            self._check(start, digest)
        self.digest = digest.hexdigest()
        if chunk:
            yield _share(chunk, first, self.group, self.pad_id)


def _share(chunk: list[list[int]], first: int, group: ProcessGroup, pad_id: int) -> Step:
    mine = list(range(group.rank, len(chunk), group.world_size))
    if not mine:
        return Step(None, first + len(chunk))
    batch = pad_batch([chunk[k] for k in mine], pad_id)
    batch["window_index"] = torch.tensor([first + k for k in mine])
    return Step(batch, first + len(chunk))


FLOAT16_REFUSAL = ("float16 weights are not collected: without loss scaling the gradients g underflow in float16 and G is "
                   "silently biased low; load the model in bfloat16 (the same memory, float32's range) or float32")


def check_model_dtype(model: nn.Module, targets: list[str]) -> None:
    """Refuse float16 target weights (see ``FLOAT16_REFUSAL``)."""
    matrices = model_matrices(model)
    if any(matrices[name].weight().dtype == torch.float16 for name in targets if name in matrices):
        raise UnmemorizeError(FLOAT16_REFUSAL)


def collection_settings(model: nn.Module, targets: list[str], files, config: CollectConfig, objective_name: str,
                        data_fingerprint: str | None = None) -> dict:
    """What a resumed run must share with the checkpoint it continues (``data_fingerprint`` stands for the
    file listing where the data are not files of text, e.g. the sha256 of an image set's pixels)."""
    matrices = model_matrices(model)
    weights = [matrices[n].weight() for n in targets]
    return {
        "targets": targets,
        "weights": {n: matrices[n].fingerprint() for n in targets},  # rounded to bfloat16: dtype is its own setting
        "model_dtype": ",".join(sorted({str(w.dtype).replace("torch.", "") for w in weights})),
        "device_type": ",".join(sorted({w.device.type for w in weights})),
        "text_field": config.text_field,
        "fisher": config.fisher,
        "seed": config.seed,
        "seq_len": config.seq_len,
        "max_tokens": config.max_tokens or None,
        "accumulation_dtype": config.dtype,
        "modules_per_pass": config.modules_per_pass,
        "objective": objective_name,
        # last: it also covers windowing and text field, which a refusal should name themselves
        "data": data_fingerprint or listing_fingerprint(files, config.seq_len, config.max_tokens or None, config.text_field),
    }


def collect_from_files(model: nn.Module, tokenizer, data: str, targets: list[str], config: CollectConfig | None = None,
                       on_pass=None, group: ProcessGroup = SINGLE_PROCESS, checkpoint: Checkpoint | None = None,
                       ahead: dict | None = None) -> KFACFactors:
    """Collect factors from corpus files (see ``unmemorize.corpus``); ``on_pass``, ``group`` and
    ``checkpoint`` as in ``collect_factors``; ``ahead``: ``data.read_ahead``'s counts when the data
    were read before the model loaded (else the first window is looked for here)."""
    config = config or CollectConfig()
    config.validate()
    files = list_data_files(data)
    budget = config.max_tokens or None
    pad_id = pad_token_id(tokenizer) if tokenizer is not None else 0
    steps = WindowSteps(files, tokenizer, config, pad_id, group, *model_limits(model))
    if ahead is None and next(iter_windows(files, tokenizer, config.seq_len, budget, *model_limits(model), config.text_field), None) is None:
        raise UnmemorizeError(f"data path {data!r} holds no window of at least 2 tokens")
    total = ahead["tokens"] if ahead else budget
    factors = collect_factors(model, steps, targets, config, total_tokens=total, on_pass=on_pass, group=group, checkpoint=checkpoint)
    factors.metadata["data"] = {
        "path": str(data),
        "files": [str(f) for f in files],
        "fingerprint": steps.digest,  # sha256 of the windows read, in order (the last pass's read)
        "fingerprint_of": "the token windows read (length + int64 ids each, in stream order)",
        "listing": listing_fingerprint(files, config.seq_len, budget, config.text_field),
        **({"read_ahead": ahead} if ahead else {}),
    }
    return factors
