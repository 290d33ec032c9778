"""Position-perturbation stress test: does a removed memory come back when the prompt moves?

The paper's Appendix G (Merullo et al., arXiv 2510.24256, after Huang et al. 2024) reports, as
mean +- std in tokens, the exact-match length of greedy continuations on the original prompts and
on positionally perturbed ones. Its code (``metrics/position_perturb_eval.py``, see
../shared/paper/paper-notes.md, "Position-perturbation stress test") defines, for one item with
prefix x_1..x_n, gold suffix x_{n+1}..x_{n+k} and a number t (paper: n = 64, k = 48, t = 20):

    left-extended   P_i = x_1 .. x_{n+i}          i = 0 .. min(t, k)     (i gold suffix tokens consumed)
    right-shifted   R_m = x_{n-m+1} .. x_n        m = t+1 .. n           (the last m prefix tokens)
    variants        V   = ({P_i} U {R_m}) \\ {x_1..x_n}                 (the unperturbed prompt excluded)

"Left-extended" keeps the prompt's left end and extends it into the suffix; no text from outside
the item is needed. For a prompt p with offset o (o = i for P_i, 0 for R_m), greedy decoding
writes k tokens g_1..g_k (k = the item's suffix length for every variant, as the code's
``max_new_tokens = suffix_len``) and the score is the longest exact-match prefix against the
remaining gold tokens:

    match(g, o) = max { j : g_1..g_j == x_{n+o+1} .. x_{n+o+j} }          (j <= k - o)
    original    = match(greedy(x_1..x_n), 0)
    stressed    = max over (p, o) in V of match(greedy(p), o)             (0 when V is empty)

Set level: mean and **population** standard deviation (divide by N, as the code's ``_aggregate``)
of ``original`` and ``stressed``, the full-match rate of each (score == k), and the mean of
stressed - original with the fraction of items it is > 0.

Variant count per item (the code's ``_expected_variant_count``): min(t, k) + 1 left-extended and
max(0, n - t) right-shifted prompts, the unperturbed one counted once, then excluded. When n <= t
(short prefixes such as the testbed's 13 tokens at t = 20) there is no right-shifted prompt and
only the min(t, k) left-extended ones remain; the code's formula n - t would go negative there.
Then no variant can reach a full match (a left-extended one scores at most k - i), so on short
prefixes a depth scaled to the prefix, e.g. t = round(20 * n / 64), keeps both families.

Where we differ from the code, and why: the code decodes the variants of one item in one
``model.generate`` call with **right** padding and reads ``seq[len(p):]``, so every variant shorter
than the longest in its batch is scored on pad tokens first. We decode each variant as if alone
(``generate.greedy_continuations``: left padding, masked, positions from 0), which is what the
formula above says. Prompts are token ids as given (no BOS added), as everywhere in this package.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from ..errors import UnmemorizeError
from .generate import check_token_ids, greedy_continuations
from .memorization import MemorizationItem


@dataclass
class StressConfig:
    """Settings of the position-perturbation stress test (recorded with its results)."""

    t: int = field(default=20, metadata={"help": "Perturbation depth t: left-extended prompts consume up to t suffix tokens, "
                                                 "right-shifted prompts keep the last t+1..n prefix tokens (paper: 20)."})
    exclude_unperturbed: bool = field(default=True, metadata={"help": "Leave the original prompt out of the stressed max "
                                                                      "(the paper's code does)."})
    batch_size: int = field(default=64, metadata={"help": "Prompts decoded together."})

    def validate(self) -> None:
        if isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 0:
            raise UnmemorizeError(f"--stress-t must be an integer >= 0, got {self.t!r}")
        if self.batch_size < 1:
            raise UnmemorizeError(f"--batch-size must be at least 1, got {self.batch_size}")


def position_variants(prefix_ids: list[int], suffix_ids: list[int], t: int,
                      exclude_unperturbed: bool = True) -> list[tuple[list[int], int]]:
    """The perturbed prompts of one item as (prompt ids, offset o into the suffix); see module doc.

    Duplicates (only the full prefix, which both families contain) are kept once with the smaller
    offset, as in the paper's code. Order: left-extended by i, then right-shifted by length m.
    """
    n, k = len(prefix_ids), len(suffix_ids)
    candidates = [(list(prefix_ids) + list(suffix_ids[:i]), i) for i in range(min(t, k) + 1)]
    candidates += [(list(prefix_ids[n - m:]), 0) for m in range(t + 1, n + 1)]
    unique: dict[tuple[int, ...], int] = {}
    for prompt, offset in candidates:
        key = tuple(prompt)
        if key not in unique or offset < unique[key]:
            unique[key] = offset
    if exclude_unperturbed:
        unique.pop(tuple(prefix_ids), None)
    return [(list(prompt), offset) for prompt, offset in unique.items()]


def variant_count(n: int, k: int, t: int, exclude_unperturbed: bool = True) -> int:
    """How many variants ``position_variants`` gives for prefix length n and suffix length k (n, k >= 1)."""
    right = max(0, n - t)
    union = min(t, k) + 1 + right - (1 if right else 0)  # the full prefix is in both families when right > 0
    return union - (1 if exclude_unperturbed else 0)


def exact_prefix_length(generated: list[int], gold: list[int]) -> int:
    """Longest j with generated[:j] == gold[:j]."""
    j = 0
    for produced, expected in zip(generated, gold):
        if produced != expected:
            break
        j += 1
    return j


def _mean_std(values: list[int]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass
class StressResult:
    """Per-item exact-match lengths (original and stressed, in the order of the items) and their summary."""

    original: list[int]
    stressed: list[int]
    suffix_lengths: list[int]
    variants: list[int]  # perturbed prompts scored per item
    config: dict

    def summary(self) -> dict:
        n = len(self.original)
        full = lambda values: sum(v == k for v, k in zip(values, self.suffix_lengths))  # noqa: E731
        deltas = [s - o for o, s in zip(self.original, self.stressed)]
        (om, osd), (sm, ssd) = _mean_std(self.original), _mean_std(self.stressed)
        return {"n": n,
                "original": {"mean": om, "std": osd, "full_match_count": full(self.original), "full_match_rate": full(self.original) / n},
                "stressed": {"mean": sm, "std": ssd, "full_match_count": full(self.stressed), "full_match_rate": full(self.stressed) / n},
                "delta": {"mean": sum(deltas) / n, "improved_count": sum(d > 0 for d in deltas),
                          "improved_rate": sum(d > 0 for d in deltas) / n},
                "variants_per_item": {"min": min(self.variants), "max": max(self.variants)}}

    def to_dict(self, per_item: bool = True) -> dict:
        row = {"summary": self.summary(), "config": self.config}
        if per_item:
            row["per_item"] = {k: v for k, v in asdict(self).items() if k != "config"}
        return row


def stress_test(model, items: list[MemorizationItem], pad_id: int, config: StressConfig | None = None) -> StressResult:
    """Original and stressed exact-match lengths of ``model`` on ``items`` (see module doc)."""
    config = config or StressConfig()
    config.validate()
    if not items:
        raise UnmemorizeError("no items to stress-test: the memorization set is empty")
    check_token_ids(model, [item.prefix_ids + item.suffix_ids for item in items], what="item")
    # one job per prompt: (item index, offset, is_original); grouped by suffix length = max_new_tokens
    jobs: dict[int, list[tuple[int, int, bool, list[int]]]] = defaultdict(list)
    variants = []
    for index, item in enumerate(items):
        perturbed = position_variants(item.prefix_ids, item.suffix_ids, config.t, config.exclude_unperturbed)
        variants.append(len(perturbed))
        jobs[len(item.suffix_ids)].append((index, 0, True, list(item.prefix_ids)))
        jobs[len(item.suffix_ids)].extend((index, offset, False, prompt) for prompt, offset in perturbed)
    original, stressed = [0] * len(items), [0] * len(items)
    for length, group in sorted(jobs.items()):
        outputs = greedy_continuations(model, [prompt for *_, prompt in group], length, pad_id, config.batch_size)
        for (index, offset, is_original, _), generated in zip(group, outputs):
            score = exact_prefix_length(generated, items[index].suffix_ids[offset:])
            if is_original:
                original[index] = score
            else:
                stressed[index] = max(stressed[index], score)
    return StressResult(original=original, stressed=stressed, suffix_lengths=[len(item.suffix_ids) for item in items],
                        variants=variants, config=asdict(config))
