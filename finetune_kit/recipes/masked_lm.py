"""Continued masked-language-model pretraining of a BERT-family encoder on plain text (BERT's own objective).

    finetune-kit train masked_lm --config masked_lm_minilm_c4
    finetune-kit train masked_lm --config ...

Text comes from .txt (a row per non-empty line) or json / jsonl / csv rows with a text column. Documents are
concatenated and cut into blocks of `max_length` tokens (or kept one per row with `line_by_line`), and
transformers' collator masks `mlm_probability` of the tokens. Perplexity on held-out text is reported before and
after training.
"""

from __future__ import annotations

import math
from itertools import chain

from datasets import Dataset
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    set_seed,
)

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import MaskedLMConfig
from finetune_kit.data import cap_train, read_rows
from finetune_kit.decisions import Decisions
from finetune_kit.errors import DataError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def texts_of(source: str, column: str) -> list[str]:
    texts = []
    for where, row in read_rows(source):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field '{column}' must be non-empty text.")
        texts.append(value)
    return texts


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(MaskedLMConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    texts = texts_of(cfg.data.dataset_name, task.text_column)
    data = Dataset.from_dict({"text": texts})
    if cfg.data.eval_dataset_name:
        splits = {"train": data, "test": Dataset.from_dict({"text": texts_of(cfg.data.eval_dataset_name,
                                                                             task.text_column)})}
    else:
        splits = data.train_test_split(test_size=cfg.data.eval_split_ratio or 0.1,
                                       seed=cfg.data.seed_for_split(args.seed))
    splits["train"] = cap_train(splits["train"], cfg.data.max_train_samples)

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    block = task.max_length

    def tokenize(batch):
        if task.line_by_line:
            return tokenizer(batch["text"], truncation=True, max_length=block, return_special_tokens_mask=True)
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group(batch):
        # Concatenate documents and cut into full blocks; the tail shorter than a block is dropped.
        joined = {k: list(chain.from_iterable(v)) for k, v in batch.items()}
        usable = len(joined["input_ids"]) // block * block
        return {k: [v[i:i + block] for i in range(0, usable, block)] for k, v in joined.items()}

    def prepare(split):
        out = split.map(tokenize, batched=True, remove_columns=["text"])
        return out if task.line_by_line else out.map(group, batched=True)

    train, held_out = prepare(splits["train"]), prepare(splits["test"])
    if len(train) == 0 or len(held_out) == 0:
        raise DataError(f"{cfg.data.dataset_name}: too little text for one block of {block} tokens per split; "
                        "lower max_length or set line_by_line: true.")

    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    model = AutoModelForMaskedLM.from_pretrained(resolve_checkpoint(cfg.model.model_name_or_path, whole=True),
                                                 trust_remote_code=args.trust_remote_code)
    if cfg.model.use_peft:  # the MLM head is tied to the embeddings: adapters on the body only
        model = with_task_adapters(model, cfg.model, None, head=None)

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=task.mlm_probability, seed=args.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tokenizer,
                      data_collator=collator, callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    before = trainer.evaluate()["eval_loss"]
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    after = trainer.evaluate()["eval_loss"]
    metrics.update(perplexity_before=math.exp(before), perplexity_after=math.exp(after))
    print(f"held-out masked-LM perplexity: {metrics['perplexity_before']:.2f} -> {metrics['perplexity_after']:.2f}")

    finish_run(trainer, cfg, "masked_lm", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
