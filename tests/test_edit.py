"""The edit: W' = U_G (C * M) U_A^T, its controls, restore, save and reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from conftest import batches_of, random_sequences
from unmemorize.basis import decompose_factors
from unmemorize.curvature import CollectConfig, KFACFactors, collect_factors
from unmemorize.edit import EditConfig, apply_edit, edited, parse_plan, save_edited_model, select_pairs, uniform_plan
from unmemorize.edit.methods import module_seed
from unmemorize.errors import UnmemorizeError
from unmemorize.models import get_weight
from unmemorize.targets import resolve_targets


def random_psd(d, seed):
    x = torch.randn(d, 3 * d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scales = torch.logspace(0, -4, 3 * d, dtype=torch.float64)
    return (x * scales) @ x.T / d


def collected(model, fisher="true"):
    batches = batches_of(random_sequences([12, 9, 16, 7], model.config.vocab_size), 2)
    return collect_factors(model, batches, resolve_targets(model), CollectConfig(fisher=fisher, progress=False))


class Pair(nn.Module):
    def __init__(self, d_out, d_in):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, dtype=torch.float64)
        self.conv = Conv1D(d_out, d_in).double()
        with torch.no_grad():
            self.conv.weight.copy_(self.linear.weight.T)


def test_kfac_edit_equals_the_sum_of_kept_rank_one_components():
    d_out, d_in = 6, 5
    module = Pair(d_out, d_in)
    factors = KFACFactors({"linear": random_psd(d_in, 1)}, {"linear": random_psd(d_out, 2)}, 1)
    weight = module.linear.weight.detach().clone()
    basis = decompose_factors(factors)["linear"]
    selection = select_pairs(basis.gradient.eigenvalues, basis.activation.eigenvalues, 0.7)
    expected = torch.zeros_like(weight)
    for i in range(d_out):  # brute force: sum over kept (i, j) of (u_i^T W v_j) u_i v_j^T
        for j in range(int(selection.row_counts[i])):
            u, v = basis.gradient.eigenvectors[:, i], basis.activation.eigenvectors[:, j]
            expected += (u @ weight @ v) * torch.outer(u, v)
    apply_edit(module, {"linear": 0.7}, factors)
    assert torch.allclose(module.linear.weight, expected, atol=1e-12)
    assert 0 < selection.kept_pairs < d_out * d_in


def test_conv1d_and_linear_with_the_same_weights_get_the_same_edit():
    pair = Pair(7, 4)
    a, g = random_psd(4, 3), random_psd(7, 4)
    factors = KFACFactors({"layer": a}, {"layer": g}, 1)
    as_linear, as_conv = nn.Module(), nn.Module()  # the same module name, so the random control draws the same mask
    as_linear.layer, as_conv.layer = pair.linear, pair.conv
    for method in ("kfac", "random", "svd"):
        edits = [apply_edit(model, {"layer": 0.8}, factors, EditConfig(method=method)) for model in (as_linear, as_conv)]
        assert torch.allclose(pair.conv.weight.T, pair.linear.weight, atol=1e-12), method
        assert not torch.allclose(pair.linear.weight, edits[0].originals["layer"]), method
        for edit in edits:
            edit.restore()


def test_rho_one_returns_the_weight_exactly_and_rho_zero_removes_it(tiny_lm):
    model, _ = tiny_lm("gpt2", dtype=torch.float32)
    factors = collected(model)
    targets = factors.modules
    before = {n: get_weight(dict(model.named_modules())[n]).clone() for n in targets}
    with edited(model, uniform_plan(targets, 1.0), factors):
        for name in targets:
            assert torch.equal(get_weight(dict(model.named_modules())[name]), before[name])
    with edited(model, uniform_plan(targets, 0.0), factors) as edit:
        for name in targets:
            assert float(get_weight(dict(model.named_modules())[name]).abs().max()) < 1e-6
            assert edit.modules[name].kept_pairs == 0
            assert edit.modules[name].relative_change == pytest.approx(1.0)


def test_restore_puts_back_the_original_weights_and_leaves_biases_alone(tiny_lm):
    model, _ = tiny_lm("gpt2", dtype=torch.float32)
    factors = collected(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit = apply_edit(model, uniform_plan(factors.modules, 0.9), factors)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed == {f"{n}.weight" for n in factors.modules}  # weights only, never biases
    edit.restore()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_saved_model_reloads_with_plain_transformers_and_gives_the_same_logits(tiny_lm, tmp_path, family):
    model, tokenizer = tiny_lm(family, dtype=torch.float32)
    factors = collected(model)
    ids = torch.tensor(random_sequences([15], model.config.vocab_size, seed=9))
    original_logits = model(input_ids=ids).logits
    edit = apply_edit(model, uniform_plan(factors.modules, 0.9), factors)
    edited_logits = model(input_ids=ids).logits
    save_edited_model(edit, tmp_path / "out", tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, edited_logits, atol=1e-5)
    assert not torch.allclose(edited_logits, original_logits, atol=1e-3)  # the edit did something
    info = json.loads((tmp_path / "out" / "unmemorize_edit.json").read_text())
    stats = info["modules"][factors.modules[0]]
    for key in ("rho", "kept_pairs", "kept_fraction", "kept_mass", "output_eigenvectors_used", "input_eigenvectors_used", "relative_change"):
        assert key in stats
    assert stats["kept_mass"] >= 0.9 and info["factors"]["fisher"] == "true"
    assert (tmp_path / "out" / "tokenizer.json").exists() and (tmp_path / "out" / "model.safetensors").exists()


def test_random_control_keeps_as_many_pairs_but_not_the_same_ones(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float32)
    factors = collected(model)
    plan = uniform_plan(factors.modules, 0.9)
    with edited(model, plan, factors) as kfac:
        kfac_weight = get_weight(model.model.layers[0].mlp.up_proj).clone()
    with edited(model, plan, factors, EditConfig(method="random", seed=1)) as random:
        random_weight = get_weight(model.model.layers[0].mlp.up_proj).clone()
    for name in plan:
        assert random.modules[name].kept_pairs == kfac.modules[name].kept_pairs
    assert not torch.allclose(kfac_weight, random_weight, atol=1e-4)


def kept_pairs_mask(weight: torch.Tensor, basis) -> torch.Tensor:
    """The pairs an edit kept, read back from W': the nonzero coefficients of U_G^T W' U_A."""
    coefficients = basis.gradient.eigenvectors.T @ weight.double() @ basis.activation.eigenvectors
    return coefficients.abs() > 1e-9 * coefficients.abs().max()


def test_random_control_draws_a_mask_per_module_seeded_by_its_name():
    """Two modules of equal shape, weights and factors (a gate and an up projection) get different
    random masks; the same module name and seed give the same mask in another model."""
    a, g = random_psd(5, 3), random_psd(6, 4)
    factors = KFACFactors({"gate": a, "up": a}, {"gate": g, "up": g}, 1)
    basis = decompose_factors(factors)["gate"]

    def twins():
        model = nn.Module()
        model.gate, model.up = nn.Linear(5, 6, bias=False, dtype=torch.float64), nn.Linear(5, 6, bias=False, dtype=torch.float64)
        with torch.no_grad():
            model.gate.weight.copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
            model.up.weight.copy_(model.gate.weight)
        return model

    first, second = twins(), twins()
    edit = apply_edit(first, {"gate": 0.8, "up": 0.8}, factors, EditConfig(method="random", seed=3))
    apply_edit(second, {"gate": 0.8}, factors, EditConfig(method="random", seed=3))
    masks = {name: kept_pairs_mask(getattr(first, name).weight, basis) for name in ("gate", "up")}
    kept = edit.modules["gate"].kept_pairs
    assert 0 < kept < 30 and int(masks["gate"].sum()) == int(masks["up"].sum()) == kept
    assert not torch.equal(masks["gate"], masks["up"]), "equal-shaped modules must not share one random mask"
    assert torch.equal(kept_pairs_mask(second.gate.weight, basis), masks["gate"])
    assert edit.modules["gate"].random_seed != edit.modules["up"].random_seed
    # the per-module seed is sha256-based, so the same in every process (Python's hash() of a str is not)
    assert module_seed(0, "model.layers.0.mlp.gate_proj") == 2103592515
    assert module_seed(0, "model.layers.0.mlp.up_proj") == 1708473504


def test_edit_manifest_is_strict_json_with_non_finite_numbers_as_null(tiny_lm, tmp_path):
    """unmemorize_edit.json parses with a strict parser when the record holds NaN/Inf (a search
    candidate whose perplexity overflowed, a zero weight's relative change); plain json.dumps of the
    same record (the old writer) does not."""
    from unmemorize.jsonio import strict_loads

    model, _ = tiny_lm("llama")
    name = "model.layers.0.mlp.up_proj"
    d_out, d_in = get_weight(dict(model.named_modules())[name]).shape
    factors = KFACFactors({name: random_psd(d_in, 1)}, {name: random_psd(d_out, 2)}, 1)
    edit = apply_edit(model, {name: 0.8}, factors, EditConfig(method="random"))
    edit.modules[name].relative_change = float("nan")
    search = {"baseline_perplexity": 12.5, "candidates": [{"rho": 0.5, "perplexity": float("inf"), "perplexity_ratio": float("inf")}]}
    save_edited_model(edit, tmp_path / "out", extra={"label_free_search": search})
    text = (tmp_path / "out" / "unmemorize_edit.json").read_text()
    record = strict_loads(text)
    assert record["label_free_search"]["candidates"][0]["perplexity"] is None and record["modules"][name]["relative_change"] is None
    assert record["label_free_search"]["baseline_perplexity"] == 12.5 and record["config"]["method"] == "random"
    assert strict_loads((tmp_path / "out" / ".unmemorize-output.json").read_text())["kind"]
    with pytest.raises(ValueError, match="not strict JSON"):
        strict_loads(json.dumps({**edit.summary(), "label_free_search": search}, indent=2))


def test_svd_keeps_the_energy_or_prunes_the_fraction_asked():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(10, 8, bias=False).double())
    weight = module[0].weight.detach().clone()
    s = np.linalg.svd(weight.numpy(), compute_uv=False)
    energy = np.cumsum(s**2) / (s**2).sum()
    expected_rank = int(np.argmax(energy >= 0.7)) + 1
    with edited(module, {"0": 0.7}, config=EditConfig(method="svd")) as edit:
        assert edit.modules["0"].kept_pairs == expected_rank
        assert np.linalg.matrix_rank(module[0].weight.detach().numpy()) == expected_rank
    with edited(module, {"0": 0.25}, config=EditConfig(method="svd", svd_mode="prune")) as edit:
        assert edit.modules["0"].kept_pairs == 6  # 8 singular values, 2 pruned
    assert torch.equal(module[0].weight, weight)


def test_plan_in_preset_terms_and_module_names(tiny_lm):
    model, _ = tiny_lm("llama", layers=3)
    plan = parse_plan(model, {"1": {"gate": 0.6, "up": 0.5}, "model.layers.2.mlp.down_proj": 0.9})
    assert plan == {"model.layers.1.mlp.gate_proj": 0.6, "model.layers.1.mlp.up_proj": 0.5, "model.layers.2.mlp.down_proj": 0.9}
    with pytest.raises(UnmemorizeError, match="rho"):
        parse_plan(model, {"1": {"gate": 1.5}})
    with pytest.raises(UnmemorizeError, match="unknown projection"):
        parse_plan(model, {"1": {"gat": 0.5}})
    with pytest.raises(UnmemorizeError, match="not a weight matrix"):
        parse_plan(model, {"model.layers.9.mlp.up_proj": 0.5})


def test_edit_needs_factors_for_every_planned_module(tiny_lm):
    model, _ = tiny_lm("llama")
    factors = collected(model).subset(["model.layers.0.mlp.up_proj"])
    with pytest.raises(UnmemorizeError, match="no factors"):
        apply_edit(model, {"model.layers.1.mlp.up_proj": 0.5}, factors)


def test_a_tied_head_is_refused_however_the_plan_names_it():
    """GPT-2's lm_head is its input embedding: a plan file, --factors' modules or a search naming it would edit both."""
    import pytest

    from unmemorize.edit import apply_edit, parse_plan
    from unmemorize.errors import UnmemorizeError
    from unmemorize.tiny import build_tiny_lm

    model, _ = build_tiny_lm("gpt2", seed=0)
    before = model.transformer.wte.weight.detach().clone()
    with pytest.raises(UnmemorizeError, match="lm_head.weight is tied to transformer.wte.weight"):
        apply_edit(model, parse_plan(model, {"lm_head": 0.5}), config=EditConfig(method="svd"))
    assert torch.equal(model.transformer.wte.weight, before)
