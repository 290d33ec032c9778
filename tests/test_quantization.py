"""The low-bit quantization attack against optimum-quanto's formats: every weight within its format's rounding bound,
the negative control (no quantization) changes nothing, and the attack runs on a model that recites."""

from __future__ import annotations

import pytest
import torch

from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate.memorization import MemorizationItem
from unmemorize.evaluate.quantization import dequantized_weights, quantization_attack, quantization_change, quantized_copy
from unmemorize.tiny import build_tiny_lm


def test_int8_is_per_row_symmetric_and_int4_per_group_affine_within_their_rounding_bounds():
    model, _ = build_tiny_lm("llama", seed=0, dtype=torch.float32)
    original = dequantized_weights(model)
    for bits in (8, 4):
        quantized = dequantized_weights(quantized_copy(model, bits))
        assert set(quantized) == set(original) and len(original) == 15  # 2 blocks x 7 projections + the LM head
        for name, weight in original.items():
            error = (quantized[name] - weight).abs()
            if bits == 8:  # one scale per output row: max |w| / 127, rounding within half of it
                bound = weight.abs().amax(dim=1, keepdim=True) / 127 / 2
            else:  # groups of 128 inputs (the whole row when shorter), 16 levels between the group's min and max
                groups = weight.reshape(weight.shape[0], -1, min(128, weight.shape[1]))
                span = groups.amax(dim=-1, keepdim=True) - groups.amin(dim=-1, keepdim=True)
                bound = (span / 15 / 2).expand_as(groups).reshape(weight.shape)
            assert bool((error <= bound * 1.01 + 1e-6).all()), (bits, name, float((error - bound).max()))
            assert float(error.max()) > 0, (bits, name)  # the rounding is real
        assert quantization_change(model, quantized_copy(model, bits))["changed"] > 0


def test_no_quantization_is_the_negative_control_and_bad_widths_are_refused():
    model, _ = build_tiny_lm("llama", seed=0, dtype=torch.float32)
    control = quantization_change(model, quantized_copy(model, None))
    assert control["changed"] == 0 and control["max_abs_change"] == 0.0
    eight, four = (quantization_change(model, quantized_copy(model, b))["max_relative_frobenius_change"] for b in (8, 4))
    assert 0 < eight < four  # 4 bits move the weights more than 8
    with pytest.raises(UnmemorizeError, match="bits must be 4 or 8"):
        quantized_copy(model, 3)
    tied, _ = build_tiny_lm("gpt2", seed=0, dtype=torch.float32)  # the LM head is the input embedding
    copy = quantized_copy(tied, 4)
    assert torch.equal(copy.transformer.wte.weight, tied.transformer.wte.weight)  # quanto quantizes linear layers only
    assert not torch.equal(copy.lm_head.weight, tied.lm_head.weight)


def test_the_attack_measures_recitation_on_each_quantized_copy_and_leaves_the_model_alone():
    model, _ = build_tiny_lm("llama", seed=0, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = [MemorizationItem(str(k), [3 + k, 4, 5, 6], [7, 8, 9]) for k in range(4)]
    result = quantization_attack(model, {"items": items}, pad_id=0)
    assert result["library"] == "optimum-quanto" and set(result["by_bits"]) == {"int4", "int8"}
    for row in result["by_bits"].values():
        assert row["sets"]["items"]["n"] == 4 and 0.0 <= row["sets"]["items"]["strict"] <= 1.0 and row["weights"]["changed"] > 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
