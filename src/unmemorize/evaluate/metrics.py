"""Memorization metrics on token ids: strict and loose accuracy, normalized Levenshtein.

The paper's definitions (Merullo et al., arXiv 2510.24256, §5.1; its code's
``metrics/levenshtein_metrics.py``). For one item with gold suffix S of L = |S| tokens and a
greedy continuation G of the prefix:

    d      = Levenshtein(G[:L], S)           token-level edit distance (insert, delete, substitute: cost 1)
    strict = 1[d == 0]
    loose  = 1[1 - d / L >= tau]             tau = 0.75
    lev    = d / L                           higher means less memorization

Set-level numbers are means over items: strict and loose are fractions in [0, 1] (the paper
prints them as %), ``levenshtein`` is the mean of d / L.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from rapidfuzz.distance import Levenshtein

from ..errors import UnmemorizeError

LOOSE_THRESHOLD = 0.75


def token_levenshtein(a: list[int], b: list[int]) -> int:
    """Edit distance between two token-id lists (unit costs), computed by rapidfuzz on the lists."""
    return int(Levenshtein.distance(list(a), list(b)))


@dataclass
class MemorizationScores:
    """Strict / loose accuracy and mean normalized Levenshtein over ``n`` items.

    ``distances[k]`` is d of item k and ``lengths[k]`` its L, in the order the items were given.
    """

    strict: float  # mean of 1[d == 0], in [0, 1]
    loose: float  # mean of 1[1 - d/L >= loose_threshold], in [0, 1]
    levenshtein: float  # mean of d / L, in [0, 1]; higher = less memorization
    n: int
    loose_threshold: float = LOOSE_THRESHOLD
    distances: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self, per_item: bool = False) -> dict:
        row = asdict(self)
        if not per_item:
            row.pop("distances")
            row.pop("lengths")
        return row


def memorization_scores(generated: list[list[int]], targets: list[list[int]],
                        loose_threshold: float = LOOSE_THRESHOLD) -> MemorizationScores:
    """Score greedy continuations ``generated`` against gold suffixes ``targets`` (see module doc).

    Each continuation is cut to its target's length L before the distance is taken; a shorter
    (even empty) continuation is compared as is, so an empty one has d = L.
    """
    if len(generated) != len(targets):
        raise UnmemorizeError(f"{len(generated)} continuations for {len(targets)} targets; they must pair up")
    if not targets:
        raise UnmemorizeError("no items to score: the memorization set is empty")
    distances, lengths = [], []
    strict = loose = normalized = 0.0
    for k, (output, target) in enumerate(zip(generated, targets)):
        length = len(target)
        if length == 0:
            raise UnmemorizeError(f"item {k} has an empty target suffix; every suffix needs at least one token")
        d = token_levenshtein(list(output)[:length], target)
        distances.append(d)
        lengths.append(length)
        strict += d == 0
        loose += (1.0 - d / length) >= loose_threshold
        normalized += d / length
    n = len(targets)
    return MemorizationScores(strict=strict / n, loose=loose / n, levenshtein=normalized / n, n=n,
                              loose_threshold=loose_threshold, distances=distances, lengths=lengths)


def retention(edited: float, baseline: float) -> float | None:
    """edited / baseline: the share of a baseline score an edited model keeps (None if baseline is 0)."""
    if baseline == 0:
        return None
    return edited / baseline
