"""K-FAC collection: the factors are the quantities the docstring defines, exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import batches_of, brute_force_factors, random_sequences, relative_error
from unmemorize.curvature import CollectConfig, NextTokenObjective, collect_factors
from unmemorize.targets import resolve_targets

LENGTHS = [9, 5, 12, 2, 7]  # uneven: batches are right-padded


class RecordingObjective(NextTokenObjective):
    """Records the sampled labels so the brute force can use the very same ones."""

    def __init__(self):
        self.sampled = []

    def label_sampler(self, logits, uniforms):
        labels = super().label_sampler(logits, uniforms)
        self.sampled.append(labels.clone())
        return labels


def split_labels_per_sequence(sampled, sequences, batch_size):
    """Counted positions are row-major inside a batch: row b owns len_b - 1 labels."""
    per_sequence = []
    for start, labels in zip(range(0, len(sequences), batch_size), sampled):
        offset = 0
        for sequence in sequences[start : start + batch_size]:
            per_sequence.append(labels[offset : offset + len(sequence) - 1].tolist())
            offset += len(sequence) - 1
    return per_sequence


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_factors_match_brute_force(tiny_lm, family, fisher):
    model, _ = tiny_lm(family)
    sequences = random_sequences(LENGTHS, model.config.vocab_size)
    targets = resolve_targets(model)
    objective = RecordingObjective()
    factors = collect_factors(model, batches_of(sequences, 3), targets, CollectConfig(fisher=fisher, dtype="float64", progress=False), objective)
    labels = split_labels_per_sequence(objective.sampled, sequences, 3) if fisher == "true" else None
    expected = brute_force_factors(model, sequences, targets, labels)
    assert factors.num_positions == sum(n - 1 for n in LENGTHS)
    for name in targets:
        a, g = expected[name]
        assert relative_error(factors.activation[name], a) < 1e-5, name
        assert relative_error(factors.gradient[name], g) < 1e-5, name
        assert float(g.norm()) > 0  # a non-trivial comparison


def test_counting_the_last_position_is_detected(tiny_lm):
    """Negative control: an objective that also counts each window's last position must disagree."""

    class CountsLastPosition(NextTokenObjective):
        def counted_positions(self, batch):
            return batch["attention_mask"].bool()

        def loss(self, model, batch, counted, fisher, generator):
            logits = model(**batch).logits
            shifted = counted.clone()
            shifted[:, -1] = False
            shifted &= torch.roll(counted, -1, 1)
            return torch.nn.functional.cross_entropy(logits[shifted].float(), batch["input_ids"][:, 1:][shifted[:, :-1]], reduction="sum")

    model, _ = tiny_lm("llama")
    sequences = random_sequences(LENGTHS, model.config.vocab_size)
    targets = resolve_targets(model, layers="1")
    wrong = collect_factors(model, batches_of(sequences, 5), targets, CollectConfig(fisher="empirical", dtype="float64", progress=False), CountsLastPosition())
    expected = brute_force_factors(model, sequences, targets)
    assert relative_error(wrong.activation[targets[0]], expected[targets[0]][0]) > 1e-3


def test_padding_does_not_change_factors(tiny_lm):
    """GPT-2 runs wholly in float64 here, so padded and unpadded batches must agree to float64
    round-off. (Llama and GPT-NeoX in transformers 5.x compute parts of the forward in float32:
    the model's own padded and unpadded logits differ by ~1e-8, by CPU, which no collector can undo.)"""
    model, _ = tiny_lm("gpt2")
    sequences = random_sequences(LENGTHS, model.config.vocab_size, seed=3)
    targets = resolve_targets(model)
    config = CollectConfig(fisher="empirical", dtype="float64", progress=False)
    padded = collect_factors(model, batches_of(sequences, len(sequences)), targets, config)
    one_by_one = collect_factors(model, batches_of(sequences, 1), targets, config)
    assert padded.num_positions == one_by_one.num_positions
    for name in targets:
        assert relative_error(padded.activation[name], one_by_one.activation[name]) < 1e-10
        assert relative_error(padded.gradient[name], one_by_one.gradient[name]) < 1e-10


def test_true_fisher_is_reproducible_and_differs_from_empirical(tiny_lm):
    model, _ = tiny_lm("llama")
    batches = batches_of(random_sequences(LENGTHS, model.config.vocab_size), 2)
    targets = resolve_targets(model, layers="0", projections="down")

    def run(fisher, seed):
        return collect_factors(model, batches, targets, CollectConfig(fisher=fisher, seed=seed, progress=False)).gradient[targets[0]]

    first, again, other_seed, empirical = run("true", 7), run("true", 7), run("true", 8), run("empirical", 7)
    assert torch.equal(first, again)
    assert relative_error(first, other_seed) > 1e-3
    assert relative_error(first, empirical) > 1e-3


def test_modules_reading_one_input_share_one_activation_factor(tiny_lm):
    model, _ = tiny_lm("llama")
    batches = batches_of(random_sequences(LENGTHS, model.config.vocab_size), 5)
    targets = resolve_targets(model, layers="0")
    factors = collect_factors(model, batches, targets, CollectConfig(progress=False))
    gate, up, down = targets
    assert factors.metadata["shared_activation"] == {up: gate}
    assert torch.equal(factors.activation[gate], factors.activation[up])
    assert factors.activation[down].shape == (model.config.intermediate_size,) * 2


def test_backward_stops_at_the_earliest_target(tiny_lm):
    model, _ = tiny_lm("llama", layers=3)
    batches = batches_of(random_sequences(LENGTHS, model.config.vocab_size), 5)
    calls = []
    warnings.filterwarnings("ignore", "Full backward hook is firing")
    hooks = [model.model.layers[i].register_full_backward_hook(lambda *a, i=i: calls.append(i)) for i in range(3)]
    collect_factors(model, batches, resolve_targets(model, layers="2"), CollectConfig(progress=False))
    assert 0 not in calls and 1 not in calls  # blocks 0 and 1 lie below the targets: never differentiated
    collect_factors(model, batches, resolve_targets(model, layers="1,2"), CollectConfig(progress=False))
    for hook in hooks:
        hook.remove()
    assert 0 not in calls and 1 in calls  # control: block 1 now holds a target, so backward reaches it


def test_several_passes_give_the_factors_of_one(tiny_lm):
    model, _ = tiny_lm("llama")
    batches = batches_of(random_sequences(LENGTHS, model.config.vocab_size), 2)
    targets = resolve_targets(model)
    one = collect_factors(model, batches, targets, CollectConfig(progress=False, seed=3))
    many = collect_factors(model, batches, targets, CollectConfig(progress=False, seed=3, modules_per_pass=2))
    assert many.metadata["passes"] == 3
    for name in targets:
        assert torch.allclose(one.activation[name], many.activation[name], rtol=1e-6, atol=0)
        assert torch.allclose(one.gradient[name], many.gradient[name], rtol=1e-6, atol=0)


def test_low_precision_model_accumulates_in_float32(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.bfloat16)
    batches = batches_of(random_sequences(LENGTHS, model.config.vocab_size), 5)
    factors = collect_factors(model, batches, resolve_targets(model, layers="0"), CollectConfig(progress=False))
    for tensor in [*factors.activation.values(), *factors.gradient.values()]:
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    assert factors.metadata["model_dtype"] == "bfloat16"


def test_parameters_are_unfrozen_again_after_collection(tiny_lm):
    model, _ = tiny_lm("llama")
    before = [p.requires_grad for p in model.parameters()]
    model.train()
    collect_factors(model, batches_of(random_sequences(LENGTHS, model.config.vocab_size), 5), resolve_targets(model, layers="0"),
                    CollectConfig(progress=False))
    assert [p.requires_grad for p in model.parameters()] == before and model.training
    assert all(p.grad is None for p in model.parameters())


def test_label_sampler_draws_from_the_model_softmax():
    """Frequencies of 200k draws match softmax(logits) (chi-square-sized tolerance)."""
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]]).repeat(200_000, 1)
    labels = NextTokenObjective().label_sampler(logits, torch.rand(len(logits), generator=torch.Generator().manual_seed(0)))
    frequencies = torch.bincount(labels, minlength=5).double() / len(labels)
    expected = torch.softmax(logits[0].double(), 0)
    assert torch.allclose(frequencies, expected, atol=4e-3)
    assert int((labels == 4).sum()) == 0  # probability ~1e-14: never drawn


def test_float16_models_are_refused_not_silently_biased(tiny_lm):
    """Without loss scaling float16 gradients underflow: G would come out biased low, so collection refuses."""
    import unmemorize as um

    model, _ = tiny_lm("llama", dtype=torch.float16)
    targets = um.resolve_targets(model)
    batch = {"input_ids": torch.randint(3, 40, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    with pytest.raises(um.UnmemorizeError, match="float16 weights are not collected: without loss scaling"):
        um.collect_factors(model, [batch], targets, um.CollectConfig(progress=False))
    model.to(torch.bfloat16)  # the suggested dtype works
    assert um.collect_factors(model, [batch], targets, um.CollectConfig(progress=False)).num_positions == 2 * 7
