"""Cached eigendecompositions: eigh once (``unmemorize decompose``), reuse in every edit, spectrum and analysis.

Layout, inside the factor folder (the only thing ever added to it, by one atomic rename)::

    <factors>/eigen-float64/            (or eigen-float32/: one folder per eigh dtype)
        eigen.json                      index: format, dtype, device, factor folder, and per module
                                        {file, activation_from, fingerprint {A, G}, clamped {A, G},
                                         shape {A, G}, seconds {A, G} of eigh}
        eigen-00001-of-00096.safetensors  one shard per module (in factors.json order):
                                        "G.eigenvalues" (d_out,), "G.eigenvectors" (d_out, d_out),
                                        and, unless the module shares another module's input,
                                        "A.eigenvalues" (d_in,), "A.eigenvectors" (d_in, d_in)

Eigenvalues are sorted descending and clamped at 0, eigenvectors are columns, both in the eigh
dtype exactly as ``eigen.decompose`` returned them: on the same device a cached basis gives the
same edit as a fresh one, bit for bit.

The fingerprint of a factor is sha256 over its dtype, shape and raw bytes. A cache is used only
for the exact A and G it was computed from; any mismatch raises an ``UnmemorizeError`` naming
the module (a stale cache is never used silently).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..curvature.factors import KFACFactors
from ..errors import UnmemorizeError
from .eigen import Eigendecomposition, ModuleBasis

FORMAT_VERSION = 1
INDEX_FILE = "eigen.json"
KINDS = {"A": "activation factor A", "G": "gradient factor G"}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cache_dir(factors_path: str | Path, dtype: torch.dtype | str) -> Path:
    """Where the decompositions of ``factors_path`` in ``dtype`` live: ``<factors>/eigen-<dtype>``."""
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    return Path(factors_path) / f"eigen-{name}"


def shard_name(index: int, total: int) -> str:
    return f"eigen-{index + 1:05d}-of-{total:05d}.safetensors"


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """sha256 of ``"<dtype>|<shape>|"`` followed by the tensor's raw bytes (row-major)."""
    flat = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{dtype_name(flat.dtype)}|{list(flat.shape)}|".encode())
    if flat.numel():
        digest.update(flat.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_module_shard(path: Path, name: str, gradient: Eigendecomposition, activation: Eigendecomposition | None) -> None:
    """One module's decompositions (``activation`` None when its A is another module's)."""
    tensors = {"G.eigenvalues": gradient.eigenvalues, "G.eigenvectors": gradient.eigenvectors}
    if activation is not None:
        tensors |= {"A.eigenvalues": activation.eigenvalues, "A.eigenvectors": activation.eigenvectors}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "unmemorize-eigen", "version": str(FORMAT_VERSION), "module": name})


def read_index(folder: Path) -> dict:
    """The parsed, checked ``eigen.json`` of a cache folder."""
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        modules = index["modules"]
        if index.get("format_version") != FORMAT_VERSION or not isinstance(modules, dict):
            raise ValueError(f"format_version {index.get('format_version')!r}, this unmemorize reads {FORMAT_VERSION}")
        for name, entry in modules.items():
            for key in ("file", "activation_from", "fingerprint", "clamped", "shape"):
                if key not in entry:
                    raise KeyError(f"{name}.{key}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnmemorizeError(f"{path}: not a readable eigendecomposition index ({exc}); rerun 'unmemorize decompose --overwrite'") from None
    return index


def _read_decomposition(folder: Path, entry: dict, kind: str, module: str, dtype: torch.dtype, size: int) -> Eigendecomposition:
    path = folder / entry["file"]
    try:
        with safe_open(str(path), framework="pt") as handle:
            values = handle.get_tensor(f"{kind}.eigenvalues")
            vectors = handle.get_tensor(f"{kind}.eigenvectors")
    except (SafetensorError, OSError) as exc:
        raise UnmemorizeError(f"{module}: cached eigendecomposition {path} is unreadable ({exc}); "
                              "rerun 'unmemorize decompose --overwrite'") from None
    if values.dtype != dtype or vectors.dtype != dtype or values.shape != (size,) or vectors.shape != (size, size):
        raise UnmemorizeError(f"{module}: cached {KINDS[kind]} decomposition in {path} is {dtype_name(vectors.dtype)} "
                              f"{tuple(vectors.shape)}, expected {dtype_name(dtype)} ({size}, {size}); rerun 'unmemorize decompose --overwrite'")
    return Eigendecomposition(values, vectors, int(entry["clamped"][kind]))


def load_cached_bases(factors: KFACFactors, dtype: torch.dtype, modules: list[str], required: bool = False) -> dict[str, ModuleBasis]:
    """The cached ``ModuleBasis`` of each of ``modules`` that the cache of ``factors``' folder holds.

    Every module read is checked first: the fingerprints of its A and G in ``factors`` must equal
    those recorded at decomposition time, else ``UnmemorizeError``. Without a cache (or a module
    it lacks) the result simply omits it, unless ``required``.
    """
    source = factors.metadata.get("path")
    if not source:
        if required:
            raise UnmemorizeError("these factors were not loaded from a folder, so they have no cached eigendecompositions")
        return {}
    folder = cache_dir(source, dtype)
    if not (folder / INDEX_FILE).is_file():
        if required:
            raise UnmemorizeError(f"no cached {dtype_name(dtype)} eigendecompositions in {folder}; "
                                  f"run 'unmemorize decompose --factors {source} --dtype {dtype_name(dtype)}'")
        return {}
    index = read_index(folder)
    if index.get("dtype") != dtype_name(dtype):
        raise UnmemorizeError(f"{folder / INDEX_FILE} says dtype {index.get('dtype')!r}, expected {dtype_name(dtype)!r}")
    entries = index["modules"]
    bases: dict[str, ModuleBasis] = {}
    activations: dict[str, Eigendecomposition] = {}  # by owner: a shared A is read once
    for name in modules:
        entry = entries.get(name)
        if entry is None:
            if required:
                raise UnmemorizeError(f"{name}: not in the cached eigendecompositions of {folder}; "
                                      "rerun 'unmemorize decompose --overwrite'")
            continue
        owner = entry["activation_from"]
        if owner not in entries:
            raise UnmemorizeError(f"{name}: its A decomposition is listed under {owner!r}, which {folder / INDEX_FILE} lacks")
        for kind, tensor in (("A", factors.activation[name]), ("G", factors.gradient[name])):
            if tensor_fingerprint(tensor) != entry["fingerprint"][kind]:
                raise UnmemorizeError(
                    f"{name}: the cached eigendecomposition in {folder} was computed from other factors "
                    f"({KINDS[kind]} fingerprint mismatch); rerun 'unmemorize decompose --factors {source} --overwrite'"
                )
        if owner not in activations:
            activations[owner] = _read_decomposition(folder, entries[owner], "A", owner, dtype, factors.activation[name].shape[0])
        gradient = _read_decomposition(folder, entry, "G", name, dtype, factors.gradient[name].shape[0])
        bases[name] = ModuleBasis(gradient=gradient, activation=activations[owner])
    return bases
