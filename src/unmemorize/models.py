"""Loading models and reading/writing the weight matrix of a linear-like module.

Every weight is handled as W with shape (d_out, d_in), i.e. y = W a (+ b). Hugging Face's GPT-2
``Conv1D`` stores its weight transposed, (d_in, d_out), and computes y = a W_conv + b; the
accessors below hide that so the rest of the package sees one convention.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import UnmemorizeError

try:  # transformers >= 4.x keeps Conv1D here
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D else ())


def is_linear_like(module: nn.Module) -> bool:
    """True for modules whose forward is an affine map y = W a + b over the last dimension."""
    return isinstance(module, LINEAR_TYPES)


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of a linear-like module."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if Conv1D and isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return d_out, d_in
    raise TypeError(f"{type(module).__name__} is not a linear-like module")


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as a (d_out, d_in) tensor (a transposed view for Conv1D, no copy)."""
    if isinstance(module, nn.Linear):
        return module.weight.data
    if Conv1D and isinstance(module, Conv1D):
        return module.weight.data.T
    raise TypeError(f"{type(module).__name__} is not a linear-like module")


@torch.no_grad()
def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Write a (d_out, d_in) weight into the module, in place, cast to the module's dtype."""
    get_weight(module).copy_(weight.to(device=module.weight.device, dtype=module.weight.dtype))


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UnmemorizeError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def load_model(model: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
    """Load a Hugging Face model and its tokenizer (if any) from a local directory or a hub id.

    Causal LMs are tried first, then image classifiers. Weights are read with safetensors when
    the checkpoint has them; remote code runs only when ``trust_remote_code`` is set.
    Returns ``(model, tokenizer_or_None)``; the model is in eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification, AutoTokenizer

    local = Path(model)
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise UnmemorizeError(f"model directory {model!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise UnmemorizeError(f"cannot load a model config from {model!r}: {exc}") from None
    kwargs = dict(dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code)
    loaders = [AutoModelForCausalLM, AutoModelForImageClassification]
    errors = []
    for loader in loaders:
        if type(config) not in loader._model_mapping:  # noqa: SLF001 - public enough, stable for years
            continue
        try:
            net = loader.from_pretrained(model, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{loader.__name__}: {exc}")
    else:
        detail = "; ".join(errors) or f"{type(config).__name__} is neither a causal LM nor an image classifier"
        raise UnmemorizeError(f"cannot load model {model!r}: {detail}")
    net.to(device).eval()
    tokenizer = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - image models have no tokenizer
        tokenizer = None
    return net, tokenizer


def model_source(model: nn.Module) -> str:
    """The path or hub id a model was loaded from, or its class name for in-memory models."""
    return getattr(model.config, "_name_or_path", "") or type(model).__name__
