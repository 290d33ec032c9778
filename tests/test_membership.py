"""Membership inference scores: token statistics, loss / zlib / Min-K% / Min-K%++, exact AUC, PrivLeak.

Oracles: every statistic and score recomputed by hand for single sequences (an unpadded forward
pass, then Python loops over positions and over the vocabulary with math.log / math.exp on floats,
and the K of Min-K% by integer division); batch size, padding and input order varied; the AUC
against scikit-learn's ``roc_auc_score`` and against a brute-force count of pairs in exact
fractions; a hand-made model whose next-token distribution is a point mass (sigma_t = 0, and
-inf logits). Negative control: a tiny Llama briefly trained (20 AdamW steps) on 8 random sequences separates them
from never-trained ones by loss (AUC near 1), while the same model before training, and the
trained model on two sets of never-trained sequences, do not.

The tiny Llamas are initialized with standard deviation 0.5 (not the default 0.02, whose
next-token distributions are nearly uniform, sigma_t near 0): their distributions are peaked, so
mu_t, sigma_t and the Min-K%++ token scores are of order one.
"""

from __future__ import annotations

import math
import random
import zlib
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import LlamaConfig, LlamaForCausalLM

from unmemorize.errors import UnmemorizeError
from unmemorize.evaluate.membership import (SIGMA_EPSILON, MembershipScores, auc_table, lowest_k_count, membership_scores,
                                            privacy_leak, roc_auc, token_log_probs)

VOCAB = 50


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=32, max_position_embeddings=64, initializer_range=0.5)
    return LlamaForCausalLM(config).to(dtype).eval()


def random_sequences(lengths: list[int], seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def text_of(sequence: list[int]) -> str:
    return " ".join(f"w{i}" for i in sequence)


LENGTHS = [2, 5, 11, 16, 7, 6]  # N = 1, 4, 10, 15, 6, 5 positions: K(0.2) = 1, 1, 2, 3, 1, 1; K(0.5) = 1, 2, 5, 7, 3, 2
SEQUENCES = random_sequences(LENGTHS, seed=11)
TEXTS = [text_of(s) for s in SEQUENCES]


@pytest.fixture(scope="module")
def model32():
    return tiny_llama(torch.float32)


@pytest.fixture(scope="module")
def model64():
    return tiny_llama(torch.float64)


# ---------------------------------------------------------------------------------------------- the hand oracle
def by_hand(model, sequence: list[int], text: str, k_percent: int) -> dict:
    """Everything for one sequence: an unpadded forward pass, then loops over positions and the vocabulary."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sequence])).logits[0].tolist()  # (n, V) as Python floats
    log_prob, mean, std, token_scores = [], [], [], []
    for t in range(1, len(sequence)):
        row = logits[t - 1]
        top = max(row)
        log_normalizer = top + math.log(sum(math.exp(v - top) for v in row))
        log_p = [v - log_normalizer for v in row]
        mu = sum(math.exp(lp) * lp for lp in log_p)
        second = sum(math.exp(lp) * lp * lp for lp in log_p)
        sigma = math.sqrt(max(0.0, second - mu * mu))
        log_prob.append(log_p[sequence[t]])
        mean.append(mu)
        std.append(sigma)
        token_scores.append((log_p[sequence[t]] - mu) / max(sigma, SIGMA_EPSILON))
    n = len(log_prob)
    count = max(1, n * k_percent // 100)  # floor(k N) in integers
    loss = -sum(log_prob) / n
    return {"log_prob": log_prob, "mean": mean, "std": std, "loss": loss,
            "zlib": loss / len(zlib.compress(text.encode("utf-8"))),
            "min_k": sum(sorted(log_prob)[:count]) / count,
            "min_k_plus_plus": sum(sorted(token_scores)[:count]) / count, "count": count}


def assert_close(actual, expected, tolerance: float) -> None:
    actual, expected = [float(v) for v in actual], [float(v) for v in expected]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert abs(a - e) <= tolerance * max(1.0, abs(e)), (actual, expected)


def test_the_statistics_are_the_hand_computed_ones(model32):
    statistics = token_log_probs(model32, SEQUENCES, batch_size=4)  # batched: lengths 2..16 share padded batches
    for sequence, text, stats in zip(SEQUENCES, TEXTS, statistics):
        expected = by_hand(model32, sequence, text, 20)
        assert stats.log_prob.shape == stats.mean.shape == stats.std.shape == (len(sequence) - 1,)
        assert stats.log_prob.dtype == torch.float32
        assert_close(stats.log_prob, expected["log_prob"], 1e-5)
        assert_close(stats.mean, expected["mean"], 1e-5)
        assert_close(stats.std, expected["std"], 1e-5)
    assert min(min(s.std.tolist()) for s in statistics) > 0.1  # peaked, not uniform: the oracle tests something


@pytest.mark.parametrize("k_percent", [20, 50, 100])
def test_the_scores_are_the_hand_computed_ones(model32, k_percent):
    scores = membership_scores(model32, SEQUENCES, TEXTS, k=k_percent / 100, batch_size=4)
    expected = [by_hand(model32, s, t, k_percent) for s, t in zip(SEQUENCES, TEXTS)]
    for name in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert_close(getattr(scores, name), [e[name] for e in expected], 1e-5)
    assert scores.positions == [n - 1 for n in LENGTHS]
    assert scores.zlib_bytes == [len(zlib.compress(t.encode("utf-8"))) for t in TEXTS]
    assert len(set(scores.zlib_bytes)) > 1  # the texts' zlib entropies differ: the division is tested
    if k_percent == 20:
        assert [e["count"] for e in expected] == [1, 1, 2, 3, 1, 1]
    if k_percent == 100:  # Min-K% over every token is minus the loss
        assert_close(scores.min_k, [-v for v in scores.loss], 1e-12)


def test_scores_are_oriented_higher_means_member(model32):
    scores = membership_scores(model32, SEQUENCES, TEXTS)
    oriented = scores.scores()
    assert set(oriented) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    assert oriented["loss"] == [-v for v in scores.loss] and oriented["zlib"] == [-v for v in scores.zlib]
    assert oriented["min_k"] == scores.min_k and oriented["min_k_plus_plus"] == scores.min_k_plus_plus
    assert scores.to_dict()["k"] == 0.2


@pytest.mark.parametrize("k, positions, count", [(0.2, 1, 1), (0.2, 4, 1), (0.2, 5, 1), (0.2, 10, 2), (0.2, 15, 3),
                                                 (0.6, 5, 3), (0.29, 100, 29), (0.4, 9, 3), (1.0, 7, 7), (0.01, 3, 1)])
def test_k_rounds_down_but_keeps_one_token(k, positions, count):
    assert lowest_k_count(k, positions) == count


# ---------------------------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_results_do_not_depend_on_batch_size_padding_or_order(model32, model64, dtype, tolerance):
    model = model64 if dtype == torch.float64 else model32
    alone = [token_log_probs(model, [s])[0] for s in SEQUENCES]  # no padding at all
    long_partner = random_sequences([40], seed=5)[0]
    for batch_size in (1, 2, 3, len(SEQUENCES)):
        batched = token_log_probs(model, SEQUENCES, batch_size=batch_size)
        for a, b in zip(alone, batched):
            for field in ("log_prob", "mean", "std"):
                assert_close(getattr(b, field), getattr(a, field), tolerance)
    for sequence, a in zip(SEQUENCES, alone):  # padded to 40 tokens next to a long sequence
        padded = token_log_probs(model, [long_partner, sequence], batch_size=2)[1]
        for field in ("log_prob", "mean", "std"):
            assert_close(getattr(padded, field), getattr(a, field), tolerance)
    permutation = [3, 0, 5, 1, 4, 2]
    shuffled = token_log_probs(model, [SEQUENCES[i] for i in permutation], batch_size=4)
    for position, i in enumerate(permutation):
        assert_close(shuffled[position].log_prob, alone[i].log_prob, tolerance)


def test_the_model_keeps_its_mode_and_no_gradient_is_recorded(model32):
    model32.train()
    try:
        statistics = token_log_probs(model32, SEQUENCES[:2])
        assert model32.training and not statistics[0].log_prob.requires_grad
    finally:
        model32.eval()
    token_log_probs(model32, SEQUENCES[:2])
    assert not model32.training


def test_low_precision_logits_are_scored_in_float32():
    model = tiny_llama(torch.bfloat16)
    statistics = token_log_probs(model, SEQUENCES[:3])
    assert all(s.log_prob.dtype == s.mean.dtype == s.std.dtype == torch.float32 for s in statistics)


class FixedLogits(torch.nn.Module):
    """A hand-made LM: the logits after every token are one fixed row."""

    def __init__(self, row: list[float]):
        super().__init__()
        self.embedding = torch.nn.Embedding(len(row), 1)
        self.row = torch.tensor(row, dtype=torch.float32)

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1).clone())


def test_a_point_mass_has_sigma_zero_and_the_epsilon_guard():
    for row in ([0.0, -1e4, -1e4, -1e4], [0.0, -math.inf, -math.inf, -math.inf]):  # p = (1, 0, 0, 0)
        model = FixedLogits(row)
        stats = token_log_probs(model, [[1, 0, 0]])[0]
        assert stats.mean.tolist() == [0.0, 0.0] and stats.std.tolist() == [0.0, 0.0]  # 0 log 0 = 0, not NaN
        assert stats.log_prob.tolist() == [0.0, 0.0]
        assert membership_scores(model, [[1, 0, 0]], ["x"], k=1.0).min_k_plus_plus == [0.0]  # 0 / epsilon
    scores = membership_scores(FixedLogits([0.0, -1e4, -1e4, -1e4]), [[0, 2]], ["x"])  # a token of probability 0
    assert scores.min_k_plus_plus == [pytest.approx(-1e4 / SIGMA_EPSILON)]


def test_nan_logits_are_an_error():
    with pytest.raises(UnmemorizeError, match="NaN logits on sequence 0"):
        token_log_probs(FixedLogits([0.0, math.nan, 1.0]), [[0, 1]])


# ---------------------------------------------------------------------------------------------- AUC
def auc_by_pairs(members: list[float], nonmembers: list[float]) -> Fraction:
    wins = sum(Fraction(1) if a > b else Fraction(1, 2) if a == b else Fraction(0) for a in members for b in nonmembers)
    return wins / (len(members) * len(nonmembers))


@pytest.mark.parametrize("seed", range(6))
def test_auc_is_sklearns_and_the_exact_pair_count(seed):
    rng = random.Random(seed)
    m, n = rng.randint(1, 40), rng.randint(1, 60)
    if seed % 2:  # heavy ties: 5 distinct values
        members = [rng.randint(0, 4) + 0.5 for _ in range(m)]
        nonmembers = [rng.randint(0, 3) for _ in range(n)]
    else:
        members = [round(rng.gauss(0.3, 1), 1) for _ in range(m)]
        nonmembers = [round(rng.gauss(0, 1), 1) for _ in range(n)]
    auc = roc_auc(members, nonmembers)
    assert auc == float(auc_by_pairs(members, nonmembers))
    assert auc == pytest.approx(roc_auc_score([1] * m + [0] * n, members + nonmembers), abs=1e-12)


def test_auc_edge_cases():
    assert roc_auc([3, 4, 5], [0.5, 1, 2, 2.5]) == 1.0
    assert roc_auc([0.5, 1, 2, 2.5], [3, 4, 5]) == 0.0
    assert roc_auc([7, 7], [7, 7, 7]) == 0.5
    assert roc_auc([1], [1]) == 0.5
    assert roc_auc([1, 2], [2, 0]) == 0.625  # 1 > 0, 2 > 0, 2 = 2: (1 + 1 + 0.5) / 4


def test_privacy_leak_is_muses_relative_auc_difference():
    assert privacy_leak(0.25, 0.5) == -50.0
    assert privacy_leak(0.4772, 0.4772) == 0.0
    assert privacy_leak(0.75, 0.5) == 50.0
    # MUSE's orientation: the holdout set as members, the forget set as non-members; a model still holding the
    # forget set (lower loss there) gives AUC 0 and PrivLeak -100 (under-unlearning)
    forget, holdout = [-1.0, -1.5, -0.5], [-3.0, -4.0, -3.5]  # oriented loss scores: forget looks like members
    assert privacy_leak(roc_auc(holdout, forget), 0.4772) == -100.0


def test_auc_table_is_the_auc_of_each_oriented_score():
    def scores(loss, min_k):
        return MembershipScores(loss=loss, zlib=[v / 10 for v in loss], min_k=min_k, min_k_plus_plus=[-v for v in loss],
                                k=0.2, positions=[3] * len(loss), zlib_bytes=[10] * len(loss))

    members, nonmembers = scores([1.0, 2.0], [-1.0, -5.0]), scores([3.0, 4.0, 2.0], [-2.0, -3.0, -4.0])
    table = auc_table(members, nonmembers)
    by_loss = float(auc_by_pairs([-1, -2], [-3, -4, -2]))  # members' -loss against non-members'
    assert table == {"loss": by_loss, "zlib": by_loss, "min_k": float(auc_by_pairs([-1, -5], [-2, -3, -4])), "min_k_plus_plus": by_loss}
    assert table["loss"] == (1 + 1 + 1 + 1 + 1 + 0.5) / 6  # lower loss -> member


# ---------------------------------------------------------------------------------------------- negative control
@pytest.fixture(scope="module")
def trained():
    """(the model before training, a copy after 20 full-batch AdamW steps on 8 random sequences, those sequences)."""
    members = random_sequences([16] * 8, seed=21)
    model = tiny_llama(torch.float32, seed=1)
    before = tiny_llama(torch.float32, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batch = torch.tensor(members)
    for _ in range(20):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, model.eval(), members


def scored(model, sequences):
    return membership_scores(model, sequences, [text_of(s) for s in sequences])


def test_training_is_detected_and_never_trained_sets_are_not_told_apart(trained):
    before, after, members = trained
    nonmembers = random_sequences([16] * 8, seed=22)
    control_a, control_b = random_sequences([16] * 32, seed=23), random_sequences([16] * 32, seed=24)

    drop = sum(scored(before, members).loss) / 8 - sum(scored(after, members).loss) / 8
    assert drop > 1.0  # the training clearly lowered the members' loss

    table = auc_table(scored(after, members), scored(after, nonmembers))
    assert min(table.values()) >= 0.95, table  # 1.0 for all four scores on this seed
    # the negative controls: the same split before training, and two never-trained sets after it
    assert 0.1 < auc_table(scored(before, members), scored(before, nonmembers))["loss"] < 0.9
    assert abs(auc_table(scored(after, control_a), scored(after, control_b))["loss"] - 0.5) < 0.25


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_one_clear_message(model32):
    with pytest.raises(UnmemorizeError, match="membership set is empty"):
        token_log_probs(model32, [])
    with pytest.raises(UnmemorizeError, match="sequence 1 has 1 token"):
        token_log_probs(model32, [[1, 2, 3], [4]])
    with pytest.raises(UnmemorizeError, match="sequence 0 has 0 token"):
        membership_scores(model32, [[]], ["x"])
    with pytest.raises(UnmemorizeError, match="outside the model's vocabulary"):
        token_log_probs(model32, [[1, VOCAB]])
    with pytest.raises(UnmemorizeError, match="batch-size"):
        token_log_probs(model32, [[1, 2]], batch_size=0)
    with pytest.raises(UnmemorizeError, match="2 sequences but 1 texts"):
        membership_scores(model32, [[1, 2], [3, 4]], ["a"])
    with pytest.raises(UnmemorizeError, match="text 0 is a list"):
        membership_scores(model32, [[1, 2]], [[1, 2]])
    for k in (0, 1.5, -0.2, math.nan):
        with pytest.raises(UnmemorizeError, match=r"must be in \(0, 1\]"):
            membership_scores(model32, [[1, 2]], ["a"], k=k)
    with pytest.raises(UnmemorizeError, match="no member scores"):
        roc_auc([], [1.0])
    with pytest.raises(UnmemorizeError, match="no non-member scores"):
        roc_auc([1.0], [])
    with pytest.raises(UnmemorizeError, match="member score 1 is nan"):
        roc_auc([1.0, math.nan], [0.0])
    with pytest.raises(UnmemorizeError, match="non-member score 0 is inf"):
        roc_auc([1.0], [math.inf])
    with pytest.raises(UnmemorizeError, match="divides by the retrained"):
        privacy_leak(0.5, 0.0)
    with pytest.raises(UnmemorizeError, match=r"auc must be an AUC in \[0, 1\]"):
        privacy_leak(1.2, 0.5)
    scores = membership_scores(model32, [[1, 2, 3]], ["a"])
    other_k = membership_scores(model32, [[1, 2, 3]], ["a"], k=0.4)
    with pytest.raises(UnmemorizeError, match="k = 0.2 and non-members with k = 0.4"):
        auc_table(scores, other_k)


def test_bootstrap_auc_of_a_resample_equals_roc_auc_of_the_resampled_lists():
    """The vectorised resample AUC (multiplicity counts against the pair matrix) equals roc_auc of the explicitly
    resampled score lists; the interval holds the AUC, is reproducible from its seed and narrows with more data."""
    import numpy as np

    from unmemorize.evaluate.membership import auc_interval, pair_matrix, resampled_aucs

    rng = random.Random(3)
    members = [rng.choice([0.1, 0.5, 0.9, rng.random()]) for _ in range(9)]
    nonmembers = [rng.choice([0.1, 0.5, rng.random()]) for _ in range(14)]
    pairs = pair_matrix(members, nonmembers)
    for trial in range(5):
        picked_m = [rng.randrange(9) for _ in range(9)]
        picked_n = [rng.randrange(14) for _ in range(14)]
        counts_m = np.bincount(picked_m, minlength=9)[None, :].astype(float)
        counts_n = np.bincount(picked_n, minlength=14)[None, :].astype(float)
        expected = roc_auc([members[i] for i in picked_m], [nonmembers[j] for j in picked_n])
        assert resampled_aucs(pairs, counts_m, counts_n)[0] == pytest.approx(expected, abs=1e-12)
    low, high = auc_interval(members, nonmembers, seed=1)
    assert low <= roc_auc(members, nonmembers) <= high and (low, high) == auc_interval(members, nonmembers, seed=1)
    wide = auc_interval([0.6, 0.4, 0.7], [0.5, 0.3, 0.2])
    narrow = auc_interval([0.6, 0.4, 0.7] * 30, [0.5, 0.3, 0.2] * 30)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_precomputed_statistics_give_the_same_scores():
    """Scores from token statistics computed once equal the scores of a fresh forward pass, at every k."""
    from unmemorize.evaluate.membership import membership_scores, token_log_probs

    model = tiny_llama()
    sequences = [[1, 5, 9, 3, 7], [2, 4, 6, 8, 10, 12, 14], [3, 3]]
    texts = ["a b c", "d e f g", "h"]
    statistics = token_log_probs(model, sequences)
    for k in (0.2, 0.4):
        assert membership_scores(model, sequences, texts, k=k, statistics=statistics).scores() == \
            membership_scores(model, sequences, texts, k=k).scores()
    with pytest.raises(UnmemorizeError, match="token statistics"):
        membership_scores(model, sequences, texts, statistics=statistics[:2])
