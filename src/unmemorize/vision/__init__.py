"""Vision: noisy-label memorization in ViTs (the paper's Table 2), on a CPU-sized testbed."""

from .data import inject_noisy_labels, load_digits, load_fashion_mnist, read_idx
from .metrics import evaluate_vision, noisy_label_metrics
from .train import VisionConfig, load_vision, train_vision

__all__ = ["VisionConfig", "evaluate_vision", "inject_noisy_labels", "load_digits", "load_fashion_mnist", "load_vision",
           "noisy_label_metrics", "read_idx", "train_vision"]
