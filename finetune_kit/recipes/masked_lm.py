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

from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    Trainer,
    set_seed,
)

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import MaskedLMConfig
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import mlm
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(MaskedLMConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    splits = mlm.text_splits(cfg)  # every row read and the held-out text split off, before the model loads

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train, held_out = mlm.blocks(splits, tokenizer, task, cfg.data.dataset_name)

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
