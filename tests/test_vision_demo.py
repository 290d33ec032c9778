"""The vision demo's protocol: choices read the tuning half only, the rule's fallback is recorded,
the halves partition the noised images, results are strict JSON, seeds aggregate to mean/std."""

from __future__ import annotations

import os
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unmemorize.errors import UnmemorizeError
from unmemorize.jsonio import strict_loads
from unmemorize.vision import inject_noisy_labels, load_fashion_mnist
from unmemorize.vision.demo import FASHION_MNIST_DEBIAN, VisionDemoConfig, choose, grids, run_vision_demo, seed_list, tune, vision_config
from unmemorize.vision.metrics import split_noised

QUICK = dict(quick=True, rhos="0.75,0.9", energies="0.8,0.95")


@pytest.fixture(scope="module")
def vision_cache(tmp_path_factory):
    """One cache of quick testbeds for the module (each seed's 2-block ViT trains once)."""
    previous = os.environ.get("UNMEMORIZE_CACHE")
    os.environ["UNMEMORIZE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("UNMEMORIZE_CACHE")
    else:
        os.environ["UNMEMORIZE_CACHE"] = previous


def test_tuning_and_validation_halves_partition_the_noised_images():
    _, noised = inject_noisy_labels(torch.arange(1437) % 10, 0.1, 10, seed=5)
    halves = split_noised(noised, seed=5)
    assert not bool((halves.tuning & halves.validation).any())
    assert torch.equal(halves.tuning | halves.validation, noised) and torch.equal(halves.clean, ~noised)
    assert halves.counts() == {"tuning": 72, "validation": 72, "clean_train": 1437 - 144}
    again = split_noised(noised, seed=5)
    assert torch.equal(again.tuning, halves.tuning)
    assert not torch.equal(split_noised(noised, seed=6).tuning, halves.tuning)


def test_choose_applies_the_rule_and_records_when_no_candidate_meets_it():
    baseline = {"clean_train": 0.99}
    points = [{"memorized_tuning": 0.1, "clean_train": 0.80}, {"memorized_tuning": 0.4, "clean_train": 0.97},
              {"memorized_tuning": 0.5, "clean_train": 0.99}]
    met = choose(points, baseline, 0.05)
    assert met["rule_met"] is True and met["memorized_tuning"] == 0.4  # 0.1 is outside the budget
    fallback = choose(points, baseline, 0.001)  # only 0.99 >= 0.989: still met
    assert fallback["rule_met"] is True and fallback["memorized_tuning"] == 0.5
    none = choose(points[:2], baseline, 0.001)
    assert none["rule_met"] is False and none["memorized_tuning"] == 0.1  # the fallback, flagged


def test_svd_grid_must_match_the_kfac_grid_and_seeds_parse():
    with pytest.raises(UnmemorizeError, match="as many values"):
        grids(VisionDemoConfig(rhos="0.9,0.99", energies="0.9"))
    assert seed_list(VisionDemoConfig(seed=4)) == [4] and seed_list(VisionDemoConfig(seeds="0, 1,2")) == [0, 1, 2]
    with pytest.raises(UnmemorizeError, match="repeats"):
        seed_list(VisionDemoConfig(seeds="1,1"))


def test_the_choice_never_reads_the_validation_half_or_the_heldout_images(vision_cache):
    """Scrambling the validation half (labels and pixels) and the held-out labels leaves every choice unchanged."""
    from unmemorize.basis import decompose_factors
    from unmemorize.curvature import CollectConfig, ImageClassificationObjective, collect_factors
    from unmemorize.vision.demo import _modules
    from unmemorize.vision.train import load_vision

    testbed = load_vision(vision_config(VisionDemoConfig(**QUICK)), progress=False)
    model = testbed.model
    halves = split_noised(testbed.noised, 0)
    batches = [{"pixel_values": testbed.train.images, "labels": testbed.noisy_labels}]
    factors = collect_factors(model, batches, _modules(model, None), CollectConfig(progress=False), ImageClassificationObjective(model))
    bases = decompose_factors(factors)
    rhos, energies = grids(VisionDemoConfig(**QUICK))
    original = tune(model, testbed, halves, factors, bases, rhos, energies, 0.05)

    noisy, images = testbed.noisy_labels.clone(), testbed.train.images.clone()
    v = halves.validation
    noisy[v] = (testbed.train.labels[v] + 1 + (noisy[v] - testbed.train.labels[v] + 3) % 9) % 10  # another wrong class
    assert bool((noisy[v] != testbed.noisy_labels[v]).any()) and bool((noisy[v] != testbed.train.labels[v]).all())
    images[v] = torch.randn(images[v].shape, generator=torch.Generator().manual_seed(9))
    heldout = replace(testbed.validation, labels=testbed.validation.labels.roll(1))
    scrambled = replace(testbed, noisy_labels=noisy, train=replace(testbed.train, images=images), validation=heldout)
    changed = tune(model, scrambled, halves, factors, bases, rhos, energies, 0.05)

    for method in ("kfac", "svd", "svd_matched"):
        keep = ("blocks", "rho", "energy", "rule_met", "memorized_tuning", "clean_train")
        assert {k: original[method].get(k) for k in keep} == {k: changed[method].get(k) for k in keep}, method
    assert original["candidates"] == changed["candidates"] == {"kfac": 2 * 2 + 2, "svd": 2 * 2 + 2}
    assert [(p["memorized_tuning"], p["clean_train"]) for p in original["sweep"]] == [(p["memorized_tuning"], p["clean_train"]) for p in changed["sweep"]]
    # the scrambling did reach the evaluation: the validation half's scores moved
    assert any(a["memorized_validation"] != b["memorized_validation"] for a, b in zip(original["sweep"], changed["sweep"]))


def test_two_seeds_write_their_folders_and_a_combined_mean_std(vision_cache, tmp_path):
    out = tmp_path / "v"
    combined = run_vision_demo(VisionDemoConfig(**QUICK, seeds="0,1", out=str(out)))
    runs = {}
    for seed in (0, 1):
        folder = out / f"seed-{seed}"
        for name in ("report.md", "results.json", "per_block.png", "tuning_candidates.png", "analysis/bands_memorized.png"):
            assert (folder / name).stat().st_size > 500, (seed, name)
        runs[seed] = strict_loads((folder / "results.json").read_text())
        saved = runs[seed]
        assert set(saved["methods"]) == {"baseline", "kfac", "svd", "svd_matched", "random"}
        assert isinstance(saved["rule_met"]["kfac"], bool) and isinstance(saved["rule_met"]["svd"], bool)
        assert saved["methods"]["kfac"]["rule_met"] == saved["rule_met"]["kfac"]
        assert saved["n"]["tuning"] + saved["n"]["validation"] == saved["config"]["vision"]["noised_images"]
        assert saved["config"]["candidates"]["kfac"] == saved["config"]["candidates"]["svd"]
        assert saved["analysis"]["counted_positions"]["memorized"] == saved["config"]["vision"]["noised_images"]
        report = (folder / "report.md").read_text()
        assert ("rule was met" in report or "rule was NOT met" in report) and "(n=" in report
    assert runs[0]["config"]["vision"]["key"] != runs[1]["config"]["vision"]["key"]  # two testbeds
    saved = strict_loads((out / "results.json").read_text())
    assert saved["config"]["seeds"] == [0, 1] and saved["rule_met"]["kfac"] == [runs[0]["rule_met"]["kfac"], runs[1]["rule_met"]["kfac"]]
    for method in ("baseline", "kfac", "svd", "svd_matched", "random"):
        for key, count in (("memorized_validation", "validation"), ("heldout", "heldout"), ("clean_train", "clean_train")):
            values = [runs[s]["methods"][method][key] for s in (0, 1)]
            cell = saved["aggregate"][method][key]
            assert cell["mean"] == pytest.approx(statistics.mean(values)) and cell["std"] == pytest.approx(statistics.stdev(values))
            half = 12.706204736174707 * statistics.stdev(values) / 2 ** 0.5  # t(0.975, 1) x std / sqrt(2 seeds), then clipped
            low, high = max(0.0, statistics.mean(values) - half), min(1.0, statistics.mean(values) + half)
            assert (cell["low"], cell["high"]) == pytest.approx((low, high)) and "pooled" not in cell
            assert cell["n_per_seed"] == [runs[0]["n"][count], runs[1]["n"][count]] and cell["per_seed"] == values
    assert combined["aggregate"] == saved["aggregate"]
    assert "seed-0/report.md" in (out / "report.md").read_text()


@pytest.mark.skipif(not Path(FASHION_MNIST_DEBIAN, "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DEBIAN} (apt-get install dataset-fashion-mnist)")
def test_debian_fashion_mnist_files_load():
    train, heldout, classes = load_fashion_mnist(FASHION_MNIST_DEBIAN, 500)
    assert train.images.shape == (500, 1, 28, 28) and heldout.images.shape == (10000, 1, 28, 28) and classes == 10
    assert sorted(set(heldout.labels.tolist())) == list(range(10)) and float(train.images.min()) == -1.0
    assert vision_config(VisionDemoConfig(dataset="fashion-mnist")).dataset == FASHION_MNIST_DEBIAN


def test_demo_vision_on_the_command_line_runs_the_vision_demo_with_its_options(tmp_path, monkeypatch):
    """``unmemorize demo --vision`` reaches ``run_vision_demo`` with the options mapped (it once
    imported a module that does not exist)."""
    import unmemorize.vision.demo as vision_demo
    from unmemorize.cli import main

    seen = []
    monkeypatch.setattr(vision_demo, "run_vision_demo", lambda config: seen.append(config) or {})
    out = tmp_path / "vision"
    assert main(["demo", "--vision", "--quick", "--seeds", "0,1", "--vision-dataset", "fashion-mnist", "--noise-fraction", "0.2",
                 "--vision-positions", "all", "--fisher", "empirical", "--out", str(out)]) == 0
    assert len(seen) == 1
    config = seen[0]
    assert (config.out, config.quick, config.seeds, config.dataset, config.noise_fraction, config.positions, config.fisher) == (
        str(out), True, "0,1", "fashion-mnist", 0.2, "all", "empirical")
