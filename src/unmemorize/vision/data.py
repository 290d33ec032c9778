"""Images for the vision testbed, and the seeded noisy-label injection.

* scikit-learn's ``digits`` (1,797 8x8 grey images, 10 classes; shipped inside the package, no
  download) -- the default;
* Fashion-MNIST from the standard IDX files when the user points at their folder (Debian's
  ``dataset-fashion-mnist`` installs them): ``train-images-idx3-ubyte[.gz]`` etc.

``inject_noisy_labels`` replaces exactly round(fraction * N) labels, chosen with a seeded
generator, each by a uniformly drawn *different* class: no noised label equals its true class.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UnmemorizeError


@dataclass
class ImageSplit:
    images: torch.Tensor  # (N, C, H, W) float32, roughly zero mean / unit scale
    labels: torch.Tensor  # (N,) int64, the true classes


def load_digits(seed: int = 0, validation_fraction: float = 0.2) -> tuple[ImageSplit, ImageSplit, int]:
    """(train, validation, num_classes) from scikit-learn's digits, split with a seeded permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = (images - 0.5) / 0.5
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(round(len(labels) * (1 - validation_fraction)))
    train, val = order[:cut], order[cut:]
    return ImageSplit(images[train], labels[train]), ImageSplit(images[val], labels[val]), 10


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; the format MNIST and Fashion-MNIST use."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UnmemorizeError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UnmemorizeError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise UnmemorizeError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise UnmemorizeError(f"{folder} has no {stem}[.gz] (expected the standard Fashion-MNIST IDX files)")


def load_fashion_mnist(folder: str | Path, train_limit: int | None = None) -> tuple[ImageSplit, ImageSplit, int]:
    """(train, test-as-validation, 10) from the IDX files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnmemorizeError(f"Fashion-MNIST folder {str(folder)!r} does not exist")

    def split(prefix: str, limit: int | None) -> ImageSplit:
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))[:limit]
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))[:limit]
        x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
        return ImageSplit((x - 0.5) / 0.5, torch.tensor(labels, dtype=torch.long))

    return split("train", train_limit), split("t10k", None), 10


def inject_noisy_labels(labels: torch.Tensor, fraction: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy_labels, noised_mask): exactly round(fraction * N) labels replaced by another class."""
    if not 0.0 <= fraction <= 1.0:
        raise UnmemorizeError(f"noise fraction must be in [0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    count = int(round(fraction * len(labels)))
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)  # 1..C-1: never the same class
    noisy = labels.clone()
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[chosen] = True
    return noisy, mask
