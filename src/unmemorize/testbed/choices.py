"""The rules every testbed experiment shares (the demo, the comparison): which seeds run, and
which candidate edit is chosen.

The selection rule, applied to every method alike (K-FAC plans, SVD energies, BSN settings):
among the candidates whose sweep perplexity stays within ``(1 + budget) x`` the baseline's, take
the lowest tuning strict accuracy; ties go to the lower tuning loose accuracy, then to the lower
perplexity. It reads only the tuning split and the tuning perplexity slice of each candidate.
"""

from __future__ import annotations

from ..errors import UnmemorizeError


def parse_seeds(seeds: str, seed: int) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``; an empty ``seeds`` means ``[seed]`` alone. A repeated seed is refused."""
    if not seeds.strip():
        return [seed]
    try:
        parsed = [int(part) for part in seeds.split(",")]
    except ValueError:
        raise UnmemorizeError(f"--seeds must be a comma list of integers, e.g. 0,1,2; got {seeds!r}") from None
    if len(set(parsed)) != len(parsed):
        raise UnmemorizeError(f"--seeds lists a seed twice: {seeds!r}")
    return parsed


def choose_candidate(candidates, baseline_ppl, budget) -> tuple[dict, bool]:
    """(chosen candidate, rule_met). When no candidate keeps perplexity within the budget the rule
    cannot be met: the candidate with the lowest perplexity is taken and rule_met is False."""
    allowed = [c for c in candidates if c["perplexity"] <= (1 + budget) * baseline_ppl]
    if not allowed:
        return min(candidates, key=lambda c: c["perplexity"]), False
    return min(allowed, key=lambda c: (c["memorized_tuning"]["strict"], c["memorized_tuning"]["loose"], c["perplexity"])), True
