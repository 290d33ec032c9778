"""Evaluation suite: metric definitions, greedy decoding, memorization sets, perplexity, tasks.

Oracles: hand-made metric cases and a pure-Python edit-distance DP; a naive decoder (one prompt
at a time, no cache, argmax of a full forward each step); cross-entropy computed by hand.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from unmemorize.data import iter_windows, list_data_files
from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate import (MemorizationItem, answer_matches, evaluate_memorization, evaluate_tasks,
                                 greedy_continuations, load_memorization_set, load_tasks, memorization_scores,
                                 perplexity, perplexity_of_file, retention, token_levenshtein)
from unmemorize.evaluate.generate import _greedy_left_padded
from unmemorize.tiny import WORDS, write_corpus
from naive_decoding import naive_greedy  # tests/oracles/

SPECIAL = 3  # ids 0, 1, 2 are <pad>, <unk>, <eos> in the tiny tokenizer


def dp_levenshtein(a: list[int], b: list[int]) -> int:
    """Textbook Wagner-Fischer table, unit costs."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]



def random_prompts(lengths, seed=0, vocab=len(WORDS) + SPECIAL):
    rng = random.Random(seed)
    return [[rng.randrange(SPECIAL, vocab) for _ in range(n)] for n in lengths]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- metrics ----------------------------------------------------------------------------------

TARGET = [10, 11, 12, 13, 14, 15, 16, 17]


def test_exact_match_is_strict_and_loose_with_zero_distance():
    scores = memorization_scores([list(TARGET)], [TARGET])
    assert (scores.strict, scores.loose, scores.levenshtein, scores.n) == (1.0, 1.0, 0.0, 1)


def test_one_edit_in_eight_is_loose_but_not_strict():
    scores = memorization_scores([[10, 11, 12, 99, 14, 15, 16, 17]], [TARGET])  # 1 - 1/8 = 0.875 >= 0.75
    assert (scores.strict, scores.loose, scores.levenshtein, scores.distances) == (0.0, 1.0, 0.125, [1])


def test_three_edits_in_eight_is_not_loose():
    scores = memorization_scores([[99, 11, 98, 13, 14, 97, 16, 17]], [TARGET])  # 1 - 3/8 = 0.625 < 0.75
    assert (scores.strict, scores.loose, scores.levenshtein) == (0.0, 0.0, 3 / 8)


def test_two_edits_in_eight_sit_exactly_on_the_loose_threshold():
    scores = memorization_scores([[99, 11, 98, 13, 14, 15, 16, 17]], [TARGET])  # 1 - 2/8 = 0.75
    assert scores.loose == 1.0


def test_empty_output_has_distance_equal_to_target_length():
    scores = memorization_scores([[]], [TARGET])
    assert (scores.strict, scores.loose, scores.levenshtein, scores.distances) == (0.0, 0.0, 1.0, [8])


def test_longer_output_is_cut_to_target_length_and_set_scores_are_means():
    scores = memorization_scores([TARGET + [1, 2, 3], [99] * 8], [TARGET, TARGET])
    assert (scores.strict, scores.loose, scores.levenshtein, scores.n) == (0.5, 0.5, 0.5, 2)


def test_token_levenshtein_matches_dynamic_programming():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice([3, 7, 300, 70_000]) for _ in range(rng.randint(0, 9))]
        b = [rng.choice([3, 7, 300, 70_000]) for _ in range(rng.randint(0, 9))]
        assert token_levenshtein(a, b) == dp_levenshtein(a, b)


def test_retention_is_a_ratio_and_undefined_at_zero_baseline():
    assert retention(0.3, 0.6) == 0.5
    assert retention(0.3, 0.0) is None


# --- greedy decoding --------------------------------------------------------------------------

def float64_lm(tiny_lm, family, attention="sdpa"):
    """A float64 tiny model; sdpa by default, as transformers' eager attention NaNs on float64 padding."""
    model, tokenizer = tiny_lm(family, dtype=torch.float64)
    model.set_attn_implementation(attention)
    return model, tokenizer


PROMPT_LENGTHS = [5, 1, 9, 3, 12, 7, 2]  # sorted into batches of 4: lengths 1..7 share one batch


@pytest.mark.parametrize("family, attention", [("llama", "sdpa"), ("gpt2", "eager")])
def test_batched_cached_greedy_matches_naive_decoding(tiny_lm, family, attention):
    model, _ = float64_lm(tiny_lm, family, attention)  # GPT-2: absolute positions catch any padding shift
    prompts = random_prompts(PROMPT_LENGTHS, seed=1)
    got = greedy_continuations(model, prompts, max_new_tokens=6, pad_id=0, batch_size=4)
    assert got == [naive_greedy(model, p, 6) for p in prompts]


def test_greedy_falls_back_to_unpadded_groups_when_padding_yields_nan(tiny_lm):
    model, _ = float64_lm(tiny_lm, "llama", "eager")
    prompts = random_prompts(PROMPT_LENGTHS, seed=1)
    _, no_nan = _greedy_left_padded(model, prompts[:2], 3, pad_id=0)
    assert not no_nan  # the padded batch really does produce NaN with this kernel
    got = greedy_continuations(model, prompts, max_new_tokens=6, pad_id=0, batch_size=4)
    assert got == [naive_greedy(model, p, 6) for p in prompts]


def test_greedy_does_not_stop_at_eos(tiny_lm):
    model, _ = tiny_lm("gpt2", dtype=torch.float64)
    prompts = random_prompts([4, 6], seed=2)
    first = naive_greedy(model, prompts[0], 1)[0]
    model.config.eos_token_id = model.generation_config.eos_token_id = first  # the model "ends" at once
    got = greedy_continuations(model, prompts, max_new_tokens=5, pad_id=0)
    assert [len(g) for g in got] == [5, 5] and got[0][0] == first


def test_greedy_rejects_ids_outside_the_vocabulary(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float64)
    with pytest.raises(UnmemorizeError, match="outside the model's vocabulary"):
        greedy_continuations(model, [[3, 10_000]], max_new_tokens=2, pad_id=0)


# --- memorization sets ------------------------------------------------------------------------

def own_continuation_items(model):
    prefixes = random_prompts([6, 3, 9, 4, 8], seed=3)
    lengths = [5, 5, 3, 7, 3]  # several suffix lengths: items are grouped by length
    return [MemorizationItem(str(k), p, naive_greedy(model, p, n)) for k, (p, n) in enumerate(zip(prefixes, lengths))]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_model_own_greedy_continuation_is_strictly_memorized(tiny_lm, family):
    model, _ = float64_lm(tiny_lm, family)
    scores = evaluate_memorization(model, own_continuation_items(model), pad_id=0, batch_size=2)
    assert (scores.strict, scores.loose, scores.levenshtein, scores.n) == (1.0, 1.0, 0.0, 5)


def test_changed_suffix_is_not_strictly_memorized(tiny_lm):
    model, _ = float64_lm(tiny_lm, "llama")
    vocab = len(WORDS) + SPECIAL
    shifted = lambda t: SPECIAL + (t - SPECIAL + 1) % (vocab - SPECIAL)  # noqa: E731 -- never equal to t
    items = [MemorizationItem(i.id, i.prefix_ids, [shifted(t) for t in i.suffix_ids])
             for i in own_continuation_items(model)]  # every suffix token replaced by another one
    scores = evaluate_memorization(model, items, pad_id=0)
    assert scores.strict == 0.0 and all(d >= 1 for d in scores.distances)


def test_text_rows_and_id_rows_load_the_same_items(tmp_path, tiny_lm):
    _, tokenizer = tiny_lm("llama")
    texts = [("the cat sees a dog", "near the river ."), ("one old king", "eats a blue fish")]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    text_file = write_jsonl(tmp_path / "text.jsonl", [{"id": f"q{k}", "prefix": p, "suffix": s}
                                                      for k, (p, s) in enumerate(texts)])
    id_file = write_jsonl(tmp_path / "ids.jsonl", [{"id": f"q{k}", "prefix_ids": encode(p), "suffix_ids": encode(s)}
                                                   for k, (p, s) in enumerate(texts)])
    from_text, from_ids = load_memorization_set(text_file, tokenizer), load_memorization_set(id_file)
    assert from_text == from_ids and from_ids[1].suffix_ids == encode("eats a blue fish")


@pytest.mark.parametrize("row, message", [
    ({"prefix_ids": [3, 4]}, r"bad\.jsonl:2: 'suffix_ids' must be a non-empty list"),
    ({"prefix_ids": [3], "suffix_ids": [4, -1]}, r"bad\.jsonl:2: 'suffix_ids'"),
    ({"prefix": "the cat", "suffix": "runs"}, r"bad\.jsonl:2: a text row .* needs a tokenizer"),
    ({"text": "the cat"}, r"bad\.jsonl:2: a memorization row needs"),
])
def test_bad_memorization_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prefix_ids": [3], "suffix_ids": [4]}, row])
    with pytest.raises(UnmemorizeError, match=message):
        load_memorization_set(path)


# --- perplexity -------------------------------------------------------------------------------

def test_perplexity_of_one_window_is_exp_mean_cross_entropy(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float64)
    window = random_prompts([20], seed=4)[0]
    ids = torch.tensor([window])
    logits = model(input_ids=ids).logits[0].detach()  # (20, V)
    nll = [-(logits[t].log_softmax(-1)[window[t + 1]]) for t in range(len(window) - 1)]
    expected = math.exp(float(sum(nll)) / 19)
    result = perplexity(model, [window])
    assert result.tokens == 19 and result.windows == 1
    assert result.perplexity == pytest.approx(expected, rel=1e-12)
    assert result.batch_mean_exp == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_padding_does_not_change_perplexity(tiny_lm, family):
    model, _ = tiny_lm(family, dtype=torch.float64)
    windows = random_prompts([16, 5, 11, 2, 16, 9], seed=5)
    padded, single = perplexity(model, windows, batch_size=4), perplexity(model, windows, batch_size=1)
    assert padded.tokens == single.tokens == sum(len(w) - 1 for w in windows)
    # eager attention softmaxes in float32 even for float64 models: agreement to ~1e-10, not 1e-16
    assert padded.perplexity == pytest.approx(single.perplexity, rel=1e-9)
    assert padded.mean_nll == pytest.approx(single.mean_nll, rel=1e-9)
    per_window = [perplexity(model, [w]).perplexity for w in windows]  # batch size 1: mean of per-window exp
    assert single.batch_mean_exp == pytest.approx(sum(per_window) / len(per_window), rel=1e-12)


def test_perplexity_of_file_scores_the_data_windows(tmp_path, tiny_lm):
    model, tokenizer = tiny_lm("llama", dtype=torch.float64)
    corpus = write_corpus(tmp_path / "held_out.txt", documents=12, seed=1)
    windows = list(iter_windows(list_data_files(corpus), tokenizer, seq_len=32, max_tokens=150))
    result = perplexity_of_file(model, tokenizer, corpus, seq_len=32, max_tokens=150, batch_size=3)
    assert result.windows == len(windows) and result.tokens == 150 - len(windows)
    assert result.perplexity == pytest.approx(perplexity(model, windows).perplexity, rel=1e-12)


# --- tasks ------------------------------------------------------------------------------------

def test_answer_matching_rule():
    assert answer_matches(" 47 apples", "47") and answer_matches("47.", " 47 ") and answer_matches("47", "47")
    assert not answer_matches("470", "47") and not answer_matches("4 7", "47") and not answer_matches("the 47", "47")


def word_prompts(count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:-2]) for _ in range(rng.randint(2, 6))) for _ in range(count)]


def model_answers(model, tokenizer, prompts, length=2):
    """Prompts whose greedy continuation starts with `length` word tokens, and those words."""
    kept = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        output = naive_greedy(model, ids, length)
        if all(t >= SPECIAL for t in output):
            kept.append((prompt, tokenizer.decode(output)))
    return kept


def model_choices(model, tokenizer, prompts):
    """(prompt, best word, another word): best = argmax of the next-token logits over word tokens."""
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1, SPECIAL:]
        ranked = logits.argsort(descending=True).tolist()
        rows.append((prompt, WORDS[ranked[0]], WORDS[ranked[-1]]))
    return rows


def test_task_accuracy_per_task_and_per_category(tiny_lm):
    model, tokenizer = float64_lm(tiny_lm, "llama")
    prompts = word_prompts(40, seed=6)
    answered = model_answers(model, tokenizer, prompts)[:4]
    chosen = model_choices(model, tokenizer, prompts[:5])
    assert len(answered) == 4
    rows = [{"task": "echo", "category": "math", "prompt": p, "answer": a} for p, a in answered]
    rows += [{"task": "echo_wrong", "category": "math", "prompt": p, "answer": a + "s"} for p, a in answered]
    rows += [{"task": "pick", "category": "logic", "prompt": p, "choices": [worst, best], "label": 1}
             for p, best, worst in chosen]
    rows += [{"task": "pick_wrong", "category": "closed_book_qa", "prompt": p, "choices": [best, worst], "label": 1}
             for p, best, worst in chosen]
    results = evaluate_tasks(model, tokenizer, rows, batch_size=3)
    assert {name: (s.accuracy, s.n) for name, s in results.tasks.items()} == {
        "echo": (1.0, 4), "echo_wrong": (0.0, 4), "pick": (1.0, 5), "pick_wrong": (0.0, 5)}
    assert results.categories == {"math": 0.5, "logic": 1.0, "closed_book_qa": 0.0}
    assert results.to_dict()["tasks"]["pick"] == {"category": "logic", "accuracy": 1.0, "n": 5}


def test_choice_score_is_conditional_log_likelihood_of_multi_token_choices(tiny_lm):
    model, tokenizer = tiny_lm("gpt2", dtype=torch.float64)
    prompt, choices = "the old king", ["eats a fish", "sings", "walks near the river"]
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731

    def by_hand(choice):
        ids, extra = encode(prompt), encode(" " + choice)
        logp = model(input_ids=torch.tensor([ids + extra])).logits[0].detach().log_softmax(-1)
        return sum(float(logp[len(ids) - 1 + k, t]) for k, t in enumerate(extra))

    best = max(range(3), key=lambda c: by_hand(choices[c]))
    rows = [{"task": "t", "category": "logic", "prompt": prompt, "choices": choices, "label": label} for label in range(3)]
    results = evaluate_tasks(model, tokenizer, rows)
    assert results.tasks["t"].accuracy == pytest.approx(1 / 3)  # exactly the label == best row is right
    one = evaluate_tasks(model, tokenizer, [rows[best]])
    assert one.tasks["t"].accuracy == 1.0


def test_task_files_load_and_bad_rows_name_file_and_line(tmp_path):
    good = {"task": "arithmetic", "category": "math", "prompt": "12 + 35 =", "answer": "47"}
    path = write_jsonl(tmp_path / "tasks.jsonl", [good, {**good, "answer": "1"}])
    assert [row.answer for row in load_tasks(path)] == ["47", "1"]
    out_of_range = {"task": "q", "category": "logic", "prompt": "p", "choices": ["a", "b"], "label": 2}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, out_of_range])
    with pytest.raises(UnmemorizeError, match=r"bad\.jsonl:2: 'label' must be an index"):
        load_tasks(bad)
    with pytest.raises(UnmemorizeError, match="one task belongs to one category"):
        load_tasks([good, {**good, "category": "logic"}])
