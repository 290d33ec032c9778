"""The zoo: every supported decoder family, tiny and random-init, from collect to a reloaded edited model.

For each family of ``unmemorize.testbed.zoo.FAMILIES``: default targets (every MLP matrix but routers)
-> K-FAC factors -> save and reload the factor folder -> decompose -> edit at rho 0.6 -> save the model
-> reload it with plain ``transformers`` -> finite logits, every targeted matrix changed and every other
weight of the model bit-identical (parameters, and the matrices inside a partly edited fused or expert
parameter).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from unmemorize.basis import decompose_factors
from unmemorize.curvature import CollectConfig, collect_factors, load_factors, save_factors
from unmemorize.edit import apply_edit, save_edited_model, uniform_plan
from unmemorize.matrices import model_matrices
from unmemorize.targets import resolve_targets
from unmemorize.testbed.zoo import FAMILIES, tiny_model


def batches(vocab: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 16), generator=generator)
    mask = torch.ones_like(ids)
    mask[3, 12:] = 0  # one padded row: padding is never counted
    return [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_family_collects_edits_saves_and_reloads_with_plain_transformers(model_type, tmp_path):
    model = tiny_model(model_type)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    targets = resolve_targets(model)
    data = batches(model.config.vocab_size)
    factors = collect_factors(model, data, targets, CollectConfig(progress=False))
    routed = [n for n in targets if n not in factors.metadata.get("unrouted_experts", [])]
    save_factors(factors, tmp_path / "factors", model=model)
    loaded = load_factors(tmp_path / "factors", model=model)
    assert sorted(loaded.modules) == sorted(routed)
    edit = apply_edit(model, uniform_plan(loaded.modules, 0.6), loaded, bases=decompose_factors(loaded))
    save_edited_model(edit, tmp_path / "edited")

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "edited").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=data[0]["input_ids"]).logits
    assert torch.isfinite(logits).all()
    before = tiny_model(model_type)  # the same seed: the unedited weights
    before.load_state_dict(original)
    old, new = model_matrices(before), model_matrices(reloaded)
    assert list(old) == list(new)
    edited = set(loaded.modules)
    for name in old:
        same = torch.equal(old[name].weight(), new[name].weight())
        assert same != (name in edited), f"{model_type}: {name} {'unchanged' if same else 'changed'}"
    holders = {(m.owner, m.parameter) for m in old.values()}
    for key, tensor in reloaded.state_dict().items():
        owner, _, parameter = key.rpartition(".")
        if (owner, parameter) not in holders and key in original:
            assert torch.equal(tensor, original[key]), f"{model_type}: {key} changed although no target is in it"
