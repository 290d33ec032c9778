"""Vision: CLS-only factors by definition, exact noisy-label injection, Table 2 metrics, the quick demo."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification

from conftest import capture_module_io, relative_error
from unmemorize.curvature import CollectConfig, ImageClassificationObjective, collect_factors
from unmemorize.errors import UnmemorizeError
from unmemorize.targets import preset_modules, resolve_targets
from unmemorize.vision import inject_noisy_labels, noisy_label_metrics, read_idx


def tiny_vit():
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(config).double().eval()


def brute_force_cls_factors(model, images, labels, names):
    """One image at a time; A, G from the CLS token's module input / output gradient."""
    for p in model.parameters():
        p.requires_grad_(True)
    sums = {n: [0, 0] for n in names}
    for image, label in zip(images, labels):
        with capture_module_io(model, names) as captured:
            logits = model(pixel_values=image[None]).logits
        loss = torch.nn.functional.cross_entropy(logits, label[None], reduction="sum")
        model.zero_grad()
        loss.backward()
        for n in names:
            a, out = captured[n]
            sums[n][0] = sums[n][0] + torch.outer(a[0, 0], a[0, 0]).detach()
            sums[n][1] = sums[n][1] + torch.outer(out.grad[0, 0], out.grad[0, 0])
    for p in model.parameters():
        p.requires_grad_(False)
    return {n: (sums[n][0] / len(images), sums[n][1] / len(images)) for n in names}


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_cls_only_factors_match_brute_force(fisher):
    model = tiny_vit()
    images = torch.randn(7, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 5, (7,), generator=torch.Generator().manual_seed(2))
    names = resolve_targets(model)
    assert len(names) == 4  # fc1, fc2 of both blocks
    objective = ImageClassificationObjective(model, "cls")
    sampled = []
    original = objective.label_sampler
    objective.label_sampler = lambda logits, generator: sampled.append(original(logits, generator)) or sampled[-1]
    batches = [{"pixel_values": images[:4], "labels": labels[:4]}, {"pixel_values": images[4:], "labels": labels[4:]}]
    factors = collect_factors(model, batches, names, CollectConfig(fisher=fisher, dtype="float64", progress=False), objective)
    used = torch.cat(sampled) if fisher == "true" else labels
    expected = brute_force_cls_factors(model, images, used, names)
    assert factors.num_positions == 7 and factors.metadata["positions"] == "CLS token only"
    for n in names:
        assert relative_error(factors.activation[n], expected[n][0]) < 1e-8
        assert relative_error(factors.gradient[n], expected[n][1]) < 1e-8
    every_token = collect_factors(model, batches, names, CollectConfig(fisher="empirical", dtype="float64", progress=False),
                                  ImageClassificationObjective(model, "all"))
    assert every_token.num_positions == 7 * 5  # CLS + 4 patches per image


def test_noisy_labels_are_seeded_exact_and_always_wrong():
    labels = torch.arange(1000) % 10
    noisy, mask = inject_noisy_labels(labels, 0.1, 10, seed=3)
    again, again_mask = inject_noisy_labels(labels, 0.1, 10, seed=3)
    assert torch.equal(noisy, again) and torch.equal(mask, again_mask)
    assert int(mask.sum()) == 100 and bool((noisy[mask] != labels[mask]).all()) and torch.equal(noisy[~mask], labels[~mask])
    other, other_mask = inject_noisy_labels(labels, 0.1, 10, seed=4)
    assert not torch.equal(mask, other_mask)
    assert int(inject_noisy_labels(labels, 0.237, 10, 0)[1].sum()) == 237
    with pytest.raises(UnmemorizeError):
        inject_noisy_labels(labels, 1.5, 10, 0)


def test_table2_metrics_on_hand_made_predictions():
    true = torch.tensor([0, 1, 2, 3, 4, 5])
    noisy = torch.tensor([9, 1, 8, 3, 7, 5])
    noised = noisy != true  # images 0, 2, 4
    predictions = torch.tensor([9, 1, 2, 0, 1, 5])  # 0: memorized, 2: recovered, 4: neither; clean 1, 5 right, 3 wrong
    metrics = noisy_label_metrics(predictions, true, noisy, noised, torch.tensor([1, 2, 3, 3]), torch.tensor([1, 2, 3, 4]))
    assert metrics == pytest.approx({"memorized": 1 / 3, "recovery": 1 / 3, "clean_train": 2 / 3, "validation": 0.75})


def test_idx_reader_and_its_errors(tmp_path):
    import struct

    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    (tmp_path / "x-idx3-ubyte").write_bytes(data)
    assert read_idx(tmp_path / "x-idx3-ubyte").tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(UnmemorizeError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loads_from_standard_idx_files(tmp_path):
    import gzip
    import struct

    from unmemorize.vision import load_fashion_mnist

    def idx(values, shape):
        return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + bytes(values)

    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx([0, 255] * 4 * 28 * 14, (4, 28, 28))))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx([3, 1, 4, 1], (4,)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx([128] * 2 * 28 * 28, (2, 28, 28)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx([5, 9], (2,)))
    train, validation, classes = load_fashion_mnist(tmp_path)
    assert train.images.shape == (4, 1, 28, 28) and classes == 10
    assert train.labels.tolist() == [3, 1, 4, 1] and validation.labels.tolist() == [5, 9]
    assert float(train.images.min()) == -1.0 and float(train.images.max()) == 1.0
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UnmemorizeError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_analyze_cli_on_a_vit_uses_cls_tokens_and_kfac_factors(tmp_path, capsys):
    """``unmemorize analyze`` on a saved ViT with image sources and factors from the Python API."""
    from unmemorize.cli import main
    from unmemorize.curvature import save_factors

    model = tiny_vit().float()
    model.save_pretrained(tmp_path / "vit")
    generator = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(12, 1, 8, 8, generator=generator), torch.randn(7, 1, 8, 8, generator=generator) * 2
    save_file({"pixel_values": clean}, tmp_path / "clean.safetensors")
    save_file({"pixel_values": noisy}, tmp_path / "noisy.safetensors")
    names = preset_modules(model, None, ["fc1", "fc2"])
    factors = collect_factors(model, [{"pixel_values": clean}], names, CollectConfig(progress=False), ImageClassificationObjective(model))
    save_factors(factors, tmp_path / "factors", model=model)
    out = tmp_path / "analysis"
    assert main(["analyze", "--model", str(tmp_path / "vit"), "--factors", str(tmp_path / "factors"), "--clean",
                 str(tmp_path / "clean.safetensors"), "--memorized", str(tmp_path / "noisy.safetensors"), "--out", str(out)]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["counted_positions"] == {"clean": 12, "memorized": 7} and result["config"]["positions"] == "cls"
    assert set(result["modules"]) == set(names) and (out / "bands_memorized.png").stat().st_size > 0
    # a wrong image file is one clear error
    save_file({"images": clean}, tmp_path / "bad.safetensors")
    assert main(["analyze", "--model", str(tmp_path / "vit"), "--clean", str(tmp_path / "bad.safetensors"), "--memorized",
                 str(tmp_path / "noisy.safetensors"), "--bases", "svd", "--out", str(tmp_path / "b")]) == 2
    assert "needs a 'pixel_values' tensor" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_vit_from_the_command_line_collect_edit_and_analyze_on_images_in_three_formats(tmp_path, capsys):
    """collect --images (class folders; a datasets folder; a parquet file) through the model's own image processor,
    then edit and analyze; the edited folder loads in plain transformers with its processor."""
    import json

    import datasets
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, ViTImageProcessor

    from unmemorize.cli import main
    from unmemorize.vision.images import load_image_processor, read_images

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                              image_size=8, patch_size=4, num_labels=3))
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path / "vit")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12 + i % 3, 10, 3), dtype=np.uint8)) for i in range(9)]
    for i, image in enumerate(images):  # sizes differ: the processor resizes
        (tmp_path / "folder" / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "folder" / f"class{i % 3}" / f"{i}.png")
    datasets.Dataset.from_dict({"image": [str(tmp_path / "folder" / f"class{i % 3}" / f"{i}.png") for i in range(9)], "label": [i % 3 for i in range(9)]}
                               ).cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    datasets.load_from_disk(str(tmp_path / "ds")).to_parquet(str(tmp_path / "images.parquet"))
    processor = load_image_processor(str(tmp_path / "vit"))
    from_folder = read_images(tmp_path / "folder", processor)
    order = [int(p.stem) for c in sorted((tmp_path / "folder").iterdir()) for p in sorted(c.iterdir())]
    expected = AutoImageProcessor.from_pretrained(tmp_path / "vit")(images=[images[i] for i in order], return_tensors="pt")["pixel_values"]
    assert torch.equal(from_folder, expected)  # the model's own processor, images in sorted class/name order
    assert torch.equal(read_images(tmp_path / "ds", processor), read_images(tmp_path / "images.parquet", processor))
    common = ["--model", str(tmp_path / "vit"), "--batch-size", "4", "--no-progress"]
    for source in ("folder", "ds", "images.parquet"):
        assert main(["collect", *common, "--images", str(tmp_path / source), "--out", str(tmp_path / f"f-{source}")]) == 0
    info = json.loads((tmp_path / "f-folder" / "factors.json").read_text())
    assert info["objective"] == "image_classification" and info["num_positions"] == 9 and info["data"]["count"] == 9
    assert sorted(info["modules"]) == sorted(f"vit.layers.{b}.mlp.{p}" for b in (0, 1) for p in ("fc1", "fc2"))
    assert main(["edit", "--model", str(tmp_path / "vit"), "--factors", str(tmp_path / "f-folder"), "--rho", "0.6",
                 "--out", str(tmp_path / "edited")]) == 0
    edited = ViTForImageClassification.from_pretrained(tmp_path / "edited")
    assert AutoImageProcessor.from_pretrained(tmp_path / "edited").size == {"height": 8, "width": 8}
    assert not torch.equal(edited.vit.layers[0].mlp.fc1.weight, vit.vit.layers[0].mlp.fc1.weight)
    assert main(["analyze", "--model", str(tmp_path / "vit"), "--factors", str(tmp_path / "f-folder"), "--clean", str(tmp_path / "folder"),
                 "--memorized", str(tmp_path / "images.parquet"), "--out", str(tmp_path / "analysis")]) == 0
    capsys.readouterr()
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
    assert main(["collect", *common, "--images", str(tmp_path / "broken"), "--out", str(tmp_path / "f-broken")]) == 2
    assert "x.png: not a readable image" in capsys.readouterr().err and not (tmp_path / "f-broken").exists()
