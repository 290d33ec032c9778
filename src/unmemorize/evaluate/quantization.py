"""The low-bit quantization attack: does post-training weight quantization bring back what an edit removed?

Zhang et al. (ICLR 2025) found that 4-bit post-training quantization restores "forgotten" knowledge
in unlearned LLMs: an edit small enough to vanish in the rounding is undone by it. Here every linear
layer's weight of a copy of the model is quantized with **optimum-quanto** (``quantize`` + ``freeze``,
weights only; activations stay in float), then recitation is measured on the copy:

* ``bits=8``: qint8, symmetric, one scale per output row: |w - w_q| <= scale / 2, scale = max_row|w| / 127;
* ``bits=4``: qint4, affine, one scale and shift per group of 128 inputs: |w - w_q| <= (max - min) / 15 / 2
  within each group (the bound ``tests/test_quantization.py`` checks on every weight).

Why optimum-quanto: it quantizes plain ``nn.Linear`` models on the CPU as on a GPU, in PyTorch, with the
int8 / int4 weight formats its users serve with; bitsandbytes' 4-bit needs CUDA for its kernels, and
torchao's int4 weight-only layout needs CUDA or specific CPU kernels. ``bits=None`` is the negative control:
the copy unchanged. The weights' change is reported as for the bf16 round trip (``attacks.weight_change``),
on the dequantized weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UnmemorizeError
from .attacks import recitation
from .memorization import MemorizationItem

BITS = (4, 8)


def quantized_copy(model: nn.Module, bits: int | None) -> nn.Module:
    """A copy of ``model`` whose linear layers compute with their weights quantized to ``bits`` (4 or 8) by optimum-quanto
    (``None``: the copy unchanged, the negative control).

    quanto quantizes and freezes a shadow copy; each linear layer of the returned plain copy then holds that quantized
    weight, dequantized: what quanto's weight-only layers compute with (they dequantize before the product), in a
    model every other part of unmemorize runs as it is (inference mode included). A weight tied to another parameter
    (a tied LM head) gets its own copy, so the embedding stays as quanto leaves it: unquantized."""
    if bits not in (None, *BITS):
        raise UnmemorizeError(f"quantization bits must be 4 or 8, got {bits!r}")
    copied = copy.deepcopy(model).eval()
    if bits is None:
        return copied
    try:
        from optimum.quanto import freeze, qint4, qint8, quantize
    except ImportError:
        raise UnmemorizeError("the quantization attack needs optimum-quanto (pip install optimum-quanto)") from None
    shadow = copy.deepcopy(model).eval()
    quantize(shadow, weights=qint4 if bits == 4 else qint8)
    freeze(shadow)
    quantized = {name: module.weight for name, module in shadow.named_modules() if isinstance(module, nn.Linear)}
    with torch.no_grad():
        for name, module in copied.named_modules():
            if isinstance(module, nn.Linear) and name in quantized:
                weight = quantized[name]
                module.weight = nn.Parameter(weight.dequantize().to(module.weight.dtype), requires_grad=False)
    return copied


def dequantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every linear layer's weight as the model computes with it, by module name."""
    return {name: module.weight.detach().float() for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and getattr(module, "weight", None) is not None}


def quantization_change(model: nn.Module, quantized: nn.Module) -> dict:
    """How far the quantized copy's linear weights moved: counts, max |dw| and the largest relative Frobenius change."""
    before, after = dequantized_weights(model), dequantized_weights(quantized)
    changed = total = 0
    max_abs = max_rel = 0.0
    for name, weight in before.items():
        diff = (after[name] - weight).abs()
        total += weight.numel()
        changed += int((diff > 0).sum())
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.norm() / weight.norm()) if float(weight.norm()) > 0 else 0.0)
    return {"matrices": len(before), "parameters": total, "changed": changed, "max_abs_change": max_abs,
            "max_relative_frobenius_change": max_rel}


def quantization_attack(model: nn.Module, sets: dict[str, list[MemorizationItem]], pad_id: int, bits: tuple[int, ...] = BITS) -> dict:
    """Per bit width: recitation of each set on the quantized copy, and how much the weights moved."""
    result = {}
    for width in bits:
        quantized = quantized_copy(model, width)
        result[f"int{width}"] = {"weights": quantization_change(model, quantized), "sets": recitation(quantized, sets, pad_id)}
        del quantized
    return {"library": "optimum-quanto", "by_bits": result}
