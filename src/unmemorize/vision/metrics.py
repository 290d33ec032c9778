"""The paper's Table 2 metrics for noisy-label memorization.

On the training images whose label was noised:
  memorized %  = prediction == the noisy label   (lower is better after the edit)
  recovery %   = prediction == the true label    (ground-truth recovery; higher is better)
and clean-train accuracy (prediction == label on the un-noised training images) and validation
top-1 accuracy.
"""

from __future__ import annotations

import torch


def noisy_label_metrics(train_predictions: torch.Tensor, true_labels: torch.Tensor, noisy_labels: torch.Tensor, noised: torch.Tensor,
                        validation_predictions: torch.Tensor, validation_labels: torch.Tensor) -> dict:
    """All four metrics as fractions in [0, 1] (see module docstring)."""

    def mean(values: torch.Tensor) -> float:
        return float(values.float().mean()) if values.numel() else float("nan")

    return {
        "memorized": mean(train_predictions[noised] == noisy_labels[noised]),
        "recovery": mean(train_predictions[noised] == true_labels[noised]),
        "clean_train": mean(train_predictions[~noised] == true_labels[~noised]),
        "validation": mean(validation_predictions == validation_labels),
    }


def evaluate_vision(model, testbed) -> dict:
    from .train import predict

    return noisy_label_metrics(predict(model, testbed.train.images), testbed.train.labels, testbed.noisy_labels, testbed.noised,
                               predict(model, testbed.validation.images), testbed.validation.labels)
