"""Token classification (NER, tagging) with a BERT-family encoder.

    finetune-kit train token_classification --config token_classification_minilm_conll
    finetune-kit train token_classification --config ...

Reads CoNLL-style files (token and tag per line, blank line between sentences; the tag column is detected) and
json / jsonl rows with token and tag lists. Word labels are aligned to sub-word tokens: the first sub-token carries
the word's label and the rest are ignored (or all carry it, with `label_all_tokens`). Entity-level precision,
recall and F1 come from seqeval through a local evaluate module.
"""

from __future__ import annotations

from transformers import (
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    Trainer,
    set_seed,
)

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import TokenClassificationConfig
from finetune_kit.data import cap_train
from finetune_kit.decisions import Decisions
from finetune_kit.errors import UserError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import tokens as tok
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(TokenClassificationConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    train, evaluation, test, names = tok.tagged_splits(cfg)  # every row read and split, before the model loads
    index = {n: i for i, n in enumerate(names)}
    b_to_i = {index[n]: index["I-" + n[2:]] for n in names if n.startswith("B-") and "I-" + n[2:] in index}
    train = cap_train(train, cfg.data.max_train_samples)

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    if not tokenizer.is_fast:
        raise UserError("token classification needs a fast tokenizer (word ids map tags onto sub-words).")

    def encode(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=task.max_length)
        encoded["labels"] = [
            tok.align_labels(encoded.word_ids(i), [index[t] for t in tags], task.label_all_tokens, b_to_i)
            for i, tags in enumerate(batch["tags"])]
        return encoded

    train = train.map(encode, batched=True, remove_columns=train.column_names)
    evaluation = evaluation.map(encode, batched=True, remove_columns=evaluation.column_names) if evaluation else None
    test = test.map(encode, batched=True, remove_columns=test.column_names) if test is not None else None

    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_checkpoint(cfg.model.model_name_or_path, whole=True), num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id=index, ignore_mismatched_sizes=task.ignore_mismatched_sizes, trust_remote_code=args.trust_remote_code)
    if cfg.model.use_peft:
        model = with_task_adapters(model, cfg.model, "TOKEN_CLS", head="classifier")

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                      processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
                      compute_metrics=tok.metrics_fn(names), callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if evaluation is not None:
        metrics.update(trainer.evaluate())
    if test is not None:
        metrics.update(trainer.evaluate(test, metric_key_prefix="test"))
    finish_run(trainer, cfg, "token_classification", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
