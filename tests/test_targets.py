"""Targets: presets per architecture family, layer/projection filters, globs with helpful errors."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from unmemorize.errors import UnmemorizeError
from unmemorize.models import weight_shape
from unmemorize.targets import resolve_targets


def test_llama_preset_layers_and_projections(tiny_lm):
    model, _ = tiny_lm("llama", layers=3)
    assert resolve_targets(model, layers="1,2", projections="gate,up") == [
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj"]
    assert len(resolve_targets(model)) == 9 and not any("lm_head" in n or "embed" in n for n in resolve_targets(model))
    assert resolve_targets(model, layers="0", projections="q,o") == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj"]


def test_gpt2_preset_selects_conv1d_with_transposed_shapes(tiny_lm):
    model, _ = tiny_lm("gpt2")
    names = resolve_targets(model, layers="0")
    assert names == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    modules = dict(model.named_modules())
    assert weight_shape(modules[names[0]]) == (4 * 32, 32)  # (d_out, d_in) although Conv1D stores (d_in, d_out)
    assert resolve_targets(model, layers="1", projections="up") == ["transformer.h.1.mlp.c_fc"]


def test_neox_and_vit_presets(tiny_lm):
    model, _ = tiny_lm("gpt_neox")
    assert resolve_targets(model, layers="1") == ["gpt_neox.layers.1.mlp.dense_h_to_4h", "gpt_neox.layers.1.mlp.dense_4h_to_h"]
    vit = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                              image_size=8, patch_size=4, num_labels=3))
    names = resolve_targets(vit, layers="0,1")
    assert len(names) == 4 and all(isinstance(dict(vit.named_modules())[n], torch.nn.Linear) for n in names)
    assert "classifier" not in " ".join(names)


def test_globs_select_and_a_glob_matching_nothing_lists_candidates(tiny_lm):
    model, _ = tiny_lm("llama")
    assert resolve_targets(model, ["*.layers.1.mlp.*_proj"]) == [f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")]
    with pytest.raises(UnmemorizeError, match=r"no linear module matches 'mlp.up_proj' in LlamaForCausalLM; candidates: .*up_proj"):
        resolve_targets(model, ["mlp.up_proj"])


def test_unknown_projection_or_missing_layer_is_an_error(tiny_lm):
    model, _ = tiny_lm("llama")
    with pytest.raises(UnmemorizeError, match="unknown projection 'fc1'"):
        resolve_targets(model, projections="fc1")
    with pytest.raises(UnmemorizeError, match="selects no matrix"):
        resolve_targets(model, layers="7")
    with pytest.raises(UnmemorizeError, match="--layers"):
        resolve_targets(model, layers="a,b")


def test_a_model_without_named_blocks_gets_an_error_naming_candidates():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    with pytest.raises(UnmemorizeError, match=r"no blocks named layers.N.*--targets GLOB; candidates: 0, 2"):
        resolve_targets(model)
    assert resolve_targets(model, ["2"]) == ["2"]


def test_fused_qkv_is_edited_whole_or_refused_by_name(tiny_lm):
    model, _ = tiny_lm("gpt2")
    assert resolve_targets(model, layers="0", projections="q,k,v") == ["transformer.h.0.attn.c_attn"]
    with pytest.raises(UnmemorizeError, match=r"q is fused with the rest of q, k, v in attn.c_attn: choose --proj q,k,v"):
        resolve_targets(model, projections="q")
    assert resolve_targets(model, layers="1", projections="attn.c_proj") == ["transformer.h.1.attn.c_proj"]
    assert resolve_targets(model, layers="1", projections="down") == ["transformer.h.1.mlp.c_proj"]


def test_the_untouched_report_names_routers_and_the_mlp_parts_left(tiny_lm):
    from unmemorize.targets import untouched, untouched_note

    model, _ = tiny_lm("llama")
    assert untouched(model, resolve_targets(model)) == {}
    assert untouched_note(untouched(model, resolve_targets(model))) is None
    left = untouched(model, resolve_targets(model, layers="1", projections="down"))
    assert left == {"model.layers.*.mlp.gate_proj": "not a target", "model.layers.*.mlp.up_proj": "not a target"}
