"""The shipped testbeds (testbed/shipped.py): the files are those recorded, a damaged file is refused by name,
a fresh cache gets the shipped model rather than a training, and --retrain trains anyway."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unmemorize.errors import UnmemorizeError
from unmemorize.testbed import shipped as shipped_module
from unmemorize.testbed.shipped import MODEL_FILES, SHIPPED, shipped_records, verify
from unmemorize.testbed.train import TrainConfig, cache_key
from unmemorize.testbed.world import WorldConfig, build_world

RECORDS = shipped_records()


def test_the_reported_seeds_are_shipped_under_the_keys_the_code_computes():
    assert sorted(r["seed"] for r in RECORDS) == [0, 1, 2]
    for record in RECORDS:
        assert record["key"] == cache_key(WorldConfig(seed=record["seed"]), TrainConfig(seed=record["seed"]))
        assert record["command"] and record["testbed"]["train"]["seed"] == record["seed"]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"seed-{r['seed']}")
def test_every_shipped_file_has_the_recorded_sha256(record):
    folder = Path(record["folder"])
    for name in MODEL_FILES:  # hashed here with hashlib directly, not with shipped.sha256_of
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == record["sha256"][name], name
    verify(record)


def test_a_damaged_shipped_file_is_refused_by_name_and_nothing_is_materialized(tmp_path, monkeypatch):
    from unmemorize.testbed.train import load_or_train

    root = tmp_path / "shipped"
    shutil.copytree(SHIPPED / "seed-0", root / "seed-0")
    weights = root / "seed-0" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    (record,) = shipped_records(root)
    with pytest.raises(UnmemorizeError, match=r"model\.safetensors has sha256 .* not the recorded"):
        verify(record)
    monkeypatch.setattr(shipped_module, "SHIPPED", root)
    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("unmemorize.testbed.train.train_testbed", lambda *a, **k: pytest.fail("trained instead of refusing"))
    with pytest.raises(UnmemorizeError, match="damaged or was changed"):
        load_or_train(WorldConfig(seed=0), TrainConfig(seed=0), progress=False)
    cache = tmp_path / "cache" / "testbed"
    assert not cache.exists() or not any((p / "testbed.json").exists() for p in cache.iterdir())


def test_a_fresh_cache_gets_the_shipped_model_and_its_data(tmp_path, monkeypatch):
    """No training: the cache folder holds the shipped weights bit for bit, and the regenerated memorization rows
    decode with the shipped tokenizer to the world's own texts (an oracle independent of write_data)."""
    from transformers import PreTrainedTokenizerFast

    from unmemorize.testbed.train import load_or_train

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("unmemorize.testbed.train.train_testbed", lambda *a, **k: pytest.fail("trained although shipped"))
    folder = load_or_train(WorldConfig(seed=0), TrainConfig(seed=0), progress=False)
    shipped = load_file(str(SHIPPED / "seed-0" / "model.safetensors"))
    materialized = load_file(str(folder / "model" / "model.safetensors"))
    assert shipped.keys() == materialized.keys() and all(torch.equal(shipped[k], materialized[k]) for k in shipped)
    info = json.loads((folder / "testbed.json").read_text())
    assert info["source"].startswith("shipped") and info["leak_scan"]["tasks"]["arithmetic"]["rows"] == 200
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder / "model"))
    world = build_world(WorldConfig(seed=0))
    texts = [item.text for item in world.memorized("validation")]
    rows = [json.loads(line) for line in (folder / "data" / "memorized_validation.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == texts
    for row in rows:  # EOS, then the text's tokens: decoding the sequence gives the text back
        decoded = tokenizer.decode(row["prefix_ids"][1:] + row["suffix_ids"])
        assert decoded.split() == row["text"].split()[: len(decoded.split())] and len(decoded.split()) >= 12


def test_retrain_trains_even_where_a_shipped_model_exists(tmp_path, monkeypatch):
    from unmemorize.testbed.train import load_or_train

    calls = []
    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("unmemorize.testbed.train.train_testbed", lambda *args, **kwargs: calls.append(args) or tmp_path)
    monkeypatch.setattr("unmemorize.testbed.train.materialize_shipped", lambda *a, **k: pytest.fail("shipped model used"))
    load_or_train(WorldConfig(seed=1), TrainConfig(seed=1), progress=False, retrain=True)
    assert len(calls) == 1 and calls[0][1].seed == 1
