"""Image classification helpers: image sources, validation, the checkpoint's own preprocessing, a small ViT.

Sources: a folder `root/<label>/*.png|jpg`, a CSV / JSON(L) of image paths and labels, an in-memory
`datasets.Dataset` with an image column (from Python), or `sklearn:digits` (scikit-learn's bundled 8x8 digits,
the offline default). No pretrained ViT ships on PyPI, so `vit-tiny-from-config` builds a small ViT from a config;
any image-classification checkpoint works in its place.
"""

from __future__ import annotations

from pathlib import Path

from finetune_kit.errors import DataError, UserError

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
    """Decode every image file now, so an unreadable one stops the run before training. Decoding, not only
    `verify()`: a truncated JPEG passes verify and fails later, inside preprocessing (2,000 250x250 JPEGs: 0.8 s)."""
    from PIL import Image, UnidentifiedImageError

    for where, row in rows:
        if isinstance(row["image"], str):
            try:
                with Image.open(row["image"]) as image:
                    image.load()
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


def labelled_image_splits(cfg) -> tuple[list, list[str], dict]:
    """labelled_images, then the stratified train / validation / test split of their indices: (examples, label names,
    splits of {index, label}). By the image_classification recipe and the preflight (recipe table `data_check`), so
    `check` refuses a ratio the images cannot meet, as training would."""
    from datasets import Dataset

    from finetune_kit.data import split_seed
    from finetune_kit.tasks import classification as clf

    _, examples, names = labelled_images(cfg)
    data = Dataset.from_dict({"index": list(range(len(examples))), "label": [e["label"] for e in examples]})
    splits = clf.stratified_splits(data, cfg.data.eval_split_ratio, cfg.task.test_split_ratio,
                                   split_seed(cfg.data, cfg.training.seed), stratify=True, source=cfg.data.dataset_name)
    return examples, names, splits


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


def load_classifier(cfg, names: list[str]):
    """(model, processor, what was decided) for the configured checkpoint, with a new head for `names`: the small
    ViT built from a config, a timm architecture from its config (`timm:<arch>`, random weights), or any
    checkpoint (hub id, folder, embedded name) through AutoModelForImageClassification, timm ones included."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from finetune_kit.models import resolve_checkpoint
    from finetune_kit.tasks import timm_models as tm

    name, task = cfg.model.model_name_or_path, cfg.task
    if name == FROM_CONFIG:
        return (*tiny_vit(names, task.image_size or 32), None)
    if name.startswith(tm.TIMM_PREFIX):
        model = tm.from_architecture(name[len(tm.TIMM_PREFIX):], names)
    else:
        source = resolve_checkpoint(name, whole=True)
        if tm.is_timm_folder(source) or source.startswith("timm/"):
            tm.import_timm()  # before transformers imports timm for its TimmWrapper classes
        try:
            model = AutoModelForImageClassification.from_pretrained(
                source, num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=task.ignore_mismatched_sizes)
        except (RuntimeError, ValueError) as err:
            if "size mismatch" not in str(err) and "ignore_mismatched_sizes" not in str(err):
                raise
            raise UserError(f"{name} has a classification head of another size than the {len(names)} labels in the "
                            "data; set ignore_mismatched_sizes: true to replace it.") from None
        if model.config.model_type != "timm_wrapper":
            if task.image_size is not None:
                raise UserError(f"image_size does nothing for {name} (its image processor decides the size; only "
                                "vit-tiny-from-config and timm checkpoints read it): remove it.")
            return model, AutoImageProcessor.from_pretrained(source), None
    # TimmWrapperConfig saves `label_names` (not id2label), keeping a loaded checkpoint's own (1,000 ImageNet names)
    # unless replaced: the run would then load back with LABEL_0...
    model.config.label_names = list(names)
    why = tm.set_input_size(model, task.image_size)
    return model, tm.processor_for(model), why


def freeze_lower(model, n: int) -> list[str]:
    """freeze_layers for a ViT (embeddings + lowest layers) or a timm model (stem + lowest stages)."""
    from finetune_kit.tasks import classification as clf
    from finetune_kit.tasks import timm_models as tm

    if model.config.model_type == "timm_wrapper":
        return tm.freeze_lower_stages(model, n)
    return clf.freeze_lower_layers(model, n)


def with_adapters(model, model_args):
    """LoRA on the body, the new head trained whole; targets that match no layer are named with the layers there are
    (timm CNNs such as EfficientNet have no Linear layer besides the head: all-linear finds nothing)."""
    import torch

    from finetune_kit.models import with_task_adapters
    from finetune_kit.tasks import timm_models as tm

    if model_args.model_name_or_path.startswith(tm.TIMM_PREFIX):
        raise UserError(f"use_peft with {model_args.model_name_or_path}: its weights are random and would not be "
                        "saved with the adapters; train it whole (use_peft: false), or LoRA a pretrained checkpoint.")
    timm = model.config.model_type == "timm_wrapper"
    head = tm.head_name(model) if timm else "classifier"
    try:
        return with_task_adapters(model, model_args, None, head=head)
    except ValueError as err:
        if "target" not in str(err):
            raise
        kinds = (torch.nn.Linear, torch.nn.Conv2d)
        layers = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)
                         and not n.startswith(head)})
        raise UserError(f"lora_target_modules {model_args.lora_target_modules} match no layer of "
                        f"{model_args.model_name_or_path} besides its head; its Linear / Conv2d layers: "
                        f"{', '.join(layers[:12])}" + (" (e.g. [conv_pw, conv_pwl]: the 1x1 convolutions)"
                                                       if "conv_pw" in layers else "") + ".") from None


def tiny_vit(names: list[str], image_size: int):
    """A small ViT built from a config, with a matching image processor (mean / std 0.5, resize to image_size)."""
    import tempfile

    from transformers import AutoImageProcessor, ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config = ViTConfig(image_size=image_size, patch_size=max(2, image_size // 8), hidden_size=96,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=192, num_labels=len(names),
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                     image_std=[0.5] * 3)
    # Train with the class `predict` will load from the run folder: AutoImageProcessor picks the torchvision backend
    # when torchvision is installed (timm needs it), whose resize differs from PIL's in the last digits.
    with tempfile.TemporaryDirectory() as folder:
        processor.save_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    return ViTForImageClassification(config), processor
