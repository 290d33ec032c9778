"""Membership inference: does a model still treat some texts as training data?

Used to compare a model, edited versions of it, and a model retrained without some texts, as in
the MUSE benchmark (Shi et al. 2024). Every quantity comes from teacher-forced next-token
distributions; nothing is sampled.

**Token statistics** (``token_log_probs``). For a sequence x_0..x_{n-1} (n >= 2) and each
position t = 1..n-1, with p(.) = p(. | x_<t) = softmax(logits_{t-1}) over the vocabulary V:

    log p(x_t | x_<t)                                          the token's log probability
    mu_t    = sum_z p(z) log p(z)                              E[log p(z)] under z ~ p  (minus the entropy)
    sigma_t = sqrt(max(0, sum_z p(z) (log p(z))^2 - mu_t^2))   the standard deviation of log p(z), z ~ p

with 0 * log 0 = 0 (a token of probability 0 adds nothing to either sum). sigma_t is computed in
the centered form sqrt(sum_z p(z) (log p(z) - mu_t)^2), equal to the line above in exact
arithmetic and never negative in floating point (the raw second moment minus mu_t^2 cancels
catastrophically when p is nearly a point mass). Sequences are sorted by length, batched with
right padding and an attention mask (padding sits after every real token, so no real position
attends to it and no real logit changes), scored under ``torch.no_grad()`` in the model's current mode (the caller
sets eval), and the statistics computed from the logits in at least float32 (bfloat16 and float16
logits are promoted to float32, float64 logits stay float64), one sequence at a time so that only
one (n-1, V) copy is made. Results do not depend on the batch size or on the padding.

**Scores per sequence** (``membership_scores``), over its N = n - 1 positions:

    loss            = -(1/N) sum_t log p(x_t | x_<t)                          mean NLL, nats per token
    zlib            = loss / len(zlib.compress(text.encode("utf-8")))        Carlini et al. 2021
    min_k           = mean of the K smallest log p(x_t | x_<t)               Min-K% Prob, Shi et al. 2024
    min_k_plus_plus = mean of the K smallest s_t,                            Min-K%++, Zhang et al. 2024
                      s_t = (log p(x_t | x_<t) - mu_t) / max(sigma_t, SIGMA_EPSILON)
    K               = max(1, floor(k * N)),  k = 0.2 by default

``zlib`` uses zlib's default level, as MUSE's code does; ``text`` is the text the
ids encode (the caller's, so this module needs no tokenizer). K rounds *down*, as MUSE's Min-K% code
(``int(len(all_prob) * ratio)`` in ``metrics/privleak.py``) and the usual Min-K%++ code do, but never
below one token (those average an empty list, NaN, when k * N < 1); the floor is taken of
k * N + 1e-9 so that a product that binary rounding leaves just under an integer (0.29 * 100 =
28.999999999999996) counts as that integer. SIGMA_EPSILON = 1e-6 leaves every sigma_t >= 1e-6
untouched; below it (a point mass, sigma_t = 0, where the reference divides 0 by 0) the score is
the centered log probability divided by 1e-6, which is 0 for a token of the point mass.

**Orientation.** A *membership score* is oriented so that HIGHER means MORE LIKELY A MEMBER
(training data): ``MembershipScores.scores()`` returns -loss, -zlib, min_k and min_k_plus_plus,
while the fields hold the raw values above (a member has a low loss and high token probabilities).

**AUC** (``roc_auc``): the Mann-Whitney statistic of member scores a_1..a_m against non-member
scores b_1..b_n,

    AUC = (1 / (m n)) sum_i sum_j ([a_i > b_j] + 0.5 [a_i = b_j])
        = (R_a - m (m + 1) / 2) / (m n),

R_a the sum of the members' ranks in the pooled, sorted scores, ties given their mean rank
(midranks). It is the area under the ROC curve of the rule "member if score > threshold" (what
``sklearn.metrics.roc_auc_score`` returns), computed exactly: ranks are half-integers, so R_a and
the numerator are exact in floating point up to 2^52 scores, and the one division is rounded once.

**PrivLeak** (``privacy_leak``), MUSE's privacy-leakage metric:

    PrivLeak = (AUC - AUC_retrained) / AUC_retrained * 100

as in MUSE's code, github.com/swj0419/muse_bench (commit fcd6651), ``eval.py``:
``out['privleak'] = (auc[privleak_auc_key] - AUC_RETRAIN[privleak_auc_key]) / AUC_RETRAIN[privleak_auc_key] * 100``
with ``privleak_auc_key = 'forget_holdout_Min-40%'`` (Min-K% with k = 0.4) and the retrained
model's AUCs stored in ``constants.py`` (``AUC_RETRAIN``; News: 0.4772, Books: 0.5393 for that key).
Mind the orientation: MUSE's ``metrics/privleak.py`` builds key ``f"{split0}_{split1}_..."`` with
split0 (here the *forget* set) labelled 0, "non-member", and split1 (the *holdout* set) labelled 1,
"member", scored by -value (higher = member). So MUSE's AUC is ``roc_auc(holdout, forget)`` in this
module's terms, i.e. 1 - ``roc_auc(forget, holdout)``: a model that still holds the forget set
gives AUC near 0 and PrivLeak near -100 (under-unlearning; MUSE reports about -99.8 for its
un-unlearned News target model), one that pushed the forget set below held-out text gives a
positive PrivLeak (over-unlearning), and retraining gives 0. To reproduce MUSE's numbers pass
both AUCs in that orientation; AUCs with the forget set as members give the opposite sign and a
different denominator.
"""

from __future__ import annotations

import math
import zlib as _zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..data import pad_batch
from ..errors import UnmemorizeError
from .generate import check_token_ids, model_device

SIGMA_EPSILON = 1e-6  # floor of sigma_t in the Min-K%++ token score (see module doc)
SCORE_NAMES = ("loss", "zlib", "min_k", "min_k_plus_plus")


@dataclass(frozen=True)
class TokenStatistics:
    """Per-position statistics of one sequence of n tokens, for t = 1..n-1 (each a CPU tensor of n - 1 values)."""

    log_prob: torch.Tensor  # log p(x_t | x_<t)
    mean: torch.Tensor  # mu_t = sum_z p(z) log p(z)
    std: torch.Tensor  # sigma_t = standard deviation of log p(z) under z ~ p(. | x_<t)


def _check_sequences(model, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    sequences = [list(s) for s in sequences]
    if not sequences:
        raise UnmemorizeError("no sequences to score: the membership set is empty")
    for k, sequence in enumerate(sequences):
        if len(sequence) < 2:
            raise UnmemorizeError(f"sequence {k} has {len(sequence)} token(s); membership scores need at least 2 "
                                  "(one prediction)")
    check_token_ids(model, sequences, what="sequence")
    return sequences


def _statistics(logits: torch.Tensor, targets: torch.Tensor) -> TokenStatistics:
    """Statistics from (N, V) logits predicting the (N,) ``targets``; see module doc."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_p = torch.log_softmax(logits, dim=-1)  # (N, V)
    p = log_p.exp()
    present = p > 0  # 0 * log 0 = 0: a -inf log probability would otherwise give 0 * inf = NaN
    mean = torch.where(present, p * log_p, 0.0).sum(-1)  # (N,)
    centered = torch.where(present, log_p - mean[:, None], 0.0)
    std = (p * centered.square()).sum(-1).clamp_min(0.0).sqrt()
    log_prob = log_p.gather(-1, targets[:, None]).squeeze(-1)
    return TokenStatistics(log_prob=log_prob.cpu(), mean=mean.cpu(), std=std.cpu())


def token_log_probs(model, sequences: list[list[int]], batch_size: int = 32) -> list[TokenStatistics]:
    """log p(x_t | x_<t), mu_t and sigma_t for t = 1..n-1 of each sequence (n >= 2), in the order given; see module doc."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UnmemorizeError(f"--batch-size must be at least 1, got {batch_size!r}")
    sequences = _check_sequences(model, sequences)
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))  # less padding per batch
    results: list[TokenStatistics | None] = [None] * len(sequences)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = pad_batch([sequences[k] for k in chunk])
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            for row, k in enumerate(chunk):
                n = len(sequences[k])
                if logits[row, :n - 1].isnan().any():
                    raise UnmemorizeError(f"the model produced NaN logits on sequence {k}; are its weights finite?")
                results[k] = _statistics(logits[row, :n - 1], ids[row, 1:n])
    return results  # type: ignore[return-value]


def zlib_entropy(text: str) -> int:
    """Bytes of zlib's default compression of ``text`` in UTF-8 (Carlini et al. 2021's zlib entropy)."""
    return len(_zlib.compress(text.encode("utf-8")))


def lowest_k_count(k: float, positions: int) -> int:
    """K = max(1, floor(k * N)): how many of N token scores Min-K% and Min-K%++ average (see module doc)."""
    return max(1, math.floor(k * positions + 1e-9))


def _check_k(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k <= 1):
        raise UnmemorizeError(f"k (the fraction of lowest-scoring tokens for Min-K%) must be in (0, 1], got {k!r}")
    return float(k)


@dataclass
class MembershipScores:
    """Raw per-sequence scores (see module doc); ``scores()`` gives them oriented, higher = more likely a member."""

    loss: list[float]  # mean NLL over positions 1..n-1
    zlib: list[float]  # loss / zlib entropy of the text
    min_k: list[float]  # mean of the K lowest token log probabilities
    min_k_plus_plus: list[float]  # mean of the K lowest Min-K%++ token scores
    k: float  # fraction of positions averaged by min_k and min_k_plus_plus
    positions: list[int]  # N = n - 1 per sequence
    zlib_bytes: list[int]  # zlib entropy per text

    def scores(self) -> dict[str, list[float]]:
        """{name: membership scores}, higher = more likely a member: -loss, -zlib, min_k, min_k_plus_plus."""
        return {"loss": [-v for v in self.loss], "zlib": [-v for v in self.zlib],
                "min_k": list(self.min_k), "min_k_plus_plus": list(self.min_k_plus_plus)}

    def to_dict(self) -> dict:
        return asdict(self)


def membership_scores(model, sequences: list[list[int]], texts: list[str], k: float = 0.2,
                      batch_size: int = 32, statistics: list[TokenStatistics] | None = None) -> MembershipScores:
    """Loss, zlib, Min-K% and Min-K%++ of each sequence; ``texts[i]`` is the text ``sequences[i]`` encodes.
    ``statistics``: ``token_log_probs(model, sequences)`` computed before (scores at several k share one forward pass)."""
    k = _check_k(k)
    texts = list(texts)
    if len(texts) != len(sequences):
        raise UnmemorizeError(f"{len(sequences)} sequences but {len(texts)} texts: the zlib score needs the text of "
                              "each sequence")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UnmemorizeError(f"text {i} is a {type(text).__name__}, not a str")
    if statistics is None:
        statistics = token_log_probs(model, sequences, batch_size)
    elif len(statistics) != len(sequences):
        raise UnmemorizeError(f"{len(sequences)} sequences but {len(statistics)} token statistics")
    result = MembershipScores(loss=[], zlib=[], min_k=[], min_k_plus_plus=[], k=k, positions=[], zlib_bytes=[])
    for text, stats in zip(texts, statistics):
        log_prob = stats.log_prob.double()
        token_scores = (log_prob - stats.mean.double()) / stats.std.double().clamp_min(SIGMA_EPSILON)
        n = log_prob.numel()
        count = lowest_k_count(k, n)
        loss = -float(log_prob.sum()) / n
        entropy = zlib_entropy(text)
        result.loss.append(loss)
        result.zlib.append(loss / entropy)
        result.min_k.append(float(log_prob.sort().values[:count].sum()) / count)
        result.min_k_plus_plus.append(float(token_scores.sort().values[:count].sum()) / count)
        result.positions.append(n)
        result.zlib_bytes.append(entropy)
    return result


def _check_scores(scores: Sequence[float], what: str) -> list[float]:
    values = []
    for i, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UnmemorizeError(f"{what} score {i} is {value!r}; AUC needs finite numbers")
        values.append(float(value))
    if not values:
        raise UnmemorizeError(f"no {what} scores: AUC needs at least one member and one non-member")
    return values


def roc_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """P(member score > non-member score) + 0.5 P(equal), exactly, by midranks in O(n log n); see module doc."""
    members = _check_scores(member_scores, "member")
    nonmembers = _check_scores(nonmember_scores, "non-member")
    pooled = sorted([(v, True) for v in members] + [(v, False) for v in nonmembers], key=lambda item: item[0])
    member_rank_sum, start = 0.0, 0
    while start < len(pooled):  # a run of equal scores at sorted positions start..end-1 (ranks start+1..end)
        end = start
        while end < len(pooled) and pooled[end][0] == pooled[start][0]:
            end += 1
        in_members = sum(1 for _, is_member in pooled[start:end] if is_member)
        member_rank_sum += in_members * (start + 1 + end) / 2  # midrank (start+1+end)/2 is a half-integer
        start = end
    m, n = len(members), len(nonmembers)
    return (member_rank_sum - m * (m + 1) / 2) / (m * n)


def pair_matrix(member_scores: Sequence[float], nonmember_scores: Sequence[float]):
    """W[i, j] = 1 if member i scores above non-member j, 0.5 if equal, else 0 (a float64 numpy array): AUC = mean(W)."""
    import numpy as np

    members = np.asarray(_check_scores(member_scores, "member"), dtype=np.float64)
    nonmembers = np.asarray(_check_scores(nonmember_scores, "non-member"), dtype=np.float64)
    return (members[:, None] > nonmembers[None, :]) + 0.5 * (members[:, None] == nonmembers[None, :])


def resampled_aucs(pairs, member_counts, nonmember_counts):
    """AUCs of bootstrap resamples given as multiplicity counts (B, m) and (B, n) of each member and non-member:
    a resample's AUC is the mean of W over its sampled pairs, c_members^T W c_nonmembers / (m n)."""
    m, n = pairs.shape
    return ((member_counts @ pairs) * nonmember_counts).sum(axis=1) / (m * n)


def auc_interval(member_scores: Sequence[float], nonmember_scores: Sequence[float], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``roc_auc``: members and non-members resampled separately (stratified),
    with replacement, ``resamples`` times from a seeded generator; (low, high) at ``level``."""
    import numpy as np

    pairs = pair_matrix(member_scores, nonmember_scores)
    m, n = pairs.shape
    rng = np.random.default_rng(seed)
    member_counts = rng.multinomial(m, np.full(m, 1 / m), size=resamples).astype(np.float64)
    nonmember_counts = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(np.float64)
    aucs = resampled_aucs(pairs, member_counts, nonmember_counts)
    tail = (1 - level) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1 - tail))


def _check_auc(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1):
        raise UnmemorizeError(f"{what} must be an AUC in [0, 1], got {value!r}")
    return float(value)


def privacy_leak(auc: float, retrained_auc: float) -> float:
    """MUSE's PrivLeak = (auc - retrained_auc) / retrained_auc * 100, in percent; see module doc for the orientation."""
    auc = _check_auc(auc, "auc")
    retrained_auc = _check_auc(retrained_auc, "retrained_auc")
    if retrained_auc == 0:
        raise UnmemorizeError("retrained_auc is 0: PrivLeak divides by the retrained model's AUC")
    return (auc - retrained_auc) / retrained_auc * 100


def auc_table(members: MembershipScores, nonmembers: MembershipScores) -> dict[str, float]:
    """{score name: roc_auc(members' oriented scores, non-members')} for loss, zlib, min_k and min_k_plus_plus."""
    if members.k != nonmembers.k:
        raise UnmemorizeError(f"members were scored with k = {members.k} and non-members with k = {nonmembers.k}: "
                              "Min-K% compares like with like only at one k")
    member_scores, nonmember_scores = members.scores(), nonmembers.scores()
    return {name: roc_auc(member_scores[name], nonmember_scores[name]) for name in SCORE_NAMES}
