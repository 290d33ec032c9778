"""Attacks on an edit: relearning, extraction by sampling, bf16 round trip.

Fixtures: a tiny Llama trained (AdamW, ~100 steps, under a second) to recite 16 random items --
a tuning half T and a validation half V -- and never shown the controls C; a second one trained
on T only. Oracles: an edit undone by construction (the final norm's scale zeroed: every logit
is 0, and the first AdamW steps regrow the scale) and the counterfactual model that never saw V;
the sampling distribution written out by hand; teacher-forced log-likelihoods by explicit loops;
the sampled rate against its exact expectation; bf16 rounding bounds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unmemorize.data import iter_windows
from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate import MemorizationItem, evaluate_memorization, greedy_continuations
from unmemorize.evaluate.attacks import (ExtractionConfig, RelearnConfig, bf16_round_trip, inverse_cdf, item_sequences, iter_relearned,
                                         relearn, relearning_attack, sampled_extraction, sampling_distribution, weight_change)
from unmemorize.tiny import WORDS, build_tiny_lm, write_corpus

VOCAB = len(WORDS) + 3


def random_items(count: int, seed: int, prefix: int = 6, suffix: int = 6) -> list[MemorizationItem]:
    generator = torch.Generator().manual_seed(seed)
    return [MemorizationItem(f"{seed}-{k}", torch.randint(3, VOCAB, (prefix,), generator=generator).tolist(),
                             torch.randint(3, VOCAB, (suffix,), generator=generator).tolist()) for k in range(count)]


TUNING, VALIDATION, CONTROLS = random_items(8, 1), random_items(8, 2), random_items(8, 3)


def train_to_recite(items: list[MemorizationItem], steps: int = 100):
    model, tokenizer = build_tiny_lm("llama", seed=0)
    batch = torch.tensor(item_sequences(items))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def memorizing():
    model, tokenizer = train_to_recite(TUNING + VALIDATION)
    assert strict(model, TUNING) == strict(model, VALIDATION) == 1.0 and strict(model, CONTROLS) == 0.0
    return model, tokenizer


@pytest.fixture(scope="module")
def tuning_only():
    model, _ = train_to_recite(TUNING)
    assert strict(model, TUNING) == 1.0 and strict(model, VALIDATION) == 0.0
    return model


def strict(model, items) -> float:
    return evaluate_memorization(model, items, pad_id=0).strict


def hide_by_zeroing_the_final_norm(model):
    """An edit undone by construction: every logit becomes 0 (greedy picks id 0), weights otherwise untouched."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.norm.weight.zero_()
    return edited


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- (a) relearning ----------------------------------------------------------------------------

FEW_STEPS = RelearnConfig(steps=(10,), learning_rate=1e-3, batch_size=4)


def test_relearning_on_the_tuning_half_restores_the_hidden_validation_half(memorizing):
    edited = hide_by_zeroing_the_final_norm(memorizing[0])
    kept = copy.deepcopy(edited)
    assert strict(edited, TUNING) == strict(edited, VALIDATION) == 0.0
    tuned = relearn(edited, item_sequences(TUNING), FEW_STEPS, pad_id=0)
    assert strict(tuned, VALIDATION) >= 0.75  # never trained on in the attack: it was only hidden
    assert same_weights(edited, kept) and tuned is not edited  # the input is never changed


def test_relearning_does_not_bring_back_what_was_never_memorized(tuning_only):
    """The negative control of the test above: the same edit and attack on a model that never saw V."""
    edited = hide_by_zeroing_the_final_norm(tuning_only)
    tuned = relearn(edited, item_sequences(TUNING), FEW_STEPS, pad_id=0)
    assert strict(tuned, TUNING) >= 0.75 and strict(tuned, VALIDATION) == 0.0


def test_relearning_on_clean_text_leaves_never_trained_controls_at_zero(memorizing, tmp_path):
    model, tokenizer = memorizing
    clean = list(iter_windows([write_corpus(tmp_path / "clean.txt", documents=200)], tokenizer, seq_len=16))
    config = RelearnConfig(steps=(0, 10, 50, 200), learning_rate=1e-3, batch_size=8)
    result = relearning_attack(model, clean, {"controls": CONTROLS, "validation": VALIDATION}, pad_id=0, config=config)
    assert result["steps"] == [0, 10, 50, 200] and result["sequences"] == len(clean)
    assert [row["strict"] for row in result["sets"]["controls"]] == [0.0, 0.0, 0.0, 0.0]
    assert result["sets"]["validation"][0]["strict"] == 1.0
    # the measurement can see learning: relearning on the controls themselves makes them recited
    on_controls = relearning_attack(model, item_sequences(CONTROLS), {"controls": CONTROLS}, 0,
                                    RelearnConfig(steps=(200,), learning_rate=1e-2, batch_size=8))
    assert on_controls["sets"]["controls"][0]["strict"] >= 0.75


def test_one_run_measured_at_each_k_equals_separate_runs(memorizing):
    model = memorizing[0]
    config = RelearnConfig(steps=(3, 7), learning_rate=1e-3, batch_size=3, seed=4)
    sequences = item_sequences(CONTROLS[:5])  # 5 sequences, batches of 3: passes wrap into a fresh permutation
    states = {k: copy.deepcopy(tuned.state_dict()) for k, tuned in iter_relearned(model, sequences, config, 0)}
    for k in (3, 7):
        alone = relearn(model, sequences, config, 0, steps=k).state_dict()
        assert all(torch.equal(states[k][name], alone[name]) for name in alone)
    assert not torch.equal(states[3]["lm_head.weight"], states[7]["lm_head.weight"])
    assert same_weights(relearn(model, sequences, config, 0, steps=0), model)


def test_relearn_config_errors():
    for bad, message in [(dict(steps=()), "--relearn-steps"), (dict(steps=(-1,)), "--relearn-steps"),
                         (dict(learning_rate=0.0), "--relearn-lr"), (dict(batch_size=0), "--relearn-batch-size"),
                         (dict(seed=-1), "--relearn-seed")]:
        with pytest.raises(UnmemorizeError, match=message):
            RelearnConfig(**bad).validate()


# --- (b) extraction by sampling ----------------------------------------------------------------

def test_sampled_extraction_of_never_trained_controls_is_zero_and_of_memorized_items_is_not(memorizing):
    model = memorizing[0]
    memorized = sampled_extraction(model, TUNING + VALIDATION)
    controls = sampled_extraction(model, CONTROLS)
    assert controls["exact_rate"] == 0.0 and controls["items_with_exact"] == 0.0 and controls["samples"] == 20
    assert memorized["exact_rate"] >= 0.9 and memorized["items_with_exact"] == 1.0
    assert memorized["mean_log_likelihood_per_token"] > -0.1 > -3 > controls["mean_log_likelihood_per_token"]


def test_log_likelihoods_match_teacher_forcing_by_hand(memorizing):
    model = memorizing[0]
    config = ExtractionConfig(temperature=1.5, top_k=5)
    result = sampled_extraction(model, CONTROLS[:3] + TUNING[:2], config)
    for k, item in enumerate(CONTROLS[:3] + TUNING[:2]):
        log_p, log_q = 0.0, 0.0
        for j, token in enumerate(item.suffix_ids):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([item.prefix_ids + item.suffix_ids[:j]])).logits[0, -1].double()
            log_p += float(torch.log_softmax(logits, -1)[token])
            scaled = logits / 1.5
            kept = scaled >= torch.sort(scaled, descending=True).values[4]
            log_q += float(scaled[token] - torch.logsumexp(scaled[kept], 0)) if kept[token] else -math.inf
        assert result["per_item"]["log_likelihood_per_token"][k] == pytest.approx(log_p / len(item.suffix_ids), abs=1e-5)
        got = result["per_item"]["log_exact_probability"][k]
        assert got == log_q if math.isinf(log_q) else got == pytest.approx(log_q, abs=1e-5)


def test_sampled_rate_agrees_with_its_exact_expectation(memorizing):
    """At temperature 2 (no top-k) the memorized suffixes are sampled only sometimes; the rate must match prod_j q(s_j)."""
    model = memorizing[0]
    config = ExtractionConfig(samples=300, temperature=2.0, top_k=0, seed=1)
    result = sampled_extraction(model, TUNING, config)
    expected = result["expected_exact_rate"]
    assert 0.05 < expected < 0.95  # a regime where sampling noise can show
    variance = sum(math.exp(v) * (1 - math.exp(v)) for v in result["per_item"]["log_exact_probability"]) / config.samples
    assert abs(result["exact_rate"] - expected) <= 4 * math.sqrt(variance) / len(TUNING)


def test_samples_do_not_depend_on_batching_and_depend_on_the_seed(memorizing):
    model = memorizing[0]
    runs = [sampled_extraction(model, TUNING, ExtractionConfig(samples=40, temperature=2.0, top_k=0, batch_size=size, seed=seed))
            for size, seed in ((40, 0), (200, 0), (1, 0), (40, 1))]
    counts = [run["per_item"]["exact_samples"] for run in runs]
    assert counts[0] == counts[1] == counts[2] and counts[0] != counts[3]


def test_top_k_one_sampling_is_greedy_decoding(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float64)
    prompts = [item.prefix_ids for item in CONTROLS]
    greedy = greedy_continuations(model, prompts, 6, pad_id=0)
    items = [MemorizationItem(str(k), p, g) for k, (p, g) in enumerate(zip(prompts, greedy))]
    assert sampled_extraction(model, items, ExtractionConfig(samples=5, top_k=1, temperature=3.0))["exact_rate"] == 1.0


def test_sampling_distribution_keeps_the_top_k_with_ties_and_draws_by_it():
    logits = torch.tensor([[2.0, 0.5, 1.0, 1.0, -1.0, 3.0]])
    q = sampling_distribution(logits, temperature=2.0, top_k=3)  # top 3: 3.0, 2.0 and a tie at 1.0 -> four kept
    kept = torch.tensor([0, 2, 3, 5])
    by_hand = torch.zeros(6, dtype=torch.float64)
    by_hand[kept] = torch.exp(logits[0, kept].double() / 2) / torch.exp(logits[0, kept].double() / 2).sum()
    assert torch.allclose(q[0], by_hand, atol=1e-15)
    uniforms = torch.rand(40_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    draws = inverse_cdf(q.expand(len(uniforms), -1), uniforms)
    frequencies = torch.bincount(draws, minlength=6).double() / len(uniforms)
    assert frequencies[1] == frequencies[4] == 0
    assert torch.all((frequencies - by_hand).abs() <= 4 * torch.sqrt(by_hand * (1 - by_hand) / len(uniforms)) + 1e-12)
    assert torch.equal(sampling_distribution(logits, 1.0, 0), torch.softmax(logits.double(), -1))  # top_k = 0: everything


# --- (c) bf16 round trip ------------------------------------------------------------------------

def test_bf16_round_trip_moves_each_weight_by_at_most_bf16_rounding(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float32)
    before = copy.deepcopy(model)
    rounded = bf16_round_trip(model)
    assert same_weights(model, before)  # the input is untouched
    changed = 0
    for (name, w), w2 in zip(model.named_parameters(), rounded.parameters()):
        assert w2.dtype == torch.float32
        assert torch.all((w2 - w).abs() <= 2.0**-8 * w.abs()), name  # round to nearest, 8 significant bits
        assert torch.equal(w2.to(torch.bfloat16).float(), w2)  # representable in bf16
        changed += int((w2 != w).sum())
    assert changed > 0
    for (name, buffer), buffer2 in zip(model.named_buffers(), rounded.buffers()):
        assert torch.equal(buffer, buffer2), name  # e.g. rotary frequencies stay full precision
    stats = weight_change(model, rounded)
    assert stats["changed"] == changed and 0 < stats["max_rel_change"] <= 2.0**-8


def test_bf16_round_trip_leaves_a_representable_model_unchanged(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float64)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).double())
    rounded = bf16_round_trip(model)
    assert same_weights(model, rounded) and weight_change(model, rounded)["changed"] == 0
