"""Our A and G agree with an independent implementation: curvlinops' KFACLinearOperator.

Scale (see oracles/curvlinops_kfac.py): curvlinops' A is already the mean over the B*(T-1)
counted positions; with a SUM-reduced loss its G is the sum over positions, so the oracle
divides it by N = B*(T-1). Up to that documented global factor the two must be equal.
"""

from __future__ import annotations

import torch

from conftest import relative_error
from curvlinops_kfac import curvlinops_kfac_factors
from unmemorize.curvature import CollectConfig, collect_factors
from unmemorize.targets import resolve_targets


def test_factors_agree_with_curvlinops(tiny_lm):
    model, _ = tiny_lm("llama", layers=2)
    ids = torch.randint(3, model.config.vocab_size, (4, 10), generator=torch.Generator().manual_seed(0))
    targets = resolve_targets(model)
    ours = collect_factors(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], targets,
                           CollectConfig(fisher="empirical", dtype="float64", progress=False))
    theirs = curvlinops_kfac_factors(model, ids, targets, fisher="empirical")
    for name in targets:
        a, g = theirs[name]
        assert relative_error(ours.activation[name], a) < 1e-8, name
        assert relative_error(ours.gradient[name], g) < 1e-8, name


def test_agreement_check_catches_a_wrong_scale(tiny_lm):
    """Negative control: the mean-reduced loss (the paper code's G) is off by N^2 and must fail."""
    model, _ = tiny_lm("llama", layers=1)
    ids = torch.randint(3, model.config.vocab_size, (4, 10), generator=torch.Generator().manual_seed(1))
    name = resolve_targets(model, projections="down")[0]
    ours = collect_factors(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], [name],
                           CollectConfig(fisher="empirical", dtype="float64", progress=False))
    _, g = curvlinops_kfac_factors(model, ids, [name], fisher="empirical")[name]
    positions = 4 * 9
    assert relative_error(ours.gradient[name] / positions**2, g) > 0.5
