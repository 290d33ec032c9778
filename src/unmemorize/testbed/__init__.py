"""The spectrum testbed: a generated world with known memorized items and skills, and a small
Llama-style model trained on it (see ``world.py`` and ``train.py``)."""

from .train import TrainConfig, cache_key, load_or_train, quick_configs, testbed_dir, train_testbed
from .world import CATEGORIES, WorldConfig, build_world

__all__ = ["CATEGORIES", "TrainConfig", "WorldConfig", "build_world", "cache_key", "load_or_train", "quick_configs", "testbed_dir",
           "train_testbed"]
