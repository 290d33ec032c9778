"""Mixture-of-experts and fused projections: factors against brute force, the layout, the edit, the plan.

Oracles:
* **rank one**: a window of two tokens has one counted position t. For a matrix W that t reaches,
  A = a a^T and G = g g^T, and plain autograd on the model's own (uninstrumented) forward gives
  dL/dW = g a^T. So dW dW^T = G tr(A) and dW^T dW = A tr(G), and for the experts' first matrices
  A equals the outer product of the experts' input row, read with a hook. Independent of how the
  experts are instrumented.
* **unfused twin**: Phi-3 with each ``gate_up_proj`` replaced by separate ``gate_proj``/``up_proj``
  linears (the same weights) has the same logits; its dense factors and edit must be those of the
  fused halves.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unmemorize.basis import decompose_factors
from unmemorize.curvature import CollectConfig, collect_factors
from unmemorize.curvature.collect import _dummy_batch, _PassRecorder
from unmemorize.curvature.experts import eager_experts
from unmemorize.curvature.objectives import NextTokenObjective
from unmemorize.curvature.plan import collection_plan
from unmemorize.edit import apply_edit, uniform_plan
from unmemorize.matrices import model_matrices
from unmemorize.targets import resolve_targets, untouched
from unmemorize.testbed.zoo import tiny_model


def window(ids: list[int]) -> list[dict]:
    tensor = torch.tensor([ids])
    return [{"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}]


def grad_view(matrix, grad: torch.Tensor) -> torch.Tensor:
    """The gradient of the stored parameter, read as (d_out, d_in) like ``Matrix.weight`` reads the parameter."""
    view = grad[matrix.expert] if matrix.expert is not None else grad
    view = view.T if matrix.transposed else view
    return view[slice(*matrix.rows)] if matrix.rows is not None else view


@pytest.mark.parametrize("model_type", ["olmoe", "gpt_oss", "phi3"])
def test_factors_of_one_position_equal_the_rank_one_brute_force(model_type):
    model = tiny_model(model_type).double()
    if hasattr(model.config, "_experts_implementation"):
        model.set_experts_implementation("eager")  # transformers' grouped kernels take no float64; its own eager loop does
    layer = 1
    targets = resolve_targets(model, layers=str(layer))
    matrices = model_matrices(model)
    checked = 0
    for seed in range(3):
        ids = torch.randint(3, model.config.vocab_size, (2,), generator=torch.Generator().manual_seed(seed)).tolist()
        factors = collect_factors(model, window(ids), targets, CollectConfig(fisher="empirical", progress=False, dtype="float64"))
        probe = copy.deepcopy(model)
        inputs = {}
        mlp_input = dict(probe.named_modules())[f"model.layers.{layer}.mlp" + (".experts" if model_type != "phi3" else "")]

        def read_input(module, args):
            inputs.setdefault("a", args[0].reshape(-1, args[0].shape[-1])[0])  # the counted position's row

        mlp_input.register_forward_pre_hook(read_input)
        parameters = dict(probe.named_parameters())
        for parameter in parameters.values():
            parameter.requires_grad_(False)
        holders = {f"{m.owner}.{m.parameter}" for n, m in matrices.items() if n in targets}
        for key in holders:
            parameters[key].requires_grad_(True)
        logits = probe(input_ids=torch.tensor([ids])).logits
        nn.functional.cross_entropy(logits[0, :1], torch.tensor(ids[1:]), reduction="sum").backward()
        for name in factors.modules:
            matrix = matrices[name]
            grad = grad_view(matrix, parameters[f"{matrix.owner}.{matrix.parameter}"].grad)
            A, G = factors.activation[name], factors.gradient[name]
            assert torch.allclose(grad @ grad.T, G * A.trace(), rtol=1e-8, atol=1e-12), name
            assert torch.allclose(grad.T @ grad, A * G.trace(), rtol=1e-8, atol=1e-12), name
            if not name.endswith("down_proj"):  # gate and up read the MLP's input row itself
                assert torch.allclose(A, torch.outer(inputs["a"], inputs["a"]), rtol=1e-10, atol=1e-14), name
            checked += 1
        if matrices[targets[0]].kind == "expert":  # top-2 of 4: exactly two experts have factors
            assert len(factors.metadata["unrouted_experts"]) == len(targets) - len(factors.modules) == 2 * 3
            assert set(factors.metadata["expert_positions"].values()) == {0, 1}
    assert checked >= 3 * (6 if model_type != "phi3" else 3)


def test_expert_layouts_read_the_matrices_transformers_computes_with():
    """Read off transformers' eager code: OLMoE chunks F.linear(x, gate_up_proj[e]) into gate, up;
    gpt-oss computes x @ gate_up_proj[e] and takes gate = [..., ::2], up = [..., 1::2]."""
    olmoe = model_matrices(tiny_model("olmoe"))
    experts = olmoe["model.layers.0.mlp.experts.2.gate_proj"].module
    half = experts.gate_up_proj.shape[1] // 2
    assert torch.equal(olmoe["model.layers.0.mlp.experts.2.gate_proj"].weight(), experts.gate_up_proj[2][:half])
    assert torch.equal(olmoe["model.layers.0.mlp.experts.2.up_proj"].weight(), experts.gate_up_proj[2][half:])
    assert torch.equal(olmoe["model.layers.0.mlp.experts.2.down_proj"].weight(), experts.down_proj[2])
    oss = model_matrices(tiny_model("gpt_oss"))
    experts = oss["model.layers.1.mlp.experts.3.gate_proj"].module
    assert torch.equal(oss["model.layers.1.mlp.experts.3.gate_proj"].weight(), experts.gate_up_proj[3][:, ::2].T)
    assert torch.equal(oss["model.layers.1.mlp.experts.3.up_proj"].weight(), experts.gate_up_proj[3][:, 1::2].T)
    assert torch.equal(oss["model.layers.1.mlp.experts.3.down_proj"].weight(), experts.down_proj[3].T)


@pytest.mark.parametrize("model_type", ["olmoe", "gpt_oss", "qwen2_moe"])
def test_instrumented_logits_equal_the_models_own(model_type):
    model = tiny_model(model_type)
    ids = torch.randint(3, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        default = model(**batch).logits  # transformers' default experts implementation
        with eager_experts(model):
            eager = model(**batch).logits
            matrices = model_matrices(model)
            recorder = _PassRecorder({n: matrices[n] for n in resolve_targets(model)}, torch.float32,
                                     _dummy_batch(model, NextTokenObjective()))
            recorder.set_counted(batch["attention_mask"].bool())
            with recorder:
                instrumented = model(**batch).logits
    assert torch.equal(instrumented, eager)  # the instrumentation changes nothing
    assert torch.allclose(eager, default, atol=1e-5)  # eager and grouped kernels agree to round-off
    routed = sum(int(n.item()) for owner, n in recorder.expert_counts.items() if owner.endswith("gate_proj"))
    assert routed == 2 * 10 * 2 * model.config.num_hidden_layers  # every position reaches its top-2 experts in every layer


class UnfusedMLP(nn.Module):
    """Phi-3's MLP with gate_up_proj split into the gate_proj and up_proj it fuses (same weights)."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        half = fused.gate_up_proj.out_features // 2
        self.gate_proj = nn.Linear(fused.gate_up_proj.in_features, half, bias=False, dtype=fused.gate_up_proj.weight.dtype)
        self.up_proj = nn.Linear(fused.gate_up_proj.in_features, half, bias=False, dtype=fused.gate_up_proj.weight.dtype)
        with torch.no_grad():
            self.gate_proj.weight.copy_(fused.gate_up_proj.weight[:half])
            self.up_proj.weight.copy_(fused.gate_up_proj.weight[half:])
        self.down_proj, self.activation_fn = fused.down_proj, fused.activation_fn

    def forward(self, x):
        return self.down_proj(self.up_proj(x) * self.activation_fn(self.gate_proj(x)))


def test_fused_gate_up_factors_and_edit_equal_those_of_the_unfused_twin():
    fused = tiny_model("phi3").double()
    twin = copy.deepcopy(fused)
    for layer in twin.model.layers:
        layer.mlp = UnfusedMLP(layer.mlp)
    ids = torch.randint(3, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    with torch.no_grad():
        assert torch.allclose(fused(input_ids=ids).logits, twin(input_ids=ids).logits, rtol=1e-12, atol=1e-12)
    targets = resolve_targets(fused)
    assert targets == resolve_targets(twin)  # the halves carry the names of the modules they fuse
    assert {model_matrices(fused)[n].kind for n in targets} == {"fused", "linear"}
    config = CollectConfig(progress=False, dtype="float64", seed=3)
    mine, theirs = collect_factors(fused, data, targets, config), collect_factors(twin, data, targets, config)
    for name in targets:
        assert torch.allclose(mine.activation[name], theirs.activation[name], rtol=1e-10, atol=1e-13), name
        assert torch.allclose(mine.gradient[name], theirs.gradient[name], rtol=1e-10, atol=1e-13), name
    assert mine.metadata["shared_activation"]["model.layers.0.mlp.up_proj"] == "model.layers.0.mlp.gate_proj"
    apply_edit(fused, uniform_plan(targets, 0.6), mine, bases=decompose_factors(mine))
    apply_edit(twin, uniform_plan(targets, 0.6), theirs, bases=decompose_factors(theirs))
    for mlp, twin_mlp in zip((layer.mlp for layer in fused.model.layers), (layer.mlp for layer in twin.model.layers)):
        expected = torch.cat([twin_mlp.gate_proj.weight, twin_mlp.up_proj.weight])
        assert torch.allclose(mlp.gate_up_proj.weight, expected, rtol=1e-9, atol=1e-12)


def test_a_per_expert_edit_is_the_identity_at_rho_1_and_changes_only_the_targeted_experts():
    model = tiny_model("olmoe")
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(2))
    targets = resolve_targets(model, ["model.layers.0.mlp.experts.1.*", "model.layers.0.mlp.experts.3.down_proj"])
    assert targets == ["model.layers.0.mlp.experts.1.gate_proj", "model.layers.0.mlp.experts.1.up_proj",
                       "model.layers.0.mlp.experts.1.down_proj", "model.layers.0.mlp.experts.3.down_proj"]
    factors = collect_factors(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], targets, CollectConfig(progress=False))
    experts = model.model.layers[0].mlp.experts
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    edit = apply_edit(model, uniform_plan(targets, 1.0), factors)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, before[key], atol=1e-5), key
    edit.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    apply_edit(model, uniform_plan(targets, 0.6), factors)
    changed = {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])}
    assert changed == {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}
    gate_up, down = before["model.layers.0.mlp.experts.gate_up_proj"], before["model.layers.0.mlp.experts.down_proj"]
    for expert in (0, 2, 3):
        assert torch.equal(experts.gate_up_proj[expert], gate_up[expert])
    for expert in (0, 2):
        assert torch.equal(experts.down_proj[expert], down[expert])
    assert not torch.equal(experts.down_proj[3], down[3]) and not torch.equal(experts.gate_up_proj[1], gate_up[1])
    left = untouched(model, targets)
    assert left["model.layers.*.mlp.experts.{0,2,3}.gate_proj"] == "not a target"
    assert left["model.layers.*.mlp.gate.weight"] == "router: never edited by default"


def test_passes_split_over_experts_give_the_factors_of_one_pass_and_the_plan_counts_expert_bytes():
    model = tiny_model("qwen3_moe")
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(4))
    data = [{"input_ids": ids[:2], "attention_mask": torch.ones_like(ids[:2])}, {"input_ids": ids[2:], "attention_mask": torch.ones_like(ids[2:])}]
    targets = resolve_targets(model)
    one = collect_factors(model, data, targets, CollectConfig(progress=False))
    split = collect_factors(model, lambda: iter(data), targets, CollectConfig(progress=False, modules_per_pass=5))
    assert split.metadata["passes"] == 5 and one.modules == split.modules
    for name in one.modules:
        assert torch.allclose(one.activation[name], split.activation[name], rtol=1e-6, atol=1e-7)
        assert torch.allclose(one.gradient[name], split.gradient[name], rtol=1e-6, atol=1e-7)
    assert one.metadata["expert_positions"] == split.metadata["expert_positions"]
    plan = collection_plan(model, targets, CollectConfig())
    matrices = model_matrices(model)
    d_in, d_out = 32, 16  # an expert's gate/up: (16, 32); down: (32, 16)
    assert plan["expert_matrices"] == len(targets) == 2 * 4 * 3
    per_expert = 3 * 4 * (d_out**2 + d_in**2)  # gate, up, down: each file stores its A and G (float32)
    assert plan["expert_factor_bytes"] == 2 * 4 * per_expert
    assert all(matrices[n].shape in ((16, 32), (32, 16)) for n in targets)


def test_the_commands_collect_plan_and_edit_a_mixture_of_experts_folder(tmp_path, capsys):
    """collect --dry-run / collect / edit on an OLMoE folder with pre-tokenized data; the saved model loads in plain transformers."""
    import json

    from transformers import AutoModelForCausalLM

    from unmemorize.cli import main

    tiny_model("olmoe").save_pretrained(tmp_path / "olmoe")
    rows = torch.randint(3, 128, (6, 24), generator=torch.Generator().manual_seed(5)).tolist()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    common = ["--model", str(tmp_path / "olmoe"), "--data", str(tmp_path / "data.jsonl"), "--seq-len", "24", "--batch-size", "2"]
    assert main(["collect", *common, "--out", str(tmp_path / "f"), "--dry-run", "--no-progress"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["expert_matrices"] == plan["modules"] == 24 and 0 < plan["expert_factor_bytes"] <= plan["factor_file_bytes"]
    assert main(["collect", *common, "--out", str(tmp_path / "f"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "model.layers.*.mlp.gate.weight (router: never edited by default)" in err
    info = json.loads((tmp_path / "f" / "factors.json").read_text())
    assert info["untouched"] == {"model.layers.*.mlp.gate.weight": "router: never edited by default"}
    assert info["fused"]["model.layers.1.mlp.experts.3.up_proj"] == {"source": "model.layers.1.mlp.experts.gate_up_proj", "kind": "expert",
                                                                      "rows": [64, 128, 1], "expert": 3}
    assert sum(info["expert_positions"][f"model.layers.0.mlp.experts.{e}.gate_proj"] for e in range(4)) == 2 * 6 * 23
    assert main(["edit", "--model", str(tmp_path / "olmoe"), "--factors", str(tmp_path / "f"), "--rho", "0.6",
                 "--out", str(tmp_path / "edited")]) == 0
    manifest = json.loads((tmp_path / "edited" / "unmemorize_edit.json").read_text())
    assert len(manifest["modules"]) == 24 and manifest["untouched"] == info["untouched"]
    edited = AutoModelForCausalLM.from_pretrained(tmp_path / "edited")
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "olmoe")
    assert not torch.equal(edited.model.layers[1].mlp.experts.down_proj, original.model.layers[1].mlp.experts.down_proj)
    assert torch.equal(edited.model.layers[1].mlp.gate.weight, original.model.layers[1].mlp.gate.weight)
