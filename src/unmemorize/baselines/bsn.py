"""BalancedSubnet (BSN; Sakarvadia et al., "Mitigating Memorization in Language Models", ICLR 2025,
arXiv 2410.02159): learn which ``ratio`` of each MLP matrix to zero so that the model forgets a
forget set while keeping its loss on a retain set. The weights themselves never change value;
the edit is a hard, permanent zeroing.

For every chosen matrix W (the MLP projections of every block by default, as the authors mask
every MLP matrix; ``targets.resolve_targets``; the K-FAC paper's OLMo-2 variant masked up and
down only, ``--proj up,down``) a score tensor S of W's shape is learned:

    k        = round(ratio * numel(W))                  weights removed per matrix
    M        = 0 at the k entries with the smallest |S| (ties: lower flat index first), 1 elsewhere
    W_eff    = W * M                                    used in the forward pass; W is frozen
    dL/dS    = sign(S) * (dL/dW_eff * W)                straight-through: dL/d|S| := dL/dM

with S initialised like ``kaiming_uniform_(a=sqrt(5))``, i.e. S ~ U(-1/sqrt(d_in), 1/sqrt(d_in))
for W of shape (d_out, d_in) (step 0 is therefore a random pruning of ``ratio`` of each matrix;
the fan is d_in for every layout, as ``kaiming_uniform_`` gives an ``nn.Linear`` weight, where the
authors' GPT-2 ``Conv1D`` masks, stored (d_in, d_out), got d_out).
Every batch holds forget and retain sequences (``sequences.balanced_batches``: half each, where
the authors draw batches from one shuffled concatenation, so the small forget set is seen more
often here and no batch lacks it; an epoch has as many steps as theirs); with the
per-sequence loss CE(x) = mean over x's next-token positions of -log p(x_{t+1} | x_{<=t})
(every position of the sequence), the batch loss is

    L = -(1 - alpha) * mean_{x in forget} CE(x) + alpha * mean_{x in retain} CE(x)

(gradient ascent on the forget set, descent on the retain set; alpha weights the *retain* term),
minimised by SGD with momentum and weight decay over the scores only. At the end W <- W * M(S).

Defaults follow the authors' code (msakarvadia/memorization ``random_subnet_greedy.py``,
``prod_grade.py``) and paper, see ``../shared/paper/balanced-subnet-and-tinymem.md``: SGD lr 0.1,
momentum 0.9, weight decay 5e-4, batch 32, ratio 0.01, 1 epoch (the Pythia driver; more epochs
drive perplexity to infinity on large models), alpha 0.7 (the best Pythia 6.9B run, and the
K-FAC paper's chosen BSN setting; the code's default 0.05 is outside the paper's sweep
{0.5, 0.7, 0.9}).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .._atomic import atomic_dir
from ..data import next_token_positions, pad_batch
from ..edit.methods import module_seed
from ..errors import UnmemorizeError, check_seed
from ..evaluate.generate import check_token_ids, model_device
from ..jsonio import write_json
from ..models import is_linear_like, model_limits, weight_shape
from ..targets import refuse_tied, resolve_targets
from .sequences import TokenSet, as_sequences, balanced_batches, batch_rows, batch_shares, steps_per_epoch

MANIFEST = "unmemorize_edit.json"  # the edit manifest's name, so that 'analyze --edited' reads BSN folders too


@dataclass
class BSNConfig:
    """BalancedSubnet settings (saved in the manifest; the CLI's options are generated from these fields)."""

    ratio: float = field(default=0.01, metadata={"help": "Fraction of the weights of each chosen matrix that is removed "
                                                "(zeroed), in (0, 1); the authors' default 0.01, paper sweeps 1e-3..0.5."})
    alpha: float = field(default=0.7, metadata={"help": "Weight of the retain loss in L = -(1-alpha)*CE(forget) + "
                                               "alpha*CE(retain), in [0, 1]; 1 = retain only (no unlearning). 0.7: the "
                                               "paper's best Pythia run and the K-FAC paper's BSN setting."})
    epochs: int = field(default=1, metadata={"help": "Epochs of ceil((|forget| + |retain|) / batch-size) SGD steps each "
                                            "(the authors' epoch length); 1 as in the authors' Pythia driver."})
    lr: float = field(default=0.1, metadata={"help": "SGD learning rate of the scores (authors: 0.1; the K-FAC paper's BSN: 0.3)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (authors: 0.9)."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay on the scores (authors: 5e-4)."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per step: half forget (rounded up; the whole "
                                                 "forget set if smaller), the rest retain (authors: 32 in all paper sweeps)."})
    seq_len: int = field(default=128, metadata={"help": "Window length for document inputs (.txt, text/input_ids .jsonl); "
                                               "memorization rows (prefix_ids/suffix_ids) are used whole."})
    retain_tokens: int | None = field(default=None, metadata={"help": "Token budget read from a document retain set "
                                                              "(None: all of it)."})
    seed: int = field(default=0, metadata={"help": "Seed of the score initialisation (per module: sha256('<seed>:<name>')) "
                                          "and of the batch order."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def validate(self) -> None:
        """Refuse settings outside their domain, before any loading."""
        if not 0 < self.ratio < 1:
            raise UnmemorizeError(f"--ratio must be in (0, 1) (the fraction of each matrix removed), got {self.ratio}")
        if not 0 <= self.alpha <= 1:
            raise UnmemorizeError(f"--alpha must be in [0, 1] (the retain loss weight), got {self.alpha}")
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 2), ("seq_len", self.seq_len, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UnmemorizeError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UnmemorizeError(f"--lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UnmemorizeError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UnmemorizeError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.retain_tokens is not None and (isinstance(self.retain_tokens, bool) or self.retain_tokens < 2):
            raise UnmemorizeError(f"--retain-tokens must be at least 2 (or unset for all), got {self.retain_tokens}")
        check_seed(self.seed)


def removed_count(ratio: float, numel: int) -> int:
    """k = round(ratio * numel), the weights a matrix loses (the authors' int() truncation differs by at most one)."""
    return int(round(ratio * numel))


def lowest_k_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor of ``magnitudes``' shape, True at exactly ``k`` entries: the k smallest values;
    among equal values at the boundary, the lowest flat indices (deterministic, O(numel))."""
    flat = magnitudes.detach().flatten()
    removed = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        threshold = flat.kthvalue(k).values  # the k-th smallest value
        removed = flat < threshold
        ties = torch.nonzero(flat == threshold).flatten()  # ascending flat indices
        removed[ties[: k - int(removed.sum())]] = True
    return removed.view_as(magnitudes)


class _StraightThroughMask(torch.autograd.Function):
    """M = 1 - lowest_k_mask(|S|, k) forward; the gradient w.r.t. M passes unchanged to |S| backward."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, k: int) -> torch.Tensor:
        return (~lowest_k_mask(magnitudes, k)).to(magnitudes.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ScoreMask(nn.Module):
    """Parametrization W -> W * M(S) of one weight (in the module's storage layout; GPT-2's Conv1D
    stores (d_in, d_out), which changes nothing: the ranking is over all entries of the matrix)."""

    def __init__(self, scores: torch.Tensor, k: int):
        super().__init__()
        self.scores = nn.Parameter(scores)  # float32 whatever the weight's dtype
        self.k = k

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _StraightThroughMask.apply(self.scores.abs(), self.k).to(weight.dtype)

    def removed(self) -> torch.Tensor:
        return lowest_k_mask(self.scores.abs(), self.k)


def initial_scores(module: nn.Module, name: str, seed: int) -> torch.Tensor:
    """S ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (``kaiming_uniform_(a=sqrt(5))`` of a (d_out, d_in) weight),
    float32, drawn with torch.Generator seeded by sha256('<seed>:<module name>') in the weight's
    storage layout."""
    d_in = weight_shape(module)[1]
    generator = torch.Generator().manual_seed(module_seed(seed, name))
    bound = 1.0 / math.sqrt(d_in)
    scores = (torch.rand(module.weight.shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    return scores.to(module.weight.device)


def sequence_losses(model: nn.Module, sequences: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """(B,) CE(x) per sequence: the mean next-token NLL over its real positions (right padding)."""
    device = model_device(model)
    batch = pad_batch(sequences, pad_id)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    counted = next_token_positions(mask)[:, :-1]  # (B, T-1): x_t and x_{t+1} both real
    nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    return (nll * counted).sum(1) / counted.sum(1)


@dataclass
class MaskedModule:
    """What BSN removed from one matrix."""

    shape: list[int]  # storage shape of the weight
    numel: int
    removed: int  # k, entries of the final mask that are 0
    removed_fraction: float  # removed / numel
    zeros_introduced: int  # entries nonzero before and zero after (< removed only where W already held zeros)


@dataclass
class BSNRecord:
    """The result of ``balanced_subnet``: settings, what was removed, and the training curve."""

    config: BSNConfig
    modules: dict[str, MaskedModule]
    steps: int
    forget_sequences: int
    retain_sequences: int
    forget_per_batch: int
    retain_per_batch: int
    history: list[dict]  # per step: forget_ce, retain_ce, loss (batch means)
    wall_seconds: float  # training and applying the mask
    data: dict = field(default_factory=dict)  # provenance of the sets (TokenSet.source) when they were read from files

    def to_dict(self) -> dict:
        return {"method": "bsn", "config": asdict(self.config), "seed": self.config.seed,
                "modules": {name: asdict(stats) for name, stats in self.modules.items()},
                **{k: getattr(self, k) for k in ("steps", "forget_sequences", "retain_sequences", "forget_per_batch",
                                                 "retain_per_batch", "wall_seconds", "data", "history")}}


def _check_fits(model: nn.Module, sequences: list[list[int]], option: str) -> None:
    check_token_ids(model, sequences, what=f"{option} sequence")
    positions = model_limits(model)[1]
    longest = max(len(s) for s in sequences)
    if positions is not None and longest > positions:
        raise UnmemorizeError(f"a {option} sequence has {longest} tokens, more than the model's {positions} positions")


def balanced_subnet(model: nn.Module, forget, retain, config: BSNConfig | None = None, targets: list[str] | None = None,
                    pad_id: int = 0, batch_log: list | None = None,
                    on_epoch: Callable[[int, dict[str, torch.Tensor]], None] | None = None) -> tuple[nn.Module, BSNRecord]:
    """Train BSN masks on ``model`` and apply them permanently; returns ``(model, record)``.

    ``forget`` / ``retain``: ``sequences.TokenSet``s (their sources go into ``record.data``), lists
    of token-id lists, or memorization items (prefix_ids + suffix_ids); neither may be empty (the
    retain set not even with alpha = 0). ``targets``: module names (default:
    ``resolve_targets(model)``, the MLP projections of every block). The model is edited **in place** (deep-copy it first to
    keep the original); on an error or interrupt it is left exactly as it was. Only the chosen
    weights change, and only by zeroing; biases, attention, embeddings, norms and the LM head
    are never touched. ``batch_log``, if given, receives each step's (forget, retain) indices.
    ``on_epoch(e, removed)``, if given, is called after each epoch e = 1..epochs with the entries the masks
    remove at that point: the batch streams and the constant learning rate do not depend on ``epochs``, so
    after epoch e these are exactly the masks of a run with ``epochs = e`` (one long run serves a grid of
    epoch counts; tested). Writes no file (``save_bsn_model`` does).
    """
    config = config or BSNConfig()
    config.validate()
    forget_seqs, retain_seqs = as_sequences(forget, "forget"), as_sequences(retain, "retain")
    _check_fits(model, forget_seqs, "forget")
    _check_fits(model, retain_seqs, "retain")
    names = list(targets) if targets else resolve_targets(model)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not is_linear_like(modules[name]):
            raise UnmemorizeError(f"{name!r} is not a linear module of {type(model).__name__}; choose targets with "
                                  "unmemorize.targets.resolve_targets")
    refuse_tied(model, names)
    largest = max(modules[name].weight.numel() for name in names)
    if removed_count(config.ratio, largest) == 0:
        smallest_ratio = float(f"{1 / largest:.3g}")  # 3 digits, then up until it removes one weight
        while removed_count(smallest_ratio, largest) == 0:
            smallest_ratio = float(f"{smallest_ratio * 1.01:.3g}")
        raise UnmemorizeError(f"--ratio {config.ratio:g} removes no weight at all: round(ratio x {largest}) = 0 for the largest target "
                              f"matrix ({largest} weights); the edit would save an unchanged copy. Use --ratio >= {smallest_ratio:g}")
    if set(map(tuple, forget_seqs)) <= set(map(tuple, retain_seqs)):
        raise UnmemorizeError("every forget sequence is also a retain sequence (the same set given twice?): the objective "
                              "-(1-alpha) CE(forget) + alpha CE(retain) then pulls each of them both ways; give a retain set "
                              "without the sequences to forget")
    start = time.perf_counter()
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    masks: dict[str, ScoreMask] = {}
    history: list[dict] = []
    bar = None
    forget_k, retain_k = batch_shares(config.batch_size, len(forget_seqs), len(retain_seqs))
    per_epoch = steps_per_epoch(config.batch_size, len(forget_seqs), len(retain_seqs))
    total = config.epochs * per_epoch
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()  # no dropout: the run is deterministic
        for name in names:
            module = modules[name]
            mask = ScoreMask(initial_scores(module, name, config.seed), removed_count(config.ratio, module.weight.numel()))
            parametrize.register_parametrization(module, "weight", mask)
            masks[name] = mask
        optimizer = torch.optim.SGD([m.scores for m in masks.values()], lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        batches = balanced_batches(len(forget_seqs), len(retain_seqs), config.batch_size, config.epochs, config.seed)
        bar = tqdm(total=total, desc="bsn", unit="step", disable=not config.progress, dynamic_ncols=True)
        for step, indices in enumerate(batches):
            if batch_log is not None:
                batch_log.append(indices)
            rows, n_forget = batch_rows(forget_seqs, retain_seqs, indices)
            losses = sequence_losses(model, rows, pad_id)  # (B,)
            forget_ce, retain_ce = losses[:n_forget].mean(), losses[n_forget:].mean()
            loss = -(1 - config.alpha) * forget_ce + config.alpha * retain_ce
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append({"step": step, "forget_ce": forget_ce.item(), "retain_ce": retain_ce.item(), "loss": loss.item()})
            bar.update(1)
            bar.set_postfix(forget=f"{history[-1]['forget_ce']:.3f}", retain=f"{history[-1]['retain_ce']:.3f}", refresh=False)
            if on_epoch is not None and (step + 1) % per_epoch == 0:
                on_epoch((step + 1) // per_epoch, {name: mask.removed().clone() for name, mask in masks.items()})
        removed = {name: mask.removed() for name, mask in masks.items()}
    finally:
        if bar is not None:
            bar.close()
        for name in masks:
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    stats = {}
    with torch.no_grad():
        for name, mask in removed.items():
            weight = modules[name].weight
            nonzero_before = int(torch.count_nonzero(weight))
            weight[mask.to(weight.device)] = 0
            stats[name] = MaskedModule(shape=list(weight.shape), numel=weight.numel(), removed=int(mask.sum()),
                                       removed_fraction=int(mask.sum()) / weight.numel(),
                                       zeros_introduced=nonzero_before - int(torch.count_nonzero(weight)))
    record = BSNRecord(config=config, modules=stats, steps=len(history), forget_sequences=len(forget_seqs),
                       retain_sequences=len(retain_seqs), forget_per_batch=forget_k, retain_per_batch=retain_k,
                       history=history, wall_seconds=time.perf_counter() - start,
                       data={role: s.source for role, s in (("forget", forget), ("retain", retain)) if isinstance(s, TokenSet)})
    return model, record


def save_bsn_model(model: nn.Module, out: str | Path, tokenizer=None, record: BSNRecord | None = None, overwrite: bool = False,
                   extra: dict | None = None) -> Path:
    """Write the masked model as a Hugging Face folder (safetensors, config, tokenizer) plus the
    manifest ``unmemorize_edit.json`` (strict JSON), built aside and renamed into place."""
    from .._version import __version__

    manifest = {"unmemorize_version": __version__, **(record.to_dict() if record else {"method": "bsn"}), **(extra or {})}
    with atomic_dir(out, overwrite, kind="bsn") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest)
    return Path(out)
