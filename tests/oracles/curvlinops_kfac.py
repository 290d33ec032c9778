"""Independent KFAC oracle built on curvlinops (3.0.1) for testing unmemorize.

unmemorize convention (causal LM, input_ids (B, T), no padding), N = B * (T - 1):
  counted positions = t in 0..T-2 of every sequence (position T-1 has no label);
  A = (1/N) sum_{counted} a a^T   (a: the nn.Linear module's input),
  G = (1/N) sum_{counted} g g^T   (g: d L_sum / d(module output), where L_sum is the
      SUM-reduced next-token cross-entropy of the whole batch; labels input_ids[:, 1:]
      for the empirical Fisher, or labels sampled from the model for "mc").

How curvlinops is driven, and the scale conversion:
  * Data is one or more batches (X, y) = (input_ids[:, :-1], input_ids[:, 1:].reshape(-1)); the
    wrapper returns logits.reshape(-1, V). Feeding the TRUNCATED sequence matters:
    curvlinops' input hook sees every position the Linear layer processes, so with the
    full sequence A would also contain the unlabelled last position. For a causal LM
    without padding, positions 0..T-2 of the truncated forward equal those of the
    full forward exactly, so A and G cover precisely the counted positions.
  * num_data = B (curvlinops counts data points via X.shape[0]), and
    num_per_example_loss_terms = T - 1.
  * A: KFAC-expand flattens (B, T-1, d_in) -> (N, d_in) and divides sum a a^T by
    num_data * (T-1) = N.  => A_cl = A exactly (factor 1).
  * G: with CrossEntropyLoss(reduction="sum") the grad-output hook receives
    g = dL_sum/d(output) and accumulates sum g g^T times correction 1/mc_samples = 1.
    => G_cl = N * G, so we return G = G_cl / N.
    (Equivalent check: reduction="mean" gives g/N and correction N^2/(B*(T-1)) = N,
    i.e. G_cl = G directly. Both agree only to ~1e-7: HF LlamaRMSNorm and the eager
    attention softmax run in float32 even in a float64 model, so rescaling the loss
    changes rounding. Sum reduction matches a sum-loss brute force to ~1e-16.)
  * separate_weight_and_bias=True and only the (bias-free) weights are passed as
    params, so no column of ones is appended to the inputs (A is d_in x d_in).
"""

from __future__ import annotations

import torch
from torch import nn

from curvlinops import FisherType, KFACLinearOperator, KFACType


class _FlatLogits(nn.Module):
    """Wraps an HF causal LM: (B, T') ids -> (B*T', V) logits."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=ids, use_cache=False).logits
        return logits.reshape(-1, logits.shape[-1])


def curvlinops_kfac_factors(
    model: nn.Module,
    input_ids: torch.Tensor | list[torch.Tensor],
    module_names: list[str],
    fisher: str = "empirical",
    mc_seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {module_name: (A, G)} from curvlinops' KFACLinearOperator, converted to
    unmemorize's normalization (see module docstring): A = A_cl, G = G_cl / N with
    N = B * (T - 1), using KFAC-expand and a SUM-reduced CrossEntropyLoss.

    ``input_ids``: one (B, T) batch, or a list of batches (B_k, T) of one length T and any
    sizes B_k; then B = sum B_k (with a sum-reduced loss, curvlinops adds every batch's
    g g^T with weight 1, so unequal batches need no correction).
    ``module_names`` are names in ``model.named_modules()`` of bias-free nn.Linear layers.
    ``fisher``: "empirical" (labels = input_ids shifted left) or "mc" (curvlinops'
    FisherType.MC, 1 sample, labels drawn with curvlinops' own generator seeded by
    ``mc_seed``; not bit-compatible with any other sampler).
    """
    fisher_type = {"empirical": FisherType.EMPIRICAL, "mc": FisherType.MC}[fisher]
    batches = [input_ids] if isinstance(input_ids, torch.Tensor) else list(input_ids)
    if len({ids.shape[1] for ids in batches}) != 1:
        raise ValueError("every batch must have the same length T")
    B, T = sum(ids.shape[0] for ids in batches), batches[0].shape[1]
    N = B * (T - 1)
    modules = dict(model.named_modules())
    params = []
    for name in module_names:
        mod = modules[name]
        if not isinstance(mod, nn.Linear) or mod.bias is not None:
            raise ValueError(f"{name} must be a bias-free nn.Linear, got {mod}")
        params.append(mod.weight)

    wrapper = _FlatLogits(model)
    data = [(ids[:, :-1].contiguous(), ids[:, 1:].reshape(-1)) for ids in batches]
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            kfac = KFACLinearOperator(
                wrapper,
                nn.CrossEntropyLoss(reduction="sum"),
                params,
                data,
                progressbar=False,
                check_deterministic=False,  # would re-run forward/backward passes
                seed=mc_seed,
                fisher_type=fisher_type,
                mc_samples=1,
                kfac_approx=KFACType.EXPAND,
                num_per_example_loss_terms=T - 1,
                separate_weight_and_bias=True,
                num_data=B,  # sequences, NOT tokens: A is divided by num_data*(T-1)
            )
            kfac.compute_kronecker_factors()
    finally:
        for p, rg in zip(params, saved):
            p.requires_grad_(rg)

    # Public accessor for the factors; keys are names inside the wrapper ("lm.<name>").
    state = kfac.state_dict()
    out = {}
    for name in module_names:
        key = f"lm.{name}" if name else "lm"
        A = state["input_covariances"][key].detach().clone()
        G = state["gradient_covariances"][key].detach().clone() / N
        out[name] = (A, G)
    return out
