"""The quotes world: a second testbed on real English (``corpus.py``), with real quotes inserted into the
training stream a known number of times (``world.py``), a model trained on it and its twin retrained
without the quotes (``train.py``)."""

from .train import SIZES, load_or_train_quotes, quotes_configs, quotes_dir, train_quotes_testbed
from .world import DUPLICATION_COUNTS, QuotesWorld, QuotesWorldConfig, build_quotes_world, scan_world, training_stream

__all__ = ["DUPLICATION_COUNTS", "QuotesWorld", "QuotesWorldConfig", "SIZES", "build_quotes_world", "load_or_train_quotes",
           "quotes_configs", "quotes_dir", "scan_world", "train_quotes_testbed", "training_stream"]
