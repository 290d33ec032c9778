"""BalancedSubnet: exactly ratio of each chosen matrix removed and nothing else touched, the
straight-through gradient as the formula says, balanced batches, forgetting only when the forget
term is on, and a CLI that writes a loadable folder or one clear error and nothing."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from unmemorize.baselines import BSNConfig, balanced_batches, balanced_subnet, load_token_set, lowest_k_mask
from unmemorize.baselines import bsn as bsn_module
from unmemorize.baselines.sequences import batch_shares, steps_per_epoch
from unmemorize.cli import main
from unmemorize.data import iter_windows
from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate import MemorizationItem, evaluate_memorization
from unmemorize.jsonio import strict_loads
from unmemorize.models import load_model
from unmemorize.targets import resolve_targets
from unmemorize.tiny import build_tiny_lm, save_tiny_lm, write_corpus

VOCAB = 51  # the tiny word-level tokenizer's vocabulary (unmemorize.tiny)


def random_sequences(count: int, length: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=generator).tolist() for _ in range(count)]


# --- the mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
def test_lowest_k_mask_matches_stable_sort_with_ties(k):
    """Oracle: a stable argsort of the magnitudes, first k indices. Integer magnitudes in 0..4 make
    most entries tied, so the tie rule (lowest flat index first) decides most of the mask."""
    magnitudes = torch.randint(0, 5, (10, 10), generator=torch.Generator().manual_seed(k)).float()
    expected = torch.zeros(100, dtype=torch.bool)
    expected[torch.argsort(magnitudes.flatten(), stable=True)[:k]] = True
    mask = lowest_k_mask(magnitudes, k)
    assert int(mask.sum()) == k
    assert torch.equal(mask.flatten(), expected)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_mask_removes_exactly_ratio_of_each_chosen_matrix_and_touches_nothing_else(family):
    model, _ = build_tiny_lm(family, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = resolve_targets(model)
    ratio = 0.137  # ratio * numel is never an integer here: the rounding is tested too
    _, record = balanced_subnet(model, random_sequences(4, 12, 1), random_sequences(10, 12, 2),
                                BSNConfig(ratio=ratio, epochs=1, batch_size=4, progress=False))
    after = model.state_dict()
    assert set(after) == set(before)
    weights = {f"{name}.weight" for name in targets}
    assert weights and all(".mlp." in w for w in weights)
    for key, tensor in before.items():
        if key not in weights:  # attention, embeddings, norms, biases, LM head: bit for bit
            assert torch.equal(after[key], tensor), key
            continue
        assert torch.count_nonzero(tensor) == tensor.numel()  # random init: every zero after is one we introduced
        expected = round(ratio * tensor.numel())
        zeroed = after[key] == 0
        assert int(zeroed.sum()) == expected, key
        assert torch.equal(after[key][~zeroed], tensor[~zeroed])  # the kept weights are unchanged, bit for bit
        stats = record.modules[key[: -len(".weight")]]
        assert stats.removed == stats.zeros_introduced == expected and stats.removed_fraction == expected / tensor.numel()


def test_all_scores_tied_still_remove_exactly_k_the_lowest_indices(monkeypatch):
    """Zero scores stay zero (sign(0) = 0 kills the gradient, weight decay keeps 0): every entry
    is tied, and exactly k = round(ratio * numel) are removed, the first k in flat order."""
    monkeypatch.setattr(bsn_module, "initial_scores", lambda module, name, seed: torch.zeros_like(module.weight, dtype=torch.float32))
    model, _ = build_tiny_lm("gpt2", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    balanced_subnet(model, random_sequences(3, 10, 1), random_sequences(6, 10, 2), BSNConfig(ratio=0.25, batch_size=4, progress=False))
    for name in resolve_targets(model):
        key = f"{name}.weight"
        k = round(0.25 * before[key].numel())
        zeroed = (model.state_dict()[key] == 0).flatten()
        assert torch.equal(torch.nonzero(zeroed).flatten(), torch.arange(k))


def test_straight_through_gradient_is_sign_of_score_times_weight_times_weight_gradient():
    """dL/dS = sign(S) * (dL/dW_eff * W): compared with autograd through an explicit W * M with M a
    constant (the oracle never calls the straight-through function)."""
    torch.manual_seed(0)
    weight, scores, x = torch.randn(5, 7), torch.randn(5, 7), torch.randn(3, 7)
    k = 11
    mask = bsn_module.ScoreMask(scores.clone(), k)
    loss = (x @ mask(weight).T).pow(2).sum()
    loss.backward()
    w_eff = (weight * (~lowest_k_mask(scores.abs(), k)).float()).requires_grad_(True)
    (x @ w_eff.T).pow(2).sum().backward()
    expected = scores.sign() * (w_eff.grad * weight)
    assert torch.allclose(mask.scores.grad, expected, atol=1e-6)
    assert int((mask(weight) == 0).sum()) == k


# --- balanced batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_forget,num_retain,batch_size,epochs", [(1, 50, 2, 2), (3, 100, 32, 3), (40, 100, 5, 2), (7, 7, 9, 4),
                                                                      (200, 20, 16, 1)])
def test_every_balanced_batch_holds_forget_examples_over_a_whole_run(num_forget, num_retain, batch_size, epochs):
    """Inspect the batches balanced_subnet really trains on (its batch_log) over a whole run."""
    model, _ = build_tiny_lm("llama", seed=0, hidden=16, layers=1)
    log = []
    forget, retain = random_sequences(num_forget, 6, 1), random_sequences(num_retain, 6, 2)
    balanced_subnet(model, forget, retain, BSNConfig(ratio=0.1, epochs=epochs, batch_size=batch_size, progress=False), batch_log=log)
    assert len(log) == epochs * math.ceil((num_forget + num_retain) / batch_size)
    forget_k, retain_k = batch_shares(batch_size, num_forget, num_retain)
    assert forget_k >= 1 and forget_k + retain_k <= batch_size
    for forget_ids, retain_ids in log:
        assert len(forget_ids) == forget_k and len(retain_ids) == retain_k
        assert len(set(forget_ids)) == len(forget_ids) and len(set(retain_ids)) == len(retain_ids)
        assert all(0 <= i < num_forget for i in forget_ids) and all(0 <= i < num_retain for i in retain_ids)
    if len(log) * forget_k >= num_forget:
        assert {i for f, _ in log for i in f} == set(range(num_forget))


def test_the_authors_single_shuffled_loader_would_draw_batches_without_forget_examples():
    """Negative control for the test above: one shuffled concatenation (the authors' DataLoader)
    with the same sizes gives batches with no forget example, whose mean forget loss is NaN."""
    rng = random.Random(0)
    labels = [1] * 3 + [0] * 100
    rng.shuffle(labels)
    batches = [labels[i : i + 32] for i in range(0, len(labels), 32)]
    assert any(sum(b) == 0 for b in batches)
    assert all(len(f) >= 1 for f, _ in balanced_batches(3, 100, 32, 1, seed=0))
    assert steps_per_epoch(32, 3, 100) == len(batches)


# --- determinism and safety ---------------------------------------------------------------------


def test_same_seed_same_model_other_seed_other_mask():
    runs = {}
    for seed in (0, 0, 1):
        model, _ = build_tiny_lm("gpt2", seed=0)
        balanced_subnet(model, random_sequences(4, 10, 1), random_sequences(8, 10, 2),
                        BSNConfig(ratio=0.2, epochs=2, batch_size=4, seed=seed, progress=False))
        runs.setdefault(seed, []).append(model.state_dict())
    (first, second), (other,) = runs[0], runs[1]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_the_masks_after_epoch_e_of_a_long_run_are_those_of_an_e_epoch_run():
    """on_epoch: one run of 3 epochs serves the epoch grid (the comparison's BSN sweep). Each snapshot equals the
    final removal mask of a separate run with that many epochs; a run with another seed differs (negative control)."""
    forget, retain = random_sequences(4, 10, 1), random_sequences(12, 10, 2)
    snapshots = {}
    model, _ = build_tiny_lm("gpt2", seed=0)
    reference = copy.deepcopy(model)
    balanced_subnet(model, forget, retain, BSNConfig(ratio=0.2, epochs=3, batch_size=4, lr=1.0, progress=False),
                    on_epoch=lambda epoch, removed: snapshots.__setitem__(epoch, removed))
    assert sorted(snapshots) == [1, 2, 3]
    for epochs in (1, 2, 3):
        short = copy.deepcopy(reference)
        balanced_subnet(short, forget, retain, BSNConfig(ratio=0.2, epochs=epochs, batch_size=4, lr=1.0, progress=False))
        modules = dict(short.named_modules())
        for name, removed in snapshots[epochs].items():
            original = dict(reference.named_modules())[name].weight
            zeroed = (modules[name].weight == 0) & (original != 0)
            assert torch.equal(zeroed, removed & (original != 0)), (epochs, name)
    assert any(not torch.equal(snapshots[1][n], snapshots[3][n]) for n in snapshots[1])  # the masks did move between epochs
    other = copy.deepcopy(reference)
    other_snapshots = {}
    balanced_subnet(other, forget, retain, BSNConfig(ratio=0.2, epochs=1, batch_size=4, lr=1.0, seed=5, progress=False),
                    on_epoch=lambda epoch, removed: other_snapshots.__setitem__(epoch, removed))
    assert any(not torch.equal(other_snapshots[1][n], snapshots[1][n]) for n in snapshots[1])


def test_an_error_during_training_leaves_the_model_exactly_as_it_was(monkeypatch):
    model, _ = build_tiny_lm("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    real, calls = bsn_module.sequence_losses, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bsn_module, "sequence_losses", failing)
    with pytest.raises(KeyboardInterrupt):
        balanced_subnet(model, random_sequences(4, 10, 1), random_sequences(20, 10, 2), BSNConfig(batch_size=4, progress=False))
    assert set(model.state_dict()) == set(before)  # no parametrization is left behind
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("changes,message", [({"ratio": 0.0}, "--ratio"), ({"ratio": 1.0}, "--ratio"), ({"ratio": float("nan")}, "--ratio"),
                                             ({"alpha": -0.1}, "--alpha"), ({"alpha": 1.5}, "--alpha"), ({"batch_size": 1}, "--batch-size"),
                                             ({"epochs": 0}, "--epochs"), ({"lr": 0.0}, "--lr"), ({"momentum": 1.0}, "--momentum")])
def test_bad_settings_are_refused_before_any_work(changes, message):
    model, _ = build_tiny_lm("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnmemorizeError, match=message):
        balanced_subnet(model, random_sequences(2, 6, 1), random_sequences(2, 6, 2), BSNConfig(progress=False, **changes))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_empty_forget_set_is_refused():
    model, _ = build_tiny_lm("llama", seed=0)
    with pytest.raises(UnmemorizeError, match="forget set is empty"):
        balanced_subnet(model, [], random_sequences(2, 6, 2), BSNConfig(progress=False))


# --- it forgets what it is asked to, and only then ----------------------------------------------


def counting_sequence(start: int, length: int = 16) -> list[int]:
    """The 'clean' skill: consecutive ids 3..VOCAB-1, wrapping around."""
    return [3 + (start - 3 + t) % (VOCAB - 3) for t in range(length)]


@pytest.fixture(scope="module")
def memorizer():
    """A tiny Llama (64 wide, 2 blocks) trained (AdamW, 300 steps, ~5 s) on counting sequences
    from every start (the retain skill) and 8 random sequences of 16 tokens, each 4 times as often
    (memorized: greedy 8 -> 8 strict accuracy 1.0)."""
    torch.manual_seed(0)
    model, _ = build_tiny_lm("llama", seed=0, hidden=64, layers=2)
    forget = random_sequences(8, 16, 1)
    retain = [counting_sequence(s) for s in range(3, VOCAB)]
    data = forget * 4 + retain
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(300):
        batch = torch.tensor([data[i] for i in torch.randint(0, len(data), (32,), generator=generator)])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, forget, retain


def strict(model, sequences) -> float:
    return evaluate_memorization(model, [MemorizationItem(str(k), s[:8], s[8:]) for k, s in enumerate(sequences)], pad_id=0).strict


def test_alpha_one_keeps_memorization_and_alpha_half_removes_it(memorizer):
    """Same seed, same initial mask, same batches: only alpha differs. alpha = 1 (retain loss only)
    keeps every memorized sequence; alpha = 0.5 removes most of them while the counting skill stays.
    (lr 0.3 as the K-FAC paper's BSN; at seeds 0, 1, 2 alpha = 0.5 leaves 0, 1 and 1 of 8 and keeps
    >= 46 of 48 counting sequences, alpha = 1 keeps all 8.)"""
    model, forget, retain = memorizer
    assert strict(model, forget) == 1.0 and strict(model, retain) == 1.0
    results = {}
    for alpha in (1.0, 0.5):
        edited, record = balanced_subnet(copy.deepcopy(model), forget, retain,
                                         BSNConfig(ratio=0.1, alpha=alpha, lr=0.3, epochs=40, batch_size=16, progress=False))
        results[alpha] = (strict(edited, forget), strict(edited, retain), record)
    assert results[1.0][0] == 1.0
    assert results[0.5][0] <= 0.25
    assert results[0.5][1] >= 0.9
    # the ascent is what did it: the forget loss rose under alpha = 0.5 and not under alpha = 1
    assert results[0.5][2].history[-1]["forget_ce"] > 10 * results[1.0][2].history[-1]["forget_ce"]


# --- files and the command line -------------------------------------------------------------------


def sha256s(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "inputs"
    save_tiny_lm(root / "llama", "llama", seed=0)
    rows = [{"prefix_ids": s[:6], "suffix_ids": s[6:]} for s in random_sequences(5, 14, 3)]
    (root / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_corpus(root / "retain.txt", documents=40)
    return root


def test_token_sets_read_memorization_rows_whole_and_documents_as_windows(workspace):
    model, tokenizer = build_tiny_lm("llama")
    forget = load_token_set(workspace / "forget.jsonl", tokenizer)
    rows = [json.loads(line) for line in (workspace / "forget.jsonl").read_text().splitlines()]
    assert forget.sequences == [r["prefix_ids"] + r["suffix_ids"] for r in rows]
    retain = load_token_set(workspace / "retain.txt", tokenizer, seq_len=32, max_tokens=500, option="--retain")
    assert retain.sequences == list(iter_windows([workspace / "retain.txt"], tokenizer, 32, 500))
    assert retain.source["fingerprint"] != forget.source["fingerprint"] and len(forget.source["fingerprint"]) == 64


def test_cli_writes_a_loadable_model_and_strict_manifest_identical_to_the_api(workspace, tmp_path, capsys):
    inputs_before = sha256s(workspace)
    out = tmp_path / "bsn"
    argv = ["unlearn", "bsn", "--model", str(workspace / "llama"), "--forget", str(workspace / "forget.jsonl"),
            "--retain", str(workspace / "retain.txt"), "--out", str(out), "--ratio", "0.05", "--alpha", "0.5", "--epochs", "2",
            "--batch-size", "4", "--seq-len", "16", "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    assert sha256s(workspace) == inputs_before
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    # oracle: the Python API on the same inputs and settings gives the same weights, bit for bit
    model, tokenizer = load_model(str(workspace / "llama"))
    forget = load_token_set(workspace / "forget.jsonl", tokenizer)
    retain = load_token_set(workspace / "retain.txt", tokenizer, seq_len=16, option="--retain")
    config = BSNConfig(ratio=0.05, alpha=0.5, epochs=2, batch_size=4, seq_len=16, seed=3, progress=False)
    expected, _ = balanced_subnet(model, forget, retain, config)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in expected.state_dict().items())
    manifest = strict_loads((out / "unmemorize_edit.json").read_text())
    assert manifest["method"] == "bsn" and manifest["seed"] == 3 and manifest["config"]["ratio"] == 0.05
    assert set(manifest["modules"]) == set(resolve_targets(model))
    for stats in manifest["modules"].values():
        assert stats["removed"] == round(0.05 * stats["numel"]) and stats["zeros_introduced"] == stats["removed"]
    assert manifest["data"]["forget"]["format"] == "memorization rows" and manifest["data"]["forget"]["sequences"] == 5
    assert manifest["data"]["retain"]["format"] == "documents" and len(manifest["data"]["retain"]["fingerprint"]) == 64
    assert manifest["wall_seconds"] > 0 and manifest["steps"] == len(manifest["history"]) > 0
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("missing forget", "--forget"),
    ("ratio zero", "--ratio must be in (0, 1)"),
    ("ratio above one", "--ratio must be in (0, 1)"),
    ("alpha negative", "--alpha must be in [0, 1]"),
    ("alpha above one", "--alpha must be in [0, 1]"),
    ("empty forget file", "holds no"),
    ("blank forget text", "the set is empty"),
    ("out exists", "already exists"),
    ("forget is retain", "every forget sequence is also a retain sequence"),
    ("ratio rounds to zero", "removes no weight at all: round(ratio x 2048) = 0"),
])
def test_cli_bad_input_gives_one_clear_error_and_no_output(workspace, tmp_path, capsys, case, message):
    out = tmp_path / "bsn"
    forget, extra = workspace / "forget.jsonl", []
    if case == "missing forget":
        forget = workspace / "nope.jsonl"
    if case == "empty forget file":
        forget = tmp_path / "empty.jsonl"
        forget.write_text("")
    if case == "blank forget text":
        forget = tmp_path / "blank.txt"
        forget.write_text("\n \n")
    retain = workspace / "retain.txt"
    if case == "forget is retain":
        forget = retain
    extra = {"ratio rounds to zero": ["--ratio", "0.0002"], "ratio zero": ["--ratio", "0"], "ratio above one": ["--ratio", "1.5"], "alpha negative": ["--alpha", "-0.1"],
             "alpha above one": ["--alpha", "2"]}.get(case, [])
    if case == "out exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    before = sha256s(workspace)
    argv = ["unlearn", "bsn", "--model", str(workspace / "llama"), "--forget", str(forget), "--retain", str(retain),
            "--out", str(out), "--batch-size", "4", "--no-progress", *extra]
    assert main(argv) == 2  # the CLI's status for bad input (unmemorize.errors)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unmemorize: error: ") and message in lines[0], lines
    if case == "out exists":
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    else:
        assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".bsn.")]  # no temporary folders or locks
    assert sha256s(workspace) == before


def test_the_smallest_ratio_a_refusal_suggests_removes_a_weight_and_a_tied_head_is_refused():
    import re

    model, _ = build_tiny_lm("llama", seed=0)
    forget, retain = random_sequences(4, 10, 1), random_sequences(8, 10, 2)
    with pytest.raises(UnmemorizeError, match="removes no weight at all") as refused:
        balanced_subnet(model, forget, retain, BSNConfig(ratio=1e-5, progress=False))
    suggested = float(re.search(r"--ratio >= ([0-9.e-]+)", str(refused.value)).group(1))
    _, record = balanced_subnet(model, forget, retain, BSNConfig(ratio=suggested, epochs=1, batch_size=4, progress=False))
    assert max(stats.removed for stats in record.modules.values()) == 1
    tied, _ = build_tiny_lm("gpt2", seed=0)
    with pytest.raises(UnmemorizeError, match="lm_head.weight is tied to transformer.wte.weight"):
        balanced_subnet(tied, forget, retain, BSNConfig(progress=False), targets=["lm_head"])
