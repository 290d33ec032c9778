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


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise UnmemorizeError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def check_device(device: str) -> torch.device:
    """A torch device that exists on this machine, or an error saying what is available."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnmemorizeError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UnmemorizeError(f"--device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UnmemorizeError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif parsed.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UnmemorizeError(f"--device {device!r}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise UnmemorizeError(f"--device {device!r} is not supported; use cpu, cuda[:N] or mps")
    return parsed


def _check_hub_reachable(model: str) -> None:
    """A hub id that is not cached must be fetched: fail in seconds, not after a minute of retries,
    when the hub cannot be reached."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UnmemorizeError(f"model {model!r} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UnmemorizeError(f"model {model!r} is not a local folder or cached, and the hub ({endpoint.hostname}) cannot be "
                              f"reached: {getattr(exc, 'strerror', None) or exc}") from None


def _check_loaded_weights(model: str, info: dict) -> None:
    """Refuse a checkpoint whose weights do not all load: transformers initialises missing ones at random."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        names = missing or mismatched
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        what = "has no weights for" if missing else "has weights of the wrong shape for"
        unexpected = sorted(info.get("unexpected_keys") or [])
        hint = f"; it holds unexpected weights such as {unexpected[0]}" if unexpected else ""
        raise UnmemorizeError(f"checkpoint {model!r} {what} {listed} (they would be random): it does not match its config{hint}")


def parse_max_memory(spec: str | None) -> dict | None:
    """``'0=70GiB,1=70GiB,cpu=200GiB'`` -> accelerate's ``max_memory`` ``{0: '70GiB', 1: '70GiB', 'cpu': '200GiB'}``."""
    if not spec:
        return None
    limits = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key or not value:
            raise UnmemorizeError(f"--max-memory {spec!r}: give DEVICE=SIZE pairs, e.g. '0=70GiB,1=70GiB,cpu=200GiB'")
        if not (key.isdigit() or key in ("cpu", "disk", "mps")):
            raise UnmemorizeError(f"--max-memory {spec!r}: {key!r} is not a GPU index, 'cpu' or 'disk'")
        if not any(value.upper().endswith(unit) for unit in ("B", "KIB", "MIB", "GIB", "TIB", "KB", "MB", "GB", "TB")) and not value.isdigit():
            raise UnmemorizeError(f"--max-memory {spec!r}: {value!r} is not a size such as 70GiB")
        limits[int(key) if key.isdigit() else key] = value
    return limits


def load_config(model: str, trust_remote_code: bool = False):
    """The transformers config of a model folder or hub id, after the checks every command makes of
    ``--model`` (exists, is a folder with config.json, or a hub id that is cached or reachable).
    Reads no weights: what a command checks before the minutes a large model takes to load."""
    from transformers import AutoConfig

    local = Path(model).expanduser()
    if not str(model).strip():
        raise UnmemorizeError("--model is empty")
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise UnmemorizeError(f"model directory {model!r} does not exist")
    if local.exists() and not local.is_dir():
        raise UnmemorizeError(f"--model {model!r} is a file; give a model folder (config.json + weights) or a hub id")
    if local.is_dir() and not (local / "config.json").is_file():
        raise UnmemorizeError(f"model folder {model!r} has no config.json")
    if not local.exists():
        try:
            AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached: it must come from the hub
            _check_hub_reachable(model)
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        remote = not trust_remote_code and ("custom code" in str(exc) or "trust_remote_code" in str(exc))
        hint = "; the model ships its own Python code: pass --trust-remote-code to run it (only for code you trust)" if remote else ""
        raise UnmemorizeError(f"cannot load a model config from {model!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              f"{hint}") from None
    return config


def config_limits(config) -> tuple[int | None, int | None]:
    """(vocabulary size, maximum positions) from a config (its text config, for multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    positions = None
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            positions = value
            break
    return (int(vocab) if isinstance(vocab, int) and vocab > 0 else None), positions


def load_model(model: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False, device_map: str | None = None,
               max_memory: dict | None = None, offload_folder: str | None = None):
    """Load a Hugging Face model and its tokenizer (if any) from a local directory or a hub id.

    Causal LMs are tried first, then image classifiers. Weights are read with safetensors when
    the checkpoint has them; remote code runs only when ``trust_remote_code`` is set. A
    checkpoint that lacks weights of its own config (transformers would initialise them at
    random) is refused, naming them. ``device_map`` ('auto', 'balanced', ...) loads a model larger
    than one device across the visible GPUs and the CPU with accelerate's big-model dispatch
    (``device`` is then ignored), within ``max_memory`` per device when given (accelerate's
    ``max_memory``; ``offload_folder`` for weights placed on disk). Returns
    ``(model, tokenizer_or_None)``; the model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    torch_dtype = parse_dtype(dtype)
    check_device(device)
    config = load_config(model, trust_remote_code)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True)
    if device_map:
        try:
            import accelerate  # noqa: F401 - transformers dispatches with it
        except ImportError:
            raise UnmemorizeError("--device-map needs accelerate (pip install accelerate)") from None
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    elif max_memory:
        raise UnmemorizeError("--max-memory limits what --device-map places on each device; give --device-map auto with it")
    loaders = [AutoModelForCausalLM, AutoModelForImageClassification]
    errors = []
    for loader in loaders:
        remote = trust_remote_code and loader.__name__ in (getattr(config, "auto_map", None) or {})  # the model's own class
        if type(config) not in loader._model_mapping and not remote:  # noqa: SLF001 - public enough, stable for years
            continue
        try:
            net, info = loader.from_pretrained(model, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{loader.__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    else:
        detail = "; ".join(errors) or f"{type(config).__name__} is neither a causal LM nor an image classifier"
        raise UnmemorizeError(f"cannot load model {model!r}: {detail}")
    _check_loaded_weights(model, info)
    if not device_map:
        net.to(device)
    net.eval()
    return net, load_tokenizer(model, trust_remote_code, image_model=loader is AutoModelForImageClassification)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                   "merges.txt", "special_tokens_map.json")


def load_tokenizer(model: str, trust_remote_code: bool = False, image_model: bool = False):
    """The tokenizer of a model folder or hub id; None where the model has none.

    "Has none": an image classifier, or a local folder without any tokenizer file (a language
    model used with pre-tokenized input_ids only). A tokenizer that exists but cannot be loaded
    (a corrupt tokenizer.json, a missing sentencepiece, ...) is an error naming the folder and
    the cause, never a silent None.
    """
    from transformers import AutoTokenizer

    local = Path(model).expanduser()
    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        present = [f for f in TOKENIZER_FILES if (local / f).is_file()] if local.is_dir() else None
        if image_model or present == []:
            return None
        cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}" if str(exc).strip() else type(exc).__name__
        where = f"model folder {model!r} has {', '.join(present)} but its tokenizer" if present else f"the tokenizer of model {model!r}"
        raise UnmemorizeError(f"{where} cannot be loaded ({cause})") from None


def model_limits(model: nn.Module) -> tuple[int | None, int | None]:
    """(vocabulary size, maximum positions) of a language model; None where the model has no such limit."""
    vocab = None
    try:
        embeddings = model.get_input_embeddings()
        vocab = int(embeddings.num_embeddings) if embeddings is not None else None
    except (AttributeError, NotImplementedError):
        pass
    config = getattr(model, "config", None)  # a hand-made module (a test's bigram model) has none: no position limit
    return vocab, config_limits(config)[1] if config is not None else None


def model_source(model: nn.Module) -> str:
    """The path or hub id a model was loaded from, or its class name for in-memory models."""
    return getattr(model.config, "_name_or_path", "") or type(model).__name__
