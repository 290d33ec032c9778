"""The rules every testbed experiment shares (the demo, the comparison): which seeds run, and
which candidate edit is chosen.

The selection rule, applied to every method alike (K-FAC plans, SVD energies, BSN settings):
among the candidates whose sweep perplexity stays within ``(1 + budget) x`` the baseline's, take
the lowest tuning strict accuracy; ties go to the lower tuning loose accuracy, then to the lower
perplexity. It reads only the tuning split and the tuning perplexity slice of each candidate.

SVD at matched perplexity (``svd_matched``): the SVD energy whose tuning perplexity is closest to a
K-FAC edit's, on the same modules (the demos' SVD control).
"""

from __future__ import annotations

import math

from ..edit import EditConfig, edited
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


SVD_ENERGIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995)


def svd_matched(model, suite, plan, target_ppl, refinements: int = 8):
    """SVD on the K-FAC plan's modules at the energy whose sweep perplexity is closest to ``target_ppl``: the grid
    ``SVD_ENERGIES``, then ``refinements`` bisections of the energy interval between the two neighbouring grid points
    whose perplexities straddle the target (a coarse grid once left the matched point a near-null edit). Every scored
    point is returned (``refined: true`` for the bisection's); the match's |log perplexity ratio| is ``matched_gap``."""

    def score(energy: float, refined: bool) -> dict:
        with edited(model, {name: energy for name in plan}, config=EditConfig(method="svd")):
            return {"method": "svd", "energy": energy, "refined": refined, **suite.quick(model)}

    def gap(point: dict) -> float:
        return abs(math.log(point["perplexity"] / target_ppl)) if math.isfinite(point["perplexity"]) else math.inf

    points = [score(energy, False) for energy in SVD_ENERGIES]
    above = [p for p in points if p["perplexity"] >= target_ppl]  # lower energies cut more: higher perplexity
    below = [p for p in points if p["perplexity"] < target_ppl]
    if above and below:
        low, high = max(above, key=lambda p: p["energy"]), min(below, key=lambda p: p["energy"])
        if low["energy"] < high["energy"]:
            for _ in range(refinements):
                middle = score(round((low["energy"] + high["energy"]) / 2, 6), True)
                points.append(middle)
                low, high = (middle, high) if middle["perplexity"] >= target_ppl else (low, middle)
    best = min(points, key=gap)
    return {**best, "matched_gap": gap(best)}, points
