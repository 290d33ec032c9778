"""Applying an edit to a model in memory (with restore) and saving the edited model.

``apply_edit`` replaces, for every matrix of the plan (a linear module, half of a fused projection or one
expert's matrix: ``matrices.py``), W by the method's W' (cast back to the parameter's dtype); ``AppliedEdit.restore()`` puts the original weights back bit for bit.
``save_edited_model`` writes a complete Hugging Face model folder (safetensors weights, config,
tokenizer) plus ``unmemorize_edit.json`` with per-module statistics and factor provenance.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .._atomic import _fault_point, atomic_dir
from ..basis import ModuleBasis, decompose_factors
from ..curvature.factors import KFACFactors
from ..errors import UnmemorizeError, check_seed
from ..jsonio import write_json
from ..matrices import model_matrices
from ..models import parse_dtype
from ..targets import refuse_tied
from .methods import kfac_edit, module_seed, random_edit, svd_edit
from .selection import select_pairs, select_per_side


@dataclass
class EditConfig:
    """How weights are edited (saved in unmemorize_edit.json)."""

    method: Literal["kfac", "svd", "random"] = field(
        default="kfac",
        metadata={"help": "'kfac': keep the highest-curvature pairs (the paper); 'svd': drop the smallest singular values; "
                  "'random': drop as many K-FAC pairs as 'kfac' would, chosen at random (control)."},
    )
    selection: Literal["pairs", "per-side"] = field(
        default="pairs",
        metadata={"help": "K-FAC selection: 'pairs' keeps top lambda_i*mu_j pairs up to rho of the total mass; "
                  "'per-side' keeps top eigenvectors of G and of A, each up to rho of its own trace."},
    )
    svd_mode: Literal["energy", "prune"] = field(
        default="energy",
        metadata={"help": "For --method svd: rho is the kept fraction of sum(s^2) ('energy') or the fraction of singular values removed ('prune')."},
    )
    compute_dtype: Literal["float64", "float32"] = field(
        default="float64", metadata={"help": "dtype of the projection and SVD; the result is cast back to the weight dtype."}
    )
    eigh_dtype: Literal["float64", "float32"] = field(default="float64", metadata={"help": "dtype of the eigendecompositions."})
    seed: int = field(default=0, metadata={"help": "Seed of the random control's pair choice; each module draws its mask "
                                          "with sha256('<seed>:<module name>')[:8] as its own seed."})

    def validate(self) -> None:
        choices = {"method": ("kfac", "svd", "random"), "selection": ("pairs", "per-side"), "svd_mode": ("energy", "prune"),
                   "compute_dtype": ("float64", "float32"), "eigh_dtype": ("float64", "float32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UnmemorizeError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        check_seed(self.seed)


@dataclass
class ModuleEdit:
    """What an edit did to one module."""

    rho: float
    kept_pairs: int  # K-FAC/random: pairs kept; SVD: singular values kept
    total_pairs: int
    kept_fraction: float
    kept_mass: float | None  # fraction of the curvature mass kept (K-FAC/random); None for SVD
    output_eigenvectors_used: int | None  # distinct G eigenvectors (rows) with a kept pair
    input_eigenvectors_used: int | None  # distinct A eigenvectors (columns) with a kept pair
    relative_change: float  # ||W' - W||_F / ||W||_F
    seconds: float
    random_seed: int | None = None  # random control: this module's seed, module_seed(config.seed, name)


@dataclass
class AppliedEdit:
    """The result of ``apply_edit``: statistics, and the original weights for ``restore``."""

    model: nn.Module
    config: EditConfig
    modules: dict[str, ModuleEdit]
    originals: dict[str, torch.Tensor]
    factor_provenance: dict = field(default_factory=dict)

    def restore(self) -> None:
        """Put the original weights back exactly."""
        matrices = model_matrices(self.model)
        for name, weight in self.originals.items():
            matrices[name].write(weight)

    def summary(self) -> dict:
        return {
            "method": self.config.method,
            "config": asdict(self.config),
            "modules": {name: asdict(stats) for name, stats in self.modules.items()},
            "factors": self.factor_provenance,
        }


def _factor_provenance(factors: KFACFactors | None) -> dict:
    if factors is None:
        return {}
    keep = ("model", "architecture", "fisher", "seed", "seq_len", "max_tokens", "data", "unmemorize_version", "path",
            "foreign_factors_allowed")
    return {"num_positions": factors.num_positions, **{k: factors.metadata[k] for k in keep if k in factors.metadata}}


def apply_edit(
    model: nn.Module,
    plan: dict[str, float],
    factors: KFACFactors | None = None,
    config: EditConfig | None = None,
    bases: dict[str, ModuleBasis] | None = None,
) -> AppliedEdit:
    """Edit every module of ``plan`` (module name -> rho) in place; returns stats and a restore handle.

    ``factors`` are needed for 'kfac' and 'random'; ``bases`` (from ``decompose_factors``) may be
    passed to reuse eigendecompositions across several edits.
    """
    config = config or EditConfig()
    config.validate()
    named = model_matrices(model)
    unknown = [n for n in plan if n not in named]
    if unknown:
        raise UnmemorizeError(f"plan names modules not in the model: {', '.join(unknown)}")
    refuse_tied(model, list(plan))  # however the plan was made: a plan file, --factors' modules, a search
    compute = parse_dtype(config.compute_dtype)
    if config.method in ("kfac", "random"):
        if factors is None and bases is None:
            raise UnmemorizeError(f"--method {config.method} needs K-FAC factors (--factors DIR)")
        if bases is None:
            bases = decompose_factors(factors.subset(list(plan)), parse_dtype(config.eigh_dtype))
        missing = [n for n in plan if n not in bases]
        if missing:
            raise UnmemorizeError(f"no factors for {', '.join(missing)}")
    originals: dict[str, torch.Tensor] = {}
    stats: dict[str, ModuleEdit] = {}
    try:
        for name, rho in plan.items():
            start = time.perf_counter()
            matrix = named[name]
            weight = matrix.weight()
            originals[name] = weight.detach().clone()
            rows_used = cols_used = kept_mass = seed = None
            if config.method == "svd":
                if config.svd_mode == "energy":
                    new, kept, total = svd_edit(weight, keep_energy=rho, compute_dtype=compute)
                else:
                    new, kept, total = svd_edit(weight, prune_ratio=rho, compute_dtype=compute)
            else:
                basis = bases[name]
                if basis.gradient.eigenvalues.numel() != weight.shape[0] or basis.activation.eigenvalues.numel() != weight.shape[1]:
                    raise UnmemorizeError(f"{name}: factor sizes do not match its weight {tuple(weight.shape)}")
                if not (basis.gradient.eigenvalues.sum() > 0 and basis.activation.eigenvalues.sum() > 0):
                    raise UnmemorizeError(f"{name}: its factors have no curvature (A or G is all zero), so every component "
                                          "would be dropped; refusing to erase the whole weight")
                choose = select_pairs if config.selection == "pairs" else select_per_side
                selection = choose(basis.gradient.eigenvalues, basis.activation.eigenvalues, rho)
                kept, total = selection.kept_pairs, selection.total_pairs
                if config.method == "kfac":
                    new = kfac_edit(weight, basis, selection, compute)
                    rows_used, cols_used = selection.rows_used, selection.columns_used
                    kept_mass = selection.kept_mass_fraction
                else:
                    seed = module_seed(config.seed, name)
                    new = random_edit(weight, basis, kept, seed, compute)
            original = originals[name].to(compute)
            norm = original.norm()
            change = float((new - original).norm() / norm) if norm > 0 else 0.0
            matrix.write(new)
            stats[name] = ModuleEdit(rho, kept, total, kept / total, kept_mass, rows_used, cols_used, change,
                                     round(time.perf_counter() - start, 4), seed)
    except BaseException:
        for name, weight in originals.items():
            named[name].write(weight)
        raise
    return AppliedEdit(model, config, stats, originals, _factor_provenance(factors))


@contextmanager
def edited(model: nn.Module, plan: dict[str, float], factors: KFACFactors | None = None, config: EditConfig | None = None, bases=None):
    """``with edited(model, plan, factors) as edit:`` -- the model is restored on exit."""
    edit = apply_edit(model, plan, factors, config, bases)
    try:
        yield edit
    finally:
        edit.restore()


def save_edited_model(edit: AppliedEdit, out: str | Path, tokenizer=None, overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write the edited model as a Hugging Face folder plus ``unmemorize_edit.json``, atomically."""
    from .._version import __version__

    summary = {"unmemorize_version": __version__, **edit.summary(), **(extra or {})}
    with atomic_dir(out, overwrite) as tmp:
        edit.model.save_pretrained(tmp, safe_serialization=True)
        _fault_point("edit-weights-written")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "unmemorize_edit.json", summary)  # strict JSON: NaN/Inf (e.g. a perplexity) as null
    return Path(out)
