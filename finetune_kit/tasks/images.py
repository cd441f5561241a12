"""Image classification helpers: image sources, validation, the checkpoint's own preprocessing, a small ViT.

Sources: a folder `root/<label>/*.png|jpg`, a CSV / JSON(L) of image paths and labels, an in-memory
`datasets.Dataset` with an image column (from Python), or `sklearn:digits` (scikit-learn's bundled 8x8 digits,
the offline default). No pretrained ViT ships on PyPI, so `vit-tiny-from-config` builds a small ViT from a config;
any image-classification checkpoint works in its place.
"""

from __future__ import annotations

from pathlib import Path

from finetune_kit.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
FROM_CONFIG = "vit-tiny-from-config"


def digits_rows() -> list[tuple[str, dict]]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    return [(f"sklearn:digits row {i}", {"image": Image.fromarray(img), "label": str(int(t))})
            for i, (img, t) in enumerate(zip(images, digits.target), start=1)]


def folder_rows(root: Path) -> list[tuple[str, dict]]:
    rows = [(str(p), {"image": str(p), "label": p.parent.name})
            for p in sorted(root.glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not rows:
        raise DataError(f"{root}: no images found in label folders (expected {root}/<label>/*.png or *.jpg).")
    return rows


def table_rows(source: str, image_column: str, label_column: str) -> list[tuple[str, dict]]:
    from finetune_kit.data.readers import read_rows

    base = Path(source).parent
    rows = []
    for where, row in read_rows(source):
        for column in (image_column, label_column):
            if row.get(column) in (None, ""):
                raise DataError(f"{where}: missing field '{column}'.")
        path = Path(row[image_column])
        rows.append((where, {"image": str(path if path.is_absolute() else base / path), "label": str(row[label_column])}))
    return rows


def image_rows(source: str, image_column: str = "image", label_column: str = "label") -> list[tuple[str, dict]]:
    if source == "sklearn:digits":
        return digits_rows()
    path = Path(source).expanduser()
    if path.is_dir():
        return folder_rows(path)
    if not path.is_file():
        raise DataError(f"dataset not found: {source} (an image folder, a CSV/JSONL of paths, or sklearn:digits).")
    return table_rows(source, image_column, label_column)


def check_images(rows: list[tuple[str, dict]]) -> None:
    """Open every image file's header now, so an unreadable file stops the run before training."""
    from PIL import Image, UnidentifiedImageError

    for where, row in rows:
        if isinstance(row["image"], str):
            try:
                with Image.open(row["image"]) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"{where}: cannot read image {row['image']} ({type(err).__name__}: {err}).") from None


def labelled_images(cfg):
    """Every image row read, its file opened and its label checked before any model loads: (wheres, examples with
    label ids, label names). The image_classification recipe and the preflight (recipe table `data_check`)."""
    from finetune_kit.tasks import classification as clf

    task = cfg.task
    rows = image_rows(cfg.data.dataset_name, task.image_column, task.label_column)
    check_images(rows)
    examples = [row for _, row in rows]
    names = clf.label_names(examples, clf.SINGLE, task.labels, cfg.data.dataset_name)
    clf.encode_labels(examples, [w for w, _ in rows], clf.SINGLE, names, task.label_column)
    return [w for w, _ in rows], examples, names


def load_image(value):
    from PIL import Image

    image = Image.open(value) if isinstance(value, str) else value
    return image.convert("RGB")


def augment(pixels, how: str, generator):
    """Label-safe augmentations of one preprocessed image tensor [C, H, W]: mirror, and/or a random shift of up to
    1/8 of the size (pad then crop). Applied after the processor, so training and prediction share preprocessing."""
    import torch
    import torch.nn.functional as F

    if "flip" in how and torch.rand(1, generator=generator).item() < 0.5:
        pixels = pixels.flip(-1)
    if "crop" in how:
        _, height, width = pixels.shape
        pad = max(1, width // 8)
        padded = F.pad(pixels, (pad, pad, pad, pad))
        dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
        pixels = padded[:, dy:dy + height, dx:dx + width]
    return pixels


def pixel_values(processor, images):
    """The checkpoint's own preprocessing (size, mean, std): the one function used at train and predict time."""
    return processor([load_image(i) for i in images], return_tensors="pt")["pixel_values"]


def tiny_vit(names: list[str], image_size: int):
    """A small ViT built from a config, with a matching image processor (mean / std 0.5, resize to image_size)."""
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = ViTConfig(image_size=image_size, patch_size=max(2, image_size // 8), hidden_size=96,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=192, num_labels=len(names),
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    return ViTForImageClassification(config), processor
