"""Image classification with a ViT, a timm model (EfficientNet, ResNet, ConvNeXt...) or any image classifier.

    finetune-kit train image_classification --config image_classification_vit_digits
    finetune-kit train image_classification --config image_classification_efficientnet_textile

Images come from a folder (`root/<label>/*.png`), a CSV / JSON(L) of paths and labels, or `sklearn:digits`; every
file is opened before training starts. The checkpoint's own image processor (size, mean, std; for a timm checkpoint
timm's data config, kept in its config.json) prepares images for training and for prediction alike, and is saved
with the model; augmentations (flip, crop) apply to training only. The checkpoint's head is replaced for the new
labels; `freeze_layers` freezes the lower layers (ViT) or stages (timm), LoRA keeps the new head trainable whole.
"""

from __future__ import annotations

import torch
from transformers import Trainer, set_seed

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import ImageClassificationConfig
from finetune_kit.data import cap_train
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import classification as clf
from finetune_kit.tasks import images as img
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(ImageClassificationConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    examples, names, splits = img.labelled_image_splits(cfg)  # every image, label and split, before the model loads
    # Images stay as they are (paths or PIL objects) in a side list; the datasets hold their index.
    images = [e["image"] for e in examples]
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)

    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    model, processor, resized = img.load_classifier(cfg, names)
    if resized:  # a timm checkpoint's data config, changed by image_size: saved with the run's config.json
        print(f"input: {resized}")
    if task.freeze_layers:
        img.freeze_lower(model, task.freeze_layers)
    if cfg.model.use_peft:
        model = img.with_adapters(model, cfg.model)

    # Preprocess every image once with the checkpoint's processor (cached by datasets); augment tensors per batch.
    def encode(batch):
        return {"pixel_values": img.pixel_values(processor, [images[i] for i in batch["index"]]).numpy()}

    splits = {k: v.map(encode, batched=True, batch_size=256, remove_columns=["index"]).with_format("torch")
              if v is not None else None for k, v in splits.items()}
    generator = torch.Generator().manual_seed(args.seed)
    train = splits["train"]
    if task.augment != "none":
        train = train.with_transform(lambda b: {
            "pixel_values": [img.augment(torch.as_tensor(x), task.augment, generator) for x in b["pixel_values"]],
            "label": b["label"]})
    held = {k: v for k, v in splits.items() if k != "train" and v is not None}
    args.remove_unused_columns = False  # the collator reads 'label' itself

    weights = clf.class_weights(list(splits["train"]["label"]), len(names), task.class_weights) \
        if task.class_weights else None
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held.get("validation"),
                      processing_class=processor, data_collator=_collate, compute_metrics=clf.metrics_fn(clf.SINGLE),
                      compute_loss_func=clf.weighted_loss(weights) if weights is not None else None,
                      callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    final = held.get("test") or held.get("validation")
    if final is not None:
        output = trainer.predict(final, metric_key_prefix="test" if "test" in held else "eval")
        metrics.update(output.metrics)
        metrics["per_class"] = clf.per_class_report(output.predictions, output.label_ids, names)

    finish_run(trainer, cfg, "image_classification", metrics, decisions)
    return metrics


def _collate(rows: list[dict]) -> dict:
    return {"pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
            "labels": torch.tensor([int(r["label"]) for r in rows])}


if __name__ == "__main__":
    run_cli(main)
