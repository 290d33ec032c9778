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

from .._atomic import _fault_point, atomic_dir
from ..errors import UnmemorizeError
from ..jsonio import write_json
from ..matrices import model_matrices

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


def _folder_info(factors: KFACFactors, files: dict[str, str], shapes: dict[str, dict], model: nn.Module | None) -> dict:
    from .._version import __version__

    fingerprints = factors.metadata.get("weight_fingerprints", {})
    info = {
        "format_version": FORMAT_VERSION,
        "unmemorize_version": __version__,
        "num_positions": factors.num_positions,
        "modules": {n: {**shapes[n], "file": files[n], **({"weight_sha256": fingerprints[n]} if n in fingerprints else {})}
                    for n in files},
        "stored_dtype": "float32",
        **{k: v for k, v in factors.metadata.items() if k not in ("weight_fingerprints", "path")},
    }
    if model is not None:
        info.setdefault("model", getattr(model.config, "_name_or_path", "") or type(model).__name__)
        info.setdefault("architecture", type(model).__name__)
        info.setdefault("model_type", getattr(model.config, "model_type", None))
    return info


def _write_shard(path: Path, activation: dict, gradient: dict) -> dict[str, dict]:
    tensors = {}
    for name in activation:
        tensors[f"{name}.A"] = activation[name].float().contiguous()
        tensors[f"{name}.G"] = gradient[name].float().contiguous()
    save_file(tensors, str(path), metadata={"format": "unmemorize-kfac", "version": str(FORMAT_VERSION)})
    return {n: {"A": list(activation[n].shape), "G": list(gradient[n].shape)} for n in activation}


def save_factors(factors: KFACFactors, out: str | Path, model: nn.Module | None = None, overwrite: bool = False) -> Path:
    """Write a factor folder atomically (see module docstring)."""
    with atomic_dir(out, overwrite) as tmp:
        shapes = _write_shard(tmp / TENSOR_FILE, factors.activation, factors.gradient)
        info = _folder_info(factors, {n: TENSOR_FILE for n in factors.modules}, shapes, model)
        write_json(tmp / "factors.json", info)
    return Path(out)


class ShardedFactorWriter:
    """Write a factor folder one safetensors shard per collection pass (``on_pass`` of
    ``collect_factors``), so that only one pass's factors are ever in memory; atomic like
    ``save_factors``::

        with ShardedFactorWriter(out, model) as writer:
            factors = collect_factors(..., on_pass=writer.write_pass)
            writer.finish(factors)
    """

    def __init__(self, out: str | Path, model: nn.Module | None = None, overwrite: bool = False):
        self.out, self.model, self.overwrite = out, model, overwrite
        self.files: dict[str, str] = {}
        self.shapes: dict[str, dict] = {}

    def __enter__(self):
        self._context = atomic_dir(self.out, self.overwrite)
        self.tmp = self._context.__enter__()
        return self

    def write_pass(self, index: int, passes: int, activation: dict, gradient: dict) -> None:
        name = f"factors-{index + 1:05d}-of-{passes:05d}.safetensors"
        self.shapes.update(_write_shard(self.tmp / name, activation, gradient))
        self.files.update({module: name for module in activation})
        _fault_point("shard-written")

    def finish(self, factors: KFACFactors) -> None:
        info = _folder_info(factors, self.files, self.shapes, self.model)
        write_json(self.tmp / "factors.json", info)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def _check_tensor(name: str, kind: str, tensor: torch.Tensor, expected: int | None) -> None:
    what = {"A": "activation factor A", "G": "gradient factor G"}[kind]
    if not tensor.is_floating_point():
        raise UnmemorizeError(f"{name}: {what} is stored as {str(tensor.dtype).replace('torch.', '')}; factors are floating point")
    if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]:
        raise UnmemorizeError(f"{name}: {what} has shape {tuple(tensor.shape)}, expected a square matrix")
    if expected is not None and tensor.shape[0] != expected:
        raise UnmemorizeError(
            f"{name}: {what} is {tensor.shape[0]}x{tensor.shape[0]} but the model's module needs {expected}x{expected} "
            "(factors of another model?)"
        )
    if not torch.isfinite(tensor).all():
        raise UnmemorizeError(f"{name}: {what} contains NaN or Inf")
    if not bool(tensor.any()):
        raise UnmemorizeError(f"{name}: {what} is all zero: no curvature was measured for it, and an edit would erase the "
                              "whole weight (collect again on data that reaches this module)")
    scale = tensor.abs().max().clamp_min(torch.finfo(tensor.dtype).tiny)
    if ((tensor - tensor.T).abs().max() / scale) > SYMMETRY_TOLERANCE:
        raise UnmemorizeError(f"{name}: {what} is not symmetric")


def factor_modules(path: str | Path) -> list[str]:
    """The module names a factor folder lists (its factors.json), read before any model is loaded."""
    if not Path(path).is_dir():
        raise UnmemorizeError(f"--factors {str(path)!r} is not a folder")
    return list(read_factor_info(Path(path))["modules"])


def read_factor_info(root: Path) -> dict:
    """factors.json, checked field by field (every problem names the file and the field)."""
    info_path = root / "factors.json"
    if not info_path.is_file():
        raise UnmemorizeError(f"{str(root)!r} is not a factor folder: factors.json is missing")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UnmemorizeError(f"{info_path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UnmemorizeError(f"{info_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except OSError as exc:
        raise UnmemorizeError(f"{info_path} cannot be read: {exc.strerror}") from None
    if not isinstance(info, dict):
        raise UnmemorizeError(f"{info_path}: must hold a JSON object")
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise UnmemorizeError(f"{info_path}: format_version {version!r} is not one this unmemorize reads ({FORMAT_VERSION}); "
                              "collect the factors again with this version")
    modules = info.get("modules")
    if not isinstance(modules, dict):
        raise UnmemorizeError(f"{info_path}: 'modules' must be an object of module name -> entry, got {type(modules).__name__}")
    if not modules:
        raise UnmemorizeError(f"{info_path}: 'modules' is empty; the folder holds no factors")
    for name, entry in modules.items():
        if not isinstance(entry, dict):
            raise UnmemorizeError(f"{info_path}: modules[{name!r}] must be an object, got {type(entry).__name__}")
        file_name = entry.get("file", TENSOR_FILE)
        if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name:
            raise UnmemorizeError(f"{info_path}: modules[{name!r}].file must be a file name in the folder, got {file_name!r}")
        fingerprint = entry.get("weight_sha256")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise UnmemorizeError(f"{info_path}: modules[{name!r}].weight_sha256 must be a string")
    positions = info.get("num_positions", 0)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 0:
        raise UnmemorizeError(f"{info_path}: 'num_positions' must be a non-negative integer, got {positions!r}")
    shared = info.get("shared_activation", {})
    if not isinstance(shared, dict):
        raise UnmemorizeError(f"{info_path}: 'shared_activation' must be an object")
    return info


def check_fingerprints(info: dict, model: nn.Module, names: list[str], where: str) -> None:
    """Refuse factors collected on other weights: each module's recorded weight_sha256 must be the model's."""
    matrices = model_matrices(model)
    for name in names:
        recorded = info["modules"][name].get("weight_sha256")
        if recorded is not None and name in matrices and matrices[name].fingerprint() != recorded:
            raise UnmemorizeError(f"{name}: the factors in {where} were collected on other weights than this model's "
                                  "(weight fingerprint differs); collect them on this model, or pass --allow-foreign-factors")


def load_factors(path: str | Path, model: nn.Module | None = None, modules: list[str] | None = None,
                 allow_foreign: bool = False) -> KFACFactors:
    """Load and validate a factor folder; ``modules`` restricts what is read (default: all).

    With a ``model``, shapes are checked and, unless ``allow_foreign``, the weight fingerprints
    recorded at collection must be the model's (factors of another model are refused)."""
    root = Path(path)
    info = read_factor_info(root)
    listed = info["modules"]
    names = list(listed) if modules is None else modules
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise UnmemorizeError(f"no factors for {', '.join(unknown)} in {root}; it covers {', '.join(listed)}")
    model_modules = model_matrices(model) if model is not None else {}
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
            d_out, d_in = model_modules[name].shape
        _check_tensor(name, "A", activation[name], d_in)
        _check_tensor(name, "G", gradient[name], d_out)
    if model is not None and not allow_foreign:
        check_fingerprints(info, model, names, str(root))
    metadata = {k: v for k, v in info.items() if k not in ("modules", "num_positions")}
    metadata["weight_fingerprints"] = {n: listed[n]["weight_sha256"] for n in names if "weight_sha256" in listed[n]}
    metadata["foreign_factors_allowed"] = bool(allow_foreign)
    metadata["path"] = str(root)  # where the folder is: cached decompositions live beside the factors
    return KFACFactors({n: activation[n] for n in names}, {n: gradient[n] for n in names}, int(info.get("num_positions", 0)), metadata)
