"""Image-text helpers for the clip recipe: caption rows read and checked, the checkpoint's own preprocessing (one
function for training and evaluation), the collator, zero-shot classification, tower freezing, caption lengths.

Training rows hold an image and a caption: a CSV / JSON(L) with `image_column` and `caption_column` (relative image
paths are read from the file's folder), or an image folder root/<label>/* whose captions are `caption_template` with
the label filled in. Zero-shot images are labelled: a folder root/<label>/*, or a file with `label_column`.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from finetune_kit.errors import DataError, UserError
from finetune_kit.tasks import images as img

# Parameter-name parts of each tower in CLIP / SigLIP-style dual encoders (SigLIP has no separate projections).
TOWER_MODULES = {"vision": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # CLIP's and SigLIP's names, in both towers


def label_text(label: str, template: str) -> str:
    """The caption of a label: the template filled in, underscores read as spaces (folder red_circle -> red circle)."""
    return template.format(label=label.replace("_", " "))


def text_field(row: dict, column: str, what: str, where: str) -> str:
    if column not in row or row[column] is None:
        raise DataError(f"{where}: missing field '{column}' (the {what}; set {what}_column to the field that holds "
                        "it).")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{column}' (the {what}) must be non-empty text, got {value!r}.")
    return value


def caption_rows(source: str, task) -> list[tuple[str, dict]]:
    """(where, {image, caption, label}) for every row of a caption file or image folder (label "" for files)."""
    from finetune_kit.data.readers import read_rows

    path = Path(source).expanduser()
    if path.is_dir():
        rows = img.folder_rows(path)
        two_classes(rows, source)  # one class: every caption the same, nothing to contrast
        return [(w, {"image": r["image"], "caption": label_text(r["label"], task.caption_template),
                     "label": r["label"]}) for w, r in rows]
    if not path.is_file():
        raise DataError(f"dataset not found: {source} (a CSV / JSON(L) of image paths and captions, or an image "
                        "folder root/<label>/*).")
    out = []
    for where, row in read_rows(source):
        image = Path(text_field(row, task.image_column, "image", where))
        out.append((where, {"image": str(image if image.is_absolute() else path.parent / image),
                            "caption": text_field(row, task.caption_column, "caption", where), "label": ""}))
    return out


def two_classes(rows: list[tuple[str, dict]], source: str) -> list[str]:
    """The sorted class names of labelled rows; fewer than two is refused (zero-shot needs a choice to make)."""
    names = sorted({r["label"] for _, r in rows})
    if len(names) < 2:
        raise DataError(f"{source}: every image has the label '{names[0]}'; zero-shot classification (and a "
                        "contrast between captions) needs at least two classes: add a second label folder.")
    return names


def image_text_rows(cfg) -> dict[str, list[tuple[str, dict]]]:
    """Every row of the training, validation and zero-shot sources, every image decoded, before any model loads:
    the clip recipe and the preflight (recipe table `data_check`) both call it."""
    task = cfg.task
    out = {"train": caption_rows(cfg.data.dataset_name, task)}
    if cfg.data.eval_dataset_name:
        out["validation"] = caption_rows(cfg.data.eval_dataset_name, task)
    if task.zero_shot_dataset_name:
        out["zero_shot"] = img.image_rows(task.zero_shot_dataset_name, task.image_column, task.label_column)
        two_classes(out["zero_shot"], task.zero_shot_dataset_name)
    for rows in out.values():
        img.check_images(rows)
    return out


def image_text_splits(cfg) -> tuple[dict, dict]:
    """image_text_rows and the train / validation split of them: by the clip recipe and the preflight (recipe table
    `data_check`), so `check` refuses a ratio the rows cannot meet, as training would."""
    from finetune_kit.data import split_seed

    rows = image_text_rows(cfg)
    return rows, splits_of(rows, cfg, split_seed(cfg.data, cfg.training.seed))


def splits_of(rows: dict, cfg, seed: int) -> dict:
    """train / validation `datasets.Dataset`s of {image, caption, label}: a separate validation file, or a seeded
    split of the training rows (stratified by label for an image folder)."""
    from datasets import ClassLabel, Dataset

    from finetune_kit.data import cap_train, split

    splits = {name: Dataset.from_list([r for _, r in rows[name]]) for name in ("train", "validation") if name in rows}
    if "validation" not in splits and cfg.data.eval_split_ratio:
        train = splits["train"]
        labelled = all(train["label"])
        if labelled:  # datasets stratifies by a ClassLabel column: a temporary one, the label itself stays text
            names = sorted(set(train["label"]))
            train = train.add_column("stratum", [names.index(x) for x in train["label"]]).cast_column(
                "stratum", ClassLabel(names=names))
        parts = split(train, cfg.data.eval_split_ratio, seed, cfg.data.dataset_name,
                      stratify_by_column="stratum" if labelled else None)
        splits = {name: part.remove_columns("stratum") if labelled else part
                  for name, part in (("train", parts["train"]), ("validation", parts["test"]))}
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)
    return splits


def zero_shot_set(rows: dict, splits: dict, cfg) -> tuple[list, list[str], str] | None:
    """(images, labels, where they come from) of the zero-shot evaluation: zero_shot_dataset_name, else the
    validation split of a training image folder; None when there are no labelled held-out images."""
    if "zero_shot" in rows:
        part = [r for _, r in rows["zero_shot"]]
        seen = {str(Path(image).resolve()) for image in splits["train"]["image"]}
        overlap = sum(isinstance(r["image"], str) and str(Path(r["image"]).resolve()) in seen for r in part)
        if overlap:  # allowed (a user may want it), but then the figure is not zero-shot on unseen images
            print(f"warning: {overlap} of {len(part)} zero-shot images are also training images; the score after "
                  "training is not on unseen images")
        return [r["image"] for r in part], [r["label"] for r in part], cfg.task.zero_shot_dataset_name
    held = splits.get("validation")
    if held is not None and all(held["label"]) and len(set(held["label"])) >= 2:
        return list(held["image"]), list(held["label"]), f"the validation split of {cfg.data.dataset_name}"
    return None


def encode_texts(processor, texts: list[str], max_length: int, padding: str) -> dict:
    """Token ids (and the attention mask where the tokenizer makes one) of captions or class prompts, truncated to
    max_length: the one text preprocessing of training, evaluation and zero-shot prompts."""
    encoded = processor.tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: encoded[k] for k in ("input_ids", "attention_mask") if k in encoded}  # no BERT token_type_ids


def encode_images(processor, images) -> dict:
    """pixel_values from the checkpoint's own image processor (size, crop, mean, std), as image_classification."""
    return {"pixel_values": img.pixel_values(processor.image_processor, images)}


def collator(processor, max_length: int, padding: str):
    """Batches of images and their captions, preprocessed as the zero-shot evaluation preprocesses them; return_loss
    asks the model for its own contrastive loss (CLIP: symmetric cross-entropy; SigLIP: pairwise sigmoid)."""

    def collate(rows: list[dict]) -> dict:
        return {**encode_texts(processor, [r["caption"] for r in rows], max_length, padding),
                **encode_images(processor, [r["image"] for r in rows]), "return_loss": True}

    return collate


def _pooled(output):
    """transformers 5 returns the projected features as `pooler_output` of a model output; 4.x a tensor."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed(model, processor, images=None, texts=None, max_length: int = 77, padding: str = "longest",
          batch_size: int = 64):
    """Unit-length image or text embeddings, in batches, without gradients."""
    import torch

    device = next(model.parameters()).device
    items = images if images is not None else texts
    out = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            if images is not None:
                features = model.get_image_features(pixel_values=encode_images(processor, chunk)["pixel_values"]
                                                    .to(device))
            else:
                batch = encode_texts(processor, chunk, max_length, padding)
                features = model.get_text_features(**{k: v.to(device) for k, v in batch.items()})
            out.append(torch.nn.functional.normalize(_pooled(features).float(), dim=-1).cpu())
    return torch.cat(out)


def zero_shot_accuracy(image_embeds, text_embeds, labels: list[str], names: list[str]) -> dict:
    """Each image classified as the class whose prompt embedding is the most cosine-similar: accuracy, and per class
    the images, how many were right and how many were predicted as it."""
    import torch

    similarity = torch.nn.functional.normalize(image_embeds, dim=-1) @ torch.nn.functional.normalize(text_embeds,
                                                                                                      dim=-1).T
    predicted = similarity.argmax(dim=-1).tolist()
    truth = [names.index(label) for label in labels]
    per_class = {name: {"images": truth.count(i), "correct": sum(p == t == i for p, t in zip(predicted, truth)),
                        "predicted": predicted.count(i)} for i, name in enumerate(names)}
    correct = sum(p == t for p, t in zip(predicted, truth))
    return {"accuracy": round(correct / len(truth), 4), "images": len(truth), "classes": len(names),
            "per_class": per_class}


def zero_shot(model, processor, images, labels: list[str], template: str, max_length: int, padding: str,
              batch_size: int = 64) -> dict:
    """Zero-shot classification of labelled images: one prompt per class from the caption template."""
    names = sorted(set(labels))
    was_training = model.training
    model.eval()
    prompts = [label_text(name, template) for name in names]
    result = zero_shot_accuracy(embed(model, processor, images=images, batch_size=batch_size),
                                embed(model, processor, texts=prompts, max_length=max_length, padding=padding,
                                      batch_size=batch_size), labels, names)
    model.train(was_training)
    return {**result, "prompts": prompts}


def load_dual_encoder(name: str, trust_remote_code: bool = False):
    """(model, processor) of a dual-encoder checkpoint (CLIP, SigLIP, any AutoModel with get_image_features,
    get_text_features and its own contrastive loss), or a user error saying what the checkpoint is not."""
    import inspect

    from transformers import AutoModel, AutoProcessor

    from finetune_kit.models import resolve_checkpoint

    source = resolve_checkpoint(name, whole=True)
    model = AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not all(hasattr(model, f) for f in ("get_image_features", "get_text_features")):
        raise UserError(f"{name} is a {type(model).__name__}, not an image-text dual encoder (CLIP, SigLIP, ...): the "
                        "clip recipe needs get_image_features and get_text_features (`finetune-kit inspect` names "
                        "the recipes that fit a checkpoint).")
    if "return_loss" not in inspect.signature(model.forward).parameters:
        raise UserError(f"{name} ({type(model).__name__}) computes no contrastive loss of its own (no return_loss); "
                        "the clip recipe trains with the model's own loss (CLIP, SigLIP, ALIGN, AltCLIP ...).")
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
        raise UserError(f"{name}: its processor ({type(processor).__name__}) lacks an image processor and a "
                        "tokenizer; a dual-encoder checkpoint saves both (processor_config.json / "
                        "preprocessor_config.json and the tokenizer files).")
    return model, processor


def load_run(path: str):
    """(model, processor) of a clip run folder (a full model, or LoRA adapters merged into their base) or of any
    dual-encoder checkpoint, in eval mode: for scoring after training."""
    from finetune_kit.models import read_adapter_config

    adapter = read_adapter_config(Path(path)) if Path(path).is_dir() else None
    if adapter is None:
        model, processor = load_dual_encoder(path)
        return model.eval(), processor
    from peft import PeftModel
    from transformers import AutoProcessor

    base, _ = load_dual_encoder(adapter["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    return model.eval(), AutoProcessor.from_pretrained(path)


def text_limit(config) -> int:
    """The text tower's positions: the longest caption it can read."""
    return config.text_config.max_position_embeddings


def freeze_tower(model, tower: str) -> int:
    """Freeze one tower (its projection included; adapters in it too); returns the parameters frozen."""
    parts = TOWER_MODULES[tower]
    frozen = 0
    for name, param in model.named_parameters():
        if any(part in parts for part in name.split(".")):
            param.requires_grad_(False)
            frozen += param.numel()
    if not frozen:
        raise UserError(f"freeze_tower: {tower}, but the model has no module named {' or '.join(parts)}.")
    return frozen


def over_limit(tokenizer, captions: list[str], max_length: int) -> tuple[list[int], int]:
    """Token counts of captions (special tokens included) and how many max_length truncates."""
    lengths = [len(ids) for ids in tokenizer(captions)["input_ids"]]
    return lengths, sum(n > max_length for n in lengths)


def check_lengths(cfg, tokenizer) -> list[str]:
    """`finetune-kit check` (recipe table `length_check`): every caption and class prompt measured in tokens; those
    longer than the text tower reads (max_length, else its max_position_embeddings) are counted as truncated."""
    from transformers import AutoConfig

    from finetune_kit.models import resolve_checkpoint

    limit = cfg.task.max_length or text_limit(AutoConfig.from_pretrained(
        resolve_checkpoint(cfg.model.model_name_or_path), trust_remote_code=cfg.training.trust_remote_code))
    warnings = []
    for name, part in image_text_rows(cfg).items():
        if name == "zero_shot":
            texts = [label_text(n, cfg.task.caption_template) for n in sorted({r["label"] for _, r in part})]
        else:
            texts = [r["caption"] for _, r in part]
        lengths, cut = over_limit(tokenizer, texts, limit)
        what = "class prompts" if name == "zero_shot" else "captions"
        print(f"{name}: {len(texts)} {what}; tokens median {int(statistics.median(lengths))}, max {max(lengths)} "
              f"(max_length {limit})")
        if cut:
            warnings.append(f"{cut} of {len(texts)} {name} {what} are longer than max_length={limit} and will be "
                            "truncated.")
    return warnings
