"""Text classification with a BERT-family encoder: single sentence or pairs; single-, multi-label or regression.

    finetune-kit train text_classification --config text_classification_minilm_sst2
    accelerate launch -m finetune_kit.recipes.text_classification --config ...
    finetune-kit train text_classification --config ...

Labels come from the data (the head is sized to them, `id2label` saved with the model); splits are stratified by
label; class imbalance is handled by `class_weights` (weighted loss) or `sampling` (balanced sampler, over- or
undersampling); `freeze_layers` freezes the embeddings and lower layers; LoRA keeps the head trainable. The test
split's metrics and a per-class report land in `eval_results.json`.
"""

from __future__ import annotations

import torch
from peft import get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    set_seed,
)
from trl import get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import TextClassificationConfig
from finetune_kit.data import cap_train
from finetune_kit.decisions import Decisions
from finetune_kit.errors import UserError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_tokenizer, resolve_checkpoint
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import classification as clf
from finetune_kit.trainer_setup import prepare_trainer


class BalancedTrainer(Trainer):
    """Draws training rows so every class is equally likely per batch (`sampling: balanced`)."""

    def _get_train_sampler(self, *args, **kwargs):
        labels = torch.tensor(self.train_dataset["labels"])
        weights = (1.0 / torch.bincount(labels).float())[labels]
        return torch.utils.data.WeightedRandomSampler(weights, len(labels), generator=torch.Generator().manual_seed(
            self.args.seed))


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(TextClassificationConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    splits, problem, names = clf.labelled_splits(cfg)  # every row read, labelled and split, before the model loads
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)
    if task.sampling in ("oversample", "undersample"):
        splits["train"] = clf.resample(splits["train"], task.sampling, args.seed)

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)

    def tokenize(batch):
        pair = batch["text_pair"] if task.text_pair_column else None
        encoded = tokenizer(batch["text"], pair, truncation=True, max_length=task.max_length)
        return {**encoded, "labels": batch["label"]}

    splits = {k: v.map(tokenize, batched=True, remove_columns=v.column_names) if v is not None else None
              for k, v in splits.items()}

    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve_checkpoint(cfg.model.model_name_or_path, whole=True), num_labels=len(names), problem_type=problem,
            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
            ignore_mismatched_sizes=task.ignore_mismatched_sizes, trust_remote_code=args.trust_remote_code)
    except (RuntimeError, ValueError) as err:
        if "size mismatch" not in str(err) and "ignore_mismatched_sizes" not in str(err):
            raise
        raise UserError(f"{cfg.model.model_name_or_path} has a classification head of another size than the "
                        f"{len(names)} labels in the data; set ignore_mismatched_sizes: true to replace it.") from None
    if task.freeze_layers:
        clf.freeze_lower_layers(model, task.freeze_layers)
    if cfg.model.use_peft:
        cfg.model.lora_task_type = "SEQ_CLS"  # peft then keeps the new head trainable (modules_to_save)
        model = get_peft_model(model, get_peft_config(cfg.model))

    weights = clf.class_weights(splits["train"]["labels"], len(names), task.class_weights) \
        if task.class_weights and problem == clf.SINGLE else None
    trainer = (BalancedTrainer if task.sampling == "balanced" else Trainer)(
        model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=clf.metrics_fn(problem),
        compute_loss_func=clf.weighted_loss(weights) if weights is not None else None,
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    final_split = splits["test"] or splits["validation"]
    if final_split is not None:
        output = trainer.predict(final_split, metric_key_prefix="test" if splits["test"] else "eval")
        metrics.update(output.metrics)
        if problem == clf.SINGLE and trainer.is_world_process_zero():
            metrics["per_class"] = clf.per_class_report(output.predictions, output.label_ids, names)
            _print_report(metrics["per_class"], names)

    finish_run(trainer, cfg, "text_classification", metrics, decisions)
    return metrics


def _print_report(report: dict, names: list[str]) -> None:
    print(f"{'label':>16}  precision  recall  f1      support")
    for name in names:
        r = report[name]
        print(f"{name:>16}  {r['precision']:.3f}      {r['recall']:.3f}   {r['f1-score']:.3f}   {int(r['support'])}")


if __name__ == "__main__":
    run_cli(main)
