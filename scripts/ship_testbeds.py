"""Put a trained testbed into the package (maintainers): src/unmemorize/testbed/shipped/seed-<k>/.

    python scripts/ship_testbeds.py --seed 1 --source ~/.cache/unmemorize/testbed/<key> \\
        --trained-by "unmemorize testbed train --seed 1 (commit 48ba9d4)"

Copies the model files of ``--source`` (a testbed folder of the same world and training configs), records
their sha256, the command that trained them and that training's testbed.json, under the cache key the
current code computes for the seed's default configs (``shipped.py`` explains why testbeds are shipped).
The source folder is only read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from unmemorize.testbed.shipped import MODEL_FILES, SHIPPED, sha256_of
from unmemorize.testbed.train import TrainConfig, _train_record, cache_key
from unmemorize.testbed.world import WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--source", required=True, help="The trained testbed folder (its model/ and testbed.json).")
    parser.add_argument("--trained-by", required=True, help="The command (and commit) that trained it.")
    args = parser.parse_args()
    source = Path(args.source).expanduser()
    trained = json.loads((source / "testbed.json").read_text())
    world, train = WorldConfig(seed=args.seed), TrainConfig(seed=args.seed)
    if trained["world"] != asdict(world) or {k: trained["train"].get(k) for k in _train_record(train)} != _train_record(train):
        sys.exit(f"{source} was not trained with seed {args.seed}'s default world and training configs")
    record = {"key": cache_key(world, train), "seed": args.seed, "command": args.trained_by,
              "sha256": {name: sha256_of(source / "model" / name) for name in MODEL_FILES},
              "trained_as": {"key": trained["key"], "testbed_version": trained["testbed_version"],
                             "generator_version": trained["generator_version"]},
              "testbed": {k: v for k, v in trained.items() if k not in ("leak_scan", "source")}}
    target = SHIPPED / f"seed-{args.seed}"
    SHIPPED.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=SHIPPED) as tmp:
        staging = Path(tmp) / "seed"
        staging.mkdir()
        for name in MODEL_FILES:
            shutil.copyfile(source / "model" / name, staging / name)
        (staging / "shipped.json").write_text(json.dumps(record, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    print(f"{target}: key {record['key']}, model sha256 {record['sha256']['model.safetensors'][:16]}...")


if __name__ == "__main__":
    main()
