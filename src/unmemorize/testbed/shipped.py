"""The testbeds the README reports, shipped with the package: a fresh clone evaluates exactly them.

Training the testbed takes 12-25 minutes on 2 CPU cores and is not bit-identical from run to run
(thread scheduling changes float sums; seed 0 of world v5 once gave open-book 94.5% and once 78.5%),
so a report made from one training cannot be reproduced from another. The trained models of the
reported seeds are therefore part of the package::

    src/unmemorize/testbed/shipped/seed-<k>/
        model.safetensors  config.json  generation_config.json       the model (float32, as trained)
        tokenizer.json  tokenizer_config.json                        its BPE tokenizer
        shipped.json       key, seed, sha256 of every file above, the command that trained it, and that
                           training's testbed.json (loss curve, per-epoch task accuracy, wall time)

``load_or_train`` asks ``shipped_testbed(key)`` before it trains: a shipped model with the wanted
cache key is *materialized* into the cache -- every file's sha256 checked (a mismatch is refused by
name), the files copied, the data files regenerated from the world config with the shipped
tokenizer (the world is deterministic from its seed; ``train.write_data``), testbed.json written
with ``"source": "shipped"`` -- and is then used as any cached testbed. ``unmemorize testbed train
--retrain`` trains from scratch instead. ``scripts/ship_testbeds.py`` (maintainers) puts trained
testbeds here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..errors import UnmemorizeError

SHIPPED = Path(__file__).parent / "shipped"
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_records(root: Path | None = None) -> list[dict]:
    """Every shipped testbed's shipped.json (with its folder under ``folder``); ``root`` defaults to ``SHIPPED``."""
    records = []
    for path in sorted((root or SHIPPED).glob("seed-*/shipped.json")):
        record = json.loads(path.read_text())
        records.append({**record, "folder": str(path.parent)})
    return records


def shipped_testbed(key: str, root: Path | None = None) -> dict | None:
    """The shipped testbed whose cache key is ``key``, or None."""
    return next((record for record in shipped_records(root) if record["key"] == key), None)


def verify(record: dict) -> None:
    """Every model file present with the sha256 shipped.json records, or an error naming the first that is not."""
    folder = Path(record["folder"])
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            raise UnmemorizeError(f"the shipped testbed {folder} lacks {name}; reinstall unmemorize or train with "
                                  "'unmemorize testbed train --retrain'")
        found = sha256_of(path)
        if found != record["sha256"][name]:
            raise UnmemorizeError(f"the shipped testbed file {path} has sha256 {found}, not the recorded {record['sha256'][name]}: "
                                  "it is damaged or was changed; reinstall unmemorize or train with 'unmemorize testbed train --retrain'")


def copy_model(record: dict, destination: Path) -> None:
    """The verified model files copied into ``destination`` (a folder being built)."""
    verify(record)
    destination.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(Path(record["folder"]) / name, destination / name)
