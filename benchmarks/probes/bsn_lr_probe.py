"""BSN's score learning rate on the testbed: does the mask move at all within the comparison's step budget?

    .venv/bin/python benchmarks/probes/bsn_lr_probe.py SEED LR[,LR...] [RATIO] [ALPHA] [EPOCHS]

Loads the cached world-v4 testbed of SEED, trains BSN (forget = the tuning split, retain = the first
100,000 tokens of the mixture factor data, as `unmemorize compare` does) at each learning rate and
prints the final forget / retain CE, tuning-split strict recitation and the sweep perplexity.
"""

import copy
import sys
import time

import torch

from unmemorize.baselines import BSNConfig, balanced_subnet
from unmemorize.data import iter_windows, list_data_files
from unmemorize.evaluate.attacks import item_sequences
from unmemorize.models import load_model
from unmemorize.testbed.suite import TestbedSuite
from unmemorize.testbed.train import TrainConfig, load_or_train
from unmemorize.testbed.world import WorldConfig

seed, lrs = int(sys.argv[1]), [float(v) for v in sys.argv[2].split(",")]
ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.03
alpha = float(sys.argv[4]) if len(sys.argv) > 4 else 0.5
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
folder = load_or_train(WorldConfig(seed=seed), TrainConfig(seed=seed))
model, tokenizer = load_model(str(folder / "model"))
suite = TestbedSuite(folder, tokenizer, perplexity_tokens=2_000, sweep_perplexity_tokens=10_000)
forget = item_sequences(suite.sets["memorized_tuning"])
retain = list(iter_windows(list_data_files(folder / "data" / "factors_mixture.txt"), tokenizer, 128, 100_000))
print(f"seed {seed}: forget {len(forget)}, retain {len(retain)} windows; baseline {suite.quick(model)}")
for lr in lrs:
    start = time.perf_counter()
    masked, record = balanced_subnet(copy.deepcopy(model), forget, retain,
                                     BSNConfig(ratio=ratio, alpha=alpha, epochs=epochs, lr=lr, seed=seed, progress=False))
    quick = suite.quick(masked)
    last = record.history[-1]
    print(f"lr {lr:g} ratio {ratio} alpha {alpha} epochs {epochs} steps {record.steps}: forget CE {last['forget_ce']:.3f}, "
          f"retain CE {last['retain_ce']:.3f}, tuning strict {quick['memorized_tuning']['strict']:.2f}, "
          f"sweep perplexity {quick['perplexity']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    del masked
