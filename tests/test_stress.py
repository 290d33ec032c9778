"""Stress test (position perturbation), nDCG@10, and the ``unmemorize stress`` command.

Oracles: the variant sets enumerated from the paper's 1-indexed formula; a hand-made bigram
"model" whose continuations are computed by hand; a naive decoder (one prompt at a time, no
cache, no padding) per variant; nDCG by explicit loops with math.log2 on hand-made rankings.
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from unmemorize.cli import main
from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate import MemorizationItem, greedy_continuations
from unmemorize.evaluate.coherence import NDCGConfig, ndcg, ndcg_per_position, ndcg_windows, top_k_ids
from unmemorize.evaluate.stress import StressConfig, exact_prefix_length, position_variants, stress_test, variant_count
from unmemorize.jsonio import strict_loads
from unmemorize.tiny import WORDS, make_tokenizer, write_corpus
from naive_decoding import naive_greedy  # tests/oracles/


# --- variants ---------------------------------------------------------------------------------

def paper_variants(n: int, k: int, t: int) -> set[tuple[tuple[int, ...], int]]:
    """The code docstring's sets in 1-indexed form, x_j = 100 + j:
    {x_1..x_{n+i} | i in [0, t], i <= k} U {x_{n-i}..x_n | i in [t, n)}, minus x_1..x_n."""
    x = {j: 100 + j for j in range(1, n + k + 1)}
    left = {(tuple(x[j] for j in range(1, n + i + 1)), i) for i in range(0, t + 1) if i <= k}
    right = {(tuple(x[j] for j in range(n - i, n + 1)), 0) for i in range(t, n)}
    full = tuple(x[j] for j in range(1, n + 1))
    return {(prompt, offset) for prompt, offset in left | right if prompt != full}


@pytest.mark.parametrize("n,k,t", [(6, 5, 2), (64, 48, 20), (13, 12, 20), (5, 2, 3), (4, 4, 0), (3, 7, 2), (21, 3, 20)])
def test_variants_are_the_papers_sets_and_counted_by_its_formula(n, k, t):
    prefix, suffix = [100 + j for j in range(1, n + 1)], [100 + j for j in range(n + 1, n + k + 1)]
    variants = position_variants(prefix, suffix, t)
    assert len(variants) == len({(tuple(p), o) for p, o in variants})  # no duplicates
    assert {(tuple(p), o) for p, o in variants} == paper_variants(n, k, t)
    assert len(variants) == variant_count(n, k, t)


def test_paper_sizes_give_63_variants_and_the_testbed_only_left_extended_ones():
    assert variant_count(64, 48, 20) == 20 + (64 - 20 - 1)  # left i = 1..20, right m = 21..63
    testbed = position_variants(list(range(1, 14)), list(range(14, 26)), 20)  # n = 13 <= t: no right-shifted prompt
    assert sorted(o for _, o in testbed) == list(range(1, 13)) and all(len(p) == 13 + o for p, o in testbed)
    with_original = position_variants([1, 2, 3], [4, 5], 1, exclude_unperturbed=False)
    assert ([1, 2, 3], 0) in with_original and len(with_original) == variant_count(3, 2, 1, exclude_unperturbed=False) == 3


def test_exact_prefix_length():
    assert exact_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert exact_prefix_length([5], [1]) == 0
    assert exact_prefix_length([1, 2, 3], [1, 2]) == 2  # the remaining gold is shorter
    assert exact_prefix_length([], [1]) == 0


# --- the stress test on a hand-made model --------------------------------------------------------

class BigramLM(torch.nn.Module):
    """Next token = (last token + 1) mod V, whatever came before: continuations computable by hand."""

    def __init__(self, vocab: int = 20):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 1)
        self.vocab = vocab

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None):
        return types.SimpleNamespace(logits=10.0 * torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float())


def test_stress_scores_of_a_bigram_model_match_the_hand_computation():
    model = BigramLM()
    items = [MemorizationItem("a", [1, 2, 3, 4, 5, 6], [7, 12, 13, 14, 15]),  # greedy after 6: 7 8 9 ... -> 1 token right
             MemorizationItem("b", [1, 2, 3], [4, 5, 6])]  # recited in full
    # item a, t = 2: left i=1 (ends in 7 -> 8.. vs 12..): 0; i=2 (ends in 12 -> 13 14 15 ... vs 13 14 15): 3;
    #                right m=3,4,5 (all end in 6): 1.  max = 3
    # item b, t = 2: left i=1 (ends in 4 -> 5 6 vs 5 6): 2; i=2: 1; right: none (m = 3..2).  max = 2
    result = stress_test(model, items, pad_id=0, config=StressConfig(t=2))
    assert result.original == [1, 3] and result.stressed == [3, 2] and result.variants == [5, 2]
    summary = result.summary()
    assert summary["original"]["mean"] == 2 and summary["original"]["std"] == 1  # population std: sqrt(((1-2)^2 + (3-2)^2) / 2)
    assert summary["stressed"]["mean"] == 2.5 and summary["stressed"]["std"] == 0.5
    assert summary["original"]["full_match_count"] == 1 and summary["stressed"]["full_match_count"] == 0
    assert summary["delta"] == {"mean": 0.5, "improved_count": 1, "improved_rate": 0.5}
    # t = 1 drops the only variant that recovered item a (i=1 gives 0, right m=2..5 give 1) and adds item b's
    # right-shifted prompt [2, 3] (m = 2), which recites 4 5 6 in full
    assert stress_test(model, items, 0, StressConfig(t=1)).stressed == [1, 3]
    # keeping the unperturbed prompt in the max: item b's own prompt scores 3
    assert stress_test(model, items, 0, StressConfig(t=2, exclude_unperturbed=False)).stressed == [3, 3]



def test_stress_test_matches_naive_decoding_of_every_variant(tiny_lm):
    model, _ = tiny_lm("llama", dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    items = []
    for index, (n, k) in enumerate([(6, 5), (7, 5), (4, 6), (9, 3), (6, 5)]):
        prefix = torch.randint(3, len(WORDS) + 3, (n,), generator=generator).tolist()
        suffix = naive_greedy(model, prefix, k)  # recited in full ...
        if index % 2:  # ... or with one token changed, so that matches of every length occur
            suffix[index % k] = 3 + (suffix[index % k] - 2) % len(WORDS)
        items.append(MemorizationItem(str(index), prefix, suffix))
    t = 3
    result = stress_test(model, items, pad_id=0, config=StressConfig(t=t, batch_size=7))
    for item, original, stressed in zip(items, result.original, result.stressed):
        k = len(item.suffix_ids)
        assert original == exact_prefix_length(naive_greedy(model, item.prefix_ids, k), item.suffix_ids)
        expected = max(exact_prefix_length(naive_greedy(model, list(prompt), k), item.suffix_ids[offset:])
                       for prompt, offset in paper_variants_of(item.prefix_ids, item.suffix_ids, t))
        assert stressed == expected
    assert sorted(set(result.original)) != [0]  # the check covers non-zero matches


def paper_variants_of(prefix, suffix, t):
    n, k = len(prefix), len(suffix)
    left = {(tuple(prefix + suffix[:i]), i) for i in range(0, min(t, k) + 1)}
    right = {(tuple(prefix[n - i - 1:]), 0) for i in range(t, n)}
    return {(p, o) for p, o in left | right if p != tuple(prefix)}


# --- nDCG ---------------------------------------------------------------------------------------

def brute_force_ndcg(edited: list[int], reference: list[int]) -> float:
    """The code's nDCG@K of one position, by loops: graded by the reference rank, discounted by the edited rank."""
    k = len(reference)
    dcg = 0.0
    for r, token in enumerate(edited, start=1):
        for s, ref_token in enumerate(reference, start=1):
            if token == ref_token:
                dcg += (k - s + 1) / math.log2(r + 1)
    ideal = sum((k - r + 1) / math.log2(r + 1) for r in range(1, k + 1))
    return dcg / ideal


def test_ndcg_matches_brute_force_on_hand_made_rankings():
    reference = list(range(10, 20))
    cases = [reference, reference[::-1], list(range(30, 40)), [11, 10] + reference[2:], [19, 30, 31, 10, 32, 33, 34, 35, 36, 37],
             [10, 30, 31, 32, 33, 34, 35, 36, 37, 38]]
    scores = ndcg_per_position(torch.tensor(cases), torch.tensor([reference] * len(cases)))
    for case, score in zip(cases, scores.tolist()):
        assert score == pytest.approx(brute_force_ndcg(case, reference), abs=1e-12)
    assert scores[0] == 1.0 and scores[2] == 0.0
    # K = 2, swapped: (1/log2 2 + 2/log2 3) / (2/log2 2 + 1/log2 3). The paper's printed formula (grade = K - r + 1 by
    # the edited rank) would give 1 here: the code grades by the baseline rank, so a swap costs.
    swapped = ndcg_per_position(torch.tensor([[7, 5]]), torch.tensor([[5, 7]]))
    assert float(swapped) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)), abs=1e-15) and float(swapped) < 1


def test_ndcg_of_a_model_against_itself_is_exactly_one_and_drops_when_perturbed(tmp_path, tiny_lm):
    model, tokenizer = tiny_lm("llama", dtype=torch.float32)
    windows = ndcg_windows(write_corpus(tmp_path / "clean.txt", documents=40), tokenizer, seq_len=16, max_tokens=400)
    config = NDCGConfig(k=10, seq_len=16, max_tokens=400, batch_size=3)
    reference = top_k_ids(model, windows, 10, batch_size=5)
    own = ndcg(model, reference, windows, config)
    assert own.ndcg == 1.0 and own.positions == len(windows) * 15 == reference.shape[0]
    perturbed, _ = tiny_lm("llama", dtype=torch.float32)
    with torch.no_grad():
        perturbed.lm_head.weight.add_(0.05 * torch.randn(perturbed.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    result = ndcg(perturbed, reference, windows, config)
    assert result.ndcg < 0.99
    lists = top_k_ids(perturbed, windows, 10)
    expected = sum(brute_force_ndcg(e, r) for e, r in zip(lists.tolist(), reference.tolist())) / reference.shape[0]
    assert result.ndcg == pytest.approx(expected, abs=1e-12)


def test_ndcg_windows_concatenate_lines_and_drop_the_ragged_tail(tmp_path):
    tokenizer = make_tokenizer()
    lines = ["the cat runs .", "a dog sees the bird", "one king"]
    path = tmp_path / "pile.txt"
    path.write_text("\n".join(lines) + "\n")
    ids = tokenizer.convert_tokens_to_ids(" ".join(lines).split())  # 11 tokens, no separator between lines
    assert ndcg_windows(path, tokenizer, seq_len=4, max_tokens=100) == [ids[0:4], ids[4:8]]  # 3 left over: dropped
    assert ndcg_windows(path, tokenizer, seq_len=3, max_tokens=7) == [ids[0:3], ids[3:6]]  # first 7 tokens only
    with pytest.raises(UnmemorizeError, match="fewer than one window"):
        ndcg_windows(path, tokenizer, seq_len=20, max_tokens=100)


# --- command line ---------------------------------------------------------------------------------

def write_jsonl(path, items):
    path.write_text("".join(json.dumps({"prefix_ids": i.prefix_ids, "suffix_ids": i.suffix_ids}) + "\n" for i in items))
    return path


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory):
    from unmemorize.tiny import build_tiny_lm

    root = tmp_path_factory.mktemp("stress-cli")
    model, tokenizer = build_tiny_lm("llama", seed=0)
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    generator = torch.Generator().manual_seed(5)
    prefixes = [torch.randint(3, len(WORDS) + 3, (6,), generator=generator).tolist() for _ in range(6)]
    own = greedy_continuations(model, prefixes, 5, pad_id=0)  # the model's own continuations: memorized by construction
    items = [MemorizationItem(str(k), p, s) for k, (p, s) in enumerate(zip(prefixes[:4], own[:4]))]
    controls = [MemorizationItem(f"c{k}", p, torch.randint(3, len(WORDS) + 3, (5,), generator=generator).tolist())
                for k, p in enumerate(prefixes[4:])]
    write_jsonl(root / "items.jsonl", items)
    write_jsonl(root / "controls.jsonl", controls)
    write_corpus(root / "clean.txt", documents=40)
    return root


def stress_argv(root, out, *extra):
    return ["stress", "--model", str(root / "model"), "--items", str(root / "items.jsonl"), "--controls", str(root / "controls.jsonl"),
            "--out", str(out), *extra]


def test_stress_command_writes_strict_json_with_every_check(cli_workspace, tmp_path, capsys, monkeypatch):
    import unmemorize.data

    budgets, real = [], unmemorize.data.iter_windows
    monkeypatch.setattr(unmemorize.data, "iter_windows", lambda *a, **k: budgets.append(a[3] if len(a) > 3 else k.get("max_tokens"))
                        or real(*a, **k))
    root, out = cli_workspace, tmp_path / "res" / "results.json"
    argv = stress_argv(root, out, "--set", "again=" + str(root / "items.jsonl"), "--checks", "stress,ndcg,relearn,sample,bf16,quant",
                       "--baseline", str(root / "model"), "--ndcg-data", str(root / "clean.txt"), "--ndcg-seq-len", "16",
                       "--relearn-text", str(root / "clean.txt"), "--relearn-steps", "0,3", "--relearn-seq-len", "16",
                       "--stress-t", "2", "--samples", "3")
    assert main(argv) == 0
    record = strict_loads(out.read_text())
    assert record["checks"] == ["stress", "ndcg", "relearn", "sample", "bf16", "quant"]
    assert set(record["quant"]["by_bits"]) == {"int4", "int8"} and record["quant"]["by_bits"]["int4"]["sets"]["items"]["n"] == record["recitation"]["items"]["n"]
    assert {name: s["strict"] for name, s in record["recitation"].items()} == {"items": 1.0, "controls": 0.0, "again": 1.0}
    assert record["stress"]["items"]["summary"]["original"]["mean"] == 5 and record["stress"]["items"]["config"]["t"] == 2
    assert record["ndcg"]["ndcg"] == 1.0  # the baseline is the model itself
    assert record["relearn"]["steps"] == [0, 3] and record["relearn"]["sets"]["items"][0]["strict"] == 1.0
    assert record["sample"]["controls"]["exact_rate"] == 0.0 and record["sample"]["items"]["samples"] == 3
    assert record["bf16"]["weights"]["changed"] > 0 and record["config"]["relearn"]["steps"] == [0, 3]
    assert budgets == [3 * 8 * 16]  # the relearning text: as many windows as 3 steps of 8 can use, never the whole corpus
    assert "stress items" in capsys.readouterr().out
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # never replaced without --overwrite
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize("extra,message", [
    (["--checks", "stress,bogus"], "choose from"),
    (["--checks", "ndcg"], "needs --baseline"),
    (["--checks", "relearn"], "needs --relearn-items"),
    (["--set", "noequals"], "must be NAME=FILE"),
    (["--set", "items=x.jsonl"], "used twice"),
    (["--stress-t", "-1"], "--stress-t must be"),
    (["--relearn-steps", "-5", "--checks", "relearn", "--relearn-text", "{root}/clean.txt"], "--relearn-steps must be"),
    (["--temperature", "0", "--checks", "sample"], "--temperature must be"),
    (["--set", "missing={root}/nope.jsonl"], "does not exist"),
    (["--out", "{root}/results.txt"], "must be a .json file"),
    (["--checks", "stress", "--relearn-text", "{root}/clean.txt"], "--relearn-text would be ignored: only the relearn check reads it"),
    (["--checks", "stress", "--baseline", "{root}/model"], "--baseline would be ignored: only the ndcg check reads it"),
    (["--checks", "relearn", "--relearn-text", "{root}/clean.txt", "--relearn-seq-len", "4096"], "longer than the model's"),
])
def test_stress_command_bad_inputs_exit_2_with_one_clear_line(cli_workspace, tmp_path, capsys, extra, message):
    out = tmp_path / "results.json"
    argv = stress_argv(cli_workspace, out, *[e.format(root=cli_workspace) for e in extra])
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unmemorize: error: ") and message in lines[0], lines
    assert not out.exists() and not (cli_workspace / "results.txt").exists()


def test_stress_command_bad_item_row_names_file_and_line(cli_workspace, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix_ids": [3, 4], "suffix_ids": [5]}\n{"prefix_ids": [3], "suffix_ids": "x"}\n')
    assert main(["stress", "--model", str(cli_workspace / "model"), "--items", str(bad), "--out", str(tmp_path / "o.json")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err and not (tmp_path / "o.json").exists()


def test_sequences_longer_than_the_models_positions_are_refused_by_every_check(tiny_lm):
    """GPT-2 (128 learned positions) failed with an IndexError, a rotary model scored unseen positions in silence."""
    from unmemorize.errors import UnmemorizeError
    from unmemorize.evaluate.attacks import RelearnConfig, relearn, sampled_extraction
    from unmemorize.evaluate.coherence import top_k_ids
    from unmemorize.evaluate.memorization import MemorizationItem, evaluate_memorization
    from unmemorize.evaluate.perplexity import perplexity

    for family in ("gpt2", "llama"):
        model, _ = tiny_lm(family, dtype=torch.float32)
        long_item = MemorizationItem("long", [5] * 100, [6] * 40)  # 100 + 40 - 1 = 139 positions to recite it
        fits = MemorizationItem("fits", [5] * 100, [6] * 29)  # 128: the control, scored
        assert evaluate_memorization(model, [fits], pad_id=0).strict == 0.0
        checks = {
            "recitation": lambda: evaluate_memorization(model, [fits, long_item], pad_id=0),
            "stress": lambda: stress_test(model, [long_item], pad_id=0, config=StressConfig(t=1)),
            "nDCG": lambda: top_k_ids(model, [[5] * 129]),
            "relearning": lambda: relearn(model, [[5] * 129], RelearnConfig(steps=(1,)), pad_id=0),
            "perplexity": lambda: perplexity(model, [[5] * 129]),
            "extraction": lambda: sampled_extraction(model, [long_item]),
        }
        for name, check in checks.items():
            with pytest.raises(UnmemorizeError, match="more than the model's 128 positions"):
                check()
