"""K-FAC factor files: ``factors.json`` plus ``factors.safetensors``, never pickles.

Layout of a factor folder::

    factors.json            provenance: model, architecture, module shapes, counted positions,
                            Fisher type, seed, seq len, data fingerprint, dtypes, version
    factors.safetensors     float32 tensors "<module name>.A" (d_in, d_in) and
                            "<module name>.G" (d_out, d_out), both means over counted positions

Loading checks that every listed tensor is present, finite, symmetric and shaped like the
model's module; each failure names the module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .._atomic import atomic_dir
from ..errors import UnmemorizeError
from ..models import weight_shape

FORMAT_VERSION = 1
TENSOR_FILE = "factors.safetensors"
SYMMETRY_TOLERANCE = 1e-4  # max |X - X^T| relative to max |X|


@dataclass
class KFACFactors:
    """A (activation second moment) and G (output-gradient second moment) per module name."""

    activation: dict[str, torch.Tensor]
    gradient: dict[str, torch.Tensor]
    num_positions: int
    metadata: dict = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return list(self.activation)

    def subset(self, names: list[str]) -> KFACFactors:
        missing = [n for n in names if n not in self.activation]
        if missing:
            raise UnmemorizeError(f"no factors for {', '.join(missing)}; factors cover {', '.join(self.modules)}")
        return KFACFactors({n: self.activation[n] for n in names}, {n: self.gradient[n] for n in names}, self.num_positions, self.metadata)


def save_factors(factors: KFACFactors, out: str | Path, model: nn.Module | None = None, overwrite: bool = False) -> Path:
    """Write a factor folder atomically (see module docstring)."""
    from .. import __version__

    tensors = {}
    for name in factors.modules:
        tensors[f"{name}.A"] = factors.activation[name].float().contiguous()
        tensors[f"{name}.G"] = factors.gradient[name].float().contiguous()
    info = {
        "format_version": FORMAT_VERSION,
        "unmemorize_version": __version__,
        "num_positions": factors.num_positions,
        "modules": {
            n: {"A": list(factors.activation[n].shape), "G": list(factors.gradient[n].shape), "file": TENSOR_FILE}
            for n in factors.modules
        },
        "stored_dtype": "float32",
        **factors.metadata,
    }
    if model is not None:
        info.setdefault("model", getattr(model.config, "_name_or_path", "") or type(model).__name__)
        info.setdefault("architecture", type(model).__name__)
        info.setdefault("model_type", getattr(model.config, "model_type", None))
    with atomic_dir(out, overwrite) as tmp:
        save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": "unmemorize-kfac", "version": str(FORMAT_VERSION)})
        (tmp / "factors.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return Path(out)


def _check_tensor(name: str, kind: str, tensor: torch.Tensor, expected: int | None) -> None:
    what = {"A": "activation factor A", "G": "gradient factor G"}[kind]
    if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]:
        raise UnmemorizeError(f"{name}: {what} has shape {tuple(tensor.shape)}, expected a square matrix")
    if expected is not None and tensor.shape[0] != expected:
        raise UnmemorizeError(
            f"{name}: {what} is {tensor.shape[0]}x{tensor.shape[0]} but the model's module needs {expected}x{expected} "
            "(factors of another model?)"
        )
    if not torch.isfinite(tensor).all():
        raise UnmemorizeError(f"{name}: {what} contains NaN or Inf")
    scale = tensor.abs().max().clamp_min(torch.finfo(tensor.dtype).tiny)
    if ((tensor - tensor.T).abs().max() / scale) > SYMMETRY_TOLERANCE:
        raise UnmemorizeError(f"{name}: {what} is not symmetric")


def load_factors(path: str | Path, model: nn.Module | None = None, modules: list[str] | None = None) -> KFACFactors:
    """Load and validate a factor folder; ``modules`` restricts what is read (default: all)."""
    root = Path(path)
    info_path = root / "factors.json"
    if not info_path.is_file():
        raise UnmemorizeError(f"{str(root)!r} is not a factor folder: factors.json is missing")
    try:
        info = json.loads(info_path.read_text())
        listed = info["modules"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UnmemorizeError(f"{info_path}: unreadable ({exc})") from None
    names = list(listed) if modules is None else modules
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise UnmemorizeError(f"no factors for {', '.join(unknown)} in {root}; it covers {', '.join(listed)}")
    model_modules = dict(model.named_modules()) if model is not None else {}
    activation, gradient = {}, {}
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(listed[name].get("file", TENSOR_FILE), []).append(name)
    for file_name, file_modules in by_file.items():
        file_path = root / file_name
        if not file_path.is_file():
            raise UnmemorizeError(f"{file_path} is missing (needed for {file_modules[0]})")
        try:
            with safe_open(str(file_path), framework="pt") as handle:
                keys = set(handle.keys())
                for name in file_modules:
                    for kind in ("A", "G"):
                        if f"{name}.{kind}" not in keys:
                            raise UnmemorizeError(f"{name}: tensor '{name}.{kind}' is missing from {file_path}")
                    activation[name] = handle.get_tensor(f"{name}.A")
                    gradient[name] = handle.get_tensor(f"{name}.G")
        except SafetensorError as exc:
            raise UnmemorizeError(f"{file_path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
        except OSError as exc:
            raise UnmemorizeError(f"{file_path} cannot be read: {exc}") from None
    for name in names:
        d_out = d_in = None
        if model is not None:
            if name not in model_modules:
                raise UnmemorizeError(f"{name}: has factors but is not a module of {type(model).__name__} (factors of another model?)")
            d_out, d_in = weight_shape(model_modules[name])
        _check_tensor(name, "A", activation[name], d_in)
        _check_tensor(name, "G", gradient[name], d_out)
    metadata = {k: v for k, v in info.items() if k not in ("modules", "num_positions")}
    return KFACFactors(activation, gradient, int(info.get("num_positions", 0)), metadata)
