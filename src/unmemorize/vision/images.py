"""Images from disk for the commands, through the model's own image processor.

``read_images(path, processor)`` -> ``pixel_values`` (N, C, H, W) from any of:

* a **folder of class subfolders** (``root/<class>/<image>``, the layout of torchvision's
  ``ImageFolder``): every ``.png``/``.jpg``/``.jpeg``/``.bmp``/``.gif``/``.webp``/``.tif`` file, in
  sorted order (classes, then names); the labels are not needed (the true Fisher samples them);
* a **datasets folder** (``Dataset.save_to_disk``) or a **parquet file** with an image column
  (``image``, ``img``, or the only column of ``Image`` type); images stored as bytes are decoded;
* a **.safetensors** file with a ``pixel_values`` tensor (already processed).

The processor is the model's (``AutoImageProcessor.from_pretrained`` on the model folder or hub id),
so resizing and normalisation are what the model was trained with. Every unreadable image is an
error naming its file or row, before any model is loaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import UnmemorizeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")


def load_image_processor(model: str, trust_remote_code: bool = False, required: bool = True):
    """The model's image processor (None, when ``required`` is false and the model has none)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        if not required:
            return None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnmemorizeError(f"model {model!r} has no image processor that loads (preprocessor_config.json): {first}; "
                              "give images as a .safetensors file of processed 'pixel_values' instead") from None


def read_pixel_file(path: str | Path, limit: int | None = None) -> torch.Tensor:
    """``pixel_values`` (N, C, H, W) from a .safetensors file (already processed images)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        raise UnmemorizeError(f"image source {str(path)!r} must be an existing .safetensors file with 'pixel_values'")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UnmemorizeError(f"{path}: not a readable safetensors file ({exc})") from None
    if "pixel_values" not in tensors or tensors["pixel_values"].ndim != 4:
        raise UnmemorizeError(f"{path}: needs a 'pixel_values' tensor of shape (N, C, H, W); found {sorted(tensors)}")
    pixels = tensors["pixel_values"]
    return pixels[:limit] if limit else pixels


def _open(source, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(source)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnmemorizeError(f"{where}: not a readable image ({exc.__class__.__name__})") from None
    return image.convert("RGB")


def _folder_images(root: Path) -> list[tuple[str, object]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UnmemorizeError(f"--images {str(root)!r}: a folder of images needs one subfolder per class (root/<class>/<image>), "
                              "or give a datasets folder, a parquet file or a .safetensors file")
    files = [f for c in classes for f in sorted(c.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UnmemorizeError(f"--images {str(root)!r}: its class subfolders hold no image ({', '.join(IMAGE_SUFFIXES)})")
    return [(str(f), f) for f in files]


def _table_images(path: Path) -> list[tuple[str, object]]:
    import datasets

    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
        else:
            table = datasets.Dataset.from_parquet(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets/pyarrow raise many types
        raise UnmemorizeError(f"--images {str(path)!r}: cannot be read as a datasets folder or parquet file ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(table, datasets.DatasetDict):
        if len(table) != 1:
            raise UnmemorizeError(f"--images {str(path)!r} holds the splits {', '.join(table)}; give the folder of one split")
        table = next(iter(table.values()))
    typed = [name for name, feature in table.features.items() if isinstance(feature, datasets.Image)]
    column = typed[0] if len(typed) == 1 else next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
    if column is None:
        raise UnmemorizeError(f"--images {str(path)!r}: no image column (one of Image type, or named {', '.join(IMAGE_COLUMNS)}); "
                              f"columns: {', '.join(table.column_names)}")
    table = table.cast_column(column, datasets.Image(decode=False))
    items = []
    for row, value in enumerate(table[column]):
        where = f"{path} row {row} ({column})"
        if isinstance(value, dict) and value.get("bytes"):
            items.append((where, io.BytesIO(value["bytes"])))
        elif isinstance(value, dict) and value.get("path"):
            items.append((where, value["path"]))
        else:
            raise UnmemorizeError(f"{where}: holds no image bytes or path")
    if not items:
        raise UnmemorizeError(f"--images {str(path)!r}: no rows")
    return items


def _is_dataset_folder(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def read_images(path: str | Path, processor=None, limit: int | None = None) -> torch.Tensor:
    """``pixel_values`` (N, C, H, W) float32 of the images at ``path`` (see module docstring), at most ``limit``."""
    path = Path(path)
    if not path.exists():
        raise UnmemorizeError(f"--images {str(path)!r} does not exist")
    if path.is_file() and path.suffix == ".safetensors":
        return read_pixel_file(path, limit)
    if processor is None:
        raise UnmemorizeError(f"--images {str(path)!r}: image files need the model's image processor")
    if path.is_dir() and not _is_dataset_folder(path):
        items = _folder_images(path)
    elif path.is_dir() or path.suffix == ".parquet":
        items = _table_images(path)
    else:
        raise UnmemorizeError(f"--images {str(path)!r}: give a folder of class subfolders, a datasets folder, a .parquet file "
                              "with an image column, or a .safetensors file of 'pixel_values'")
    items = items[:limit] if limit else items
    chunks = []
    for start in range(0, len(items), 64):  # decode and process in chunks: memory holds the pixels, not every PIL image
        images = [_open(source, where) for where, source in items[start:start + 64]]
        try:
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"].float())
        except Exception as exc:  # noqa: BLE001 - processors raise many types
            raise UnmemorizeError(f"--images {str(path)!r}: the model's image processor failed ({exc.__class__.__name__}: {exc})") from None
    return torch.cat(chunks)
