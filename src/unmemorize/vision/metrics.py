"""The paper's Table 2 metrics for noisy-label memorization, on split noised images.

On the training images whose label was noised:
  memorized %  = prediction == the noisy label   (lower is better after the edit)
  recovery %   = prediction == the true label    (ground-truth recovery; higher is better)
and clean-train accuracy (prediction == label on the un-noised training images) and held-out
top-1 accuracy (images never trained on: digits' 20% split, Fashion-MNIST's t10k test set).

The noised images are split in two halves (``split_noised``): every choice of the demo reads the
*tuning* half only; the *validation* half is reported and never read by a choice (as the LM demo's
memorized_tuning / memorized_validation). The held-out images are never read by a choice either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HALVES_SEED_OFFSET = 7919  # the halves' permutation uses seed + this, a stream apart from the noise injection's


def _mean(values: torch.Tensor) -> float:
    return float(values.float().mean()) if values.numel() else float("nan")


def noisy_label_metrics(train_predictions: torch.Tensor, true_labels: torch.Tensor, noisy_labels: torch.Tensor, noised: torch.Tensor,
                        validation_predictions: torch.Tensor, validation_labels: torch.Tensor) -> dict:
    """All four metrics as fractions in [0, 1] (see module docstring), over every noised image."""
    return {
        "memorized": _mean(train_predictions[noised] == noisy_labels[noised]),
        "recovery": _mean(train_predictions[noised] == true_labels[noised]),
        "clean_train": _mean(train_predictions[~noised] == true_labels[~noised]),
        "validation": _mean(validation_predictions == validation_labels),
    }


@dataclass
class NoisedHalves:
    """Boolean masks over the training images: ``tuning`` and ``validation`` partition ``noised``."""

    tuning: torch.Tensor
    validation: torch.Tensor
    clean: torch.Tensor  # ~noised

    def counts(self) -> dict:
        return {"tuning": int(self.tuning.sum()), "validation": int(self.validation.sum()), "clean_train": int(self.clean.sum())}


def split_noised(noised: torch.Tensor, seed: int) -> NoisedHalves:
    """Split the noised images by a seeded permutation: the first ceil(n/2) are tuning, the rest validation."""
    index = noised.nonzero().flatten()
    order = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(seed + HALVES_SEED_OFFSET))]
    tuning = torch.zeros_like(noised, dtype=torch.bool)
    validation = torch.zeros_like(noised, dtype=torch.bool)
    cut = (len(order) + 1) // 2
    tuning[order[:cut]] = True
    validation[order[cut:]] = True
    return NoisedHalves(tuning, validation, ~noised.bool())


def training_scores(predictions: torch.Tensor, true_labels: torch.Tensor, noisy_labels: torch.Tensor, halves: NoisedHalves) -> dict:
    """memorized / recovery on each half of the noised images, and clean-train accuracy (fractions)."""
    scores = {}
    for half in ("tuning", "validation"):
        mask = getattr(halves, half)
        scores[f"memorized_{half}"] = _mean(predictions[mask] == noisy_labels[mask])
        scores[f"recovery_{half}"] = _mean(predictions[mask] == true_labels[mask])
    scores["clean_train"] = _mean(predictions[halves.clean] == true_labels[halves.clean])
    return scores


def score_training(model, testbed, halves: NoisedHalves) -> dict:
    """``training_scores`` of ``model`` on the testbed's training images (no held-out image is read)."""
    from .train import predict

    return training_scores(predict(model, testbed.train.images), testbed.train.labels, testbed.noisy_labels, halves)


def heldout_correct(model, testbed) -> torch.Tensor:
    """(N_heldout,) bool: which held-out images the model classifies right."""
    from .train import predict

    return predict(model, testbed.validation.images) == testbed.validation.labels


def paired_bootstrap_difference(before: torch.Tensor, after: torch.Tensor, resamples: int = 2000, seed: int = 0) -> dict:
    """mean(after) - mean(before) on the same images, with a 95% percentile bootstrap interval over images."""
    before, after = before.float().numpy(), after.float().numpy()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(before), size=(resamples, len(before)))
    draws = np.sort(after[rows].mean(1) - before[rows].mean(1))
    return {"value": float(after.mean() - before.mean()), "low": float(np.quantile(draws, 0.025)),
            "high": float(np.quantile(draws, 0.975)), "n": int(len(before))}


def evaluate_vision(model, testbed) -> dict:
    from .train import predict

    return noisy_label_metrics(predict(model, testbed.train.images), testbed.train.labels, testbed.noisy_labels, testbed.noised,
                               predict(model, testbed.validation.images), testbed.validation.labels)
