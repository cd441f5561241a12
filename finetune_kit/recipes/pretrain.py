"""Continued pretraining of a causal LM on plain text: documents joined with EOS and cut into fixed-length blocks.

    finetune-kit train pretrain --config pretrain_lora_smollm2_c4 [--key value ...]
    accelerate launch -m finetune_kit.recipes.pretrain --config pretrain_full_smollm2_c4

Text comes from .txt files (one document per non-empty line) or json / jsonl / csv / parquet / hub rows with a
`text` column (`column_mapping: {text: body}` for another name). trl's SFTTrainer does the language modelling:
it appends EOS to each document and packs (`packing_strategy: wrapped`, blocks of `max_length` tokens). Held-out
perplexity (exp of the mean token loss) is reported before and after training.
"""

from __future__ import annotations

import math
from functools import partial

from transformers import set_seed
from trl import SFTTrainer, get_peft_config

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import PretrainConfig
from finetune_kit.data import load_sft_datasets
from finetune_kit.data.formats import normalise
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing, longest_sequence
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PretrainConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    # Every row must hold non-empty text; the row is named otherwise.
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=partial(normalise, fmt="text"),
                                                     streaming=cfg.data.streaming)

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, longest_sequence(train_dataset, args.max_length, args.packing),
                                                 recipes.get("pretrain").sequences_per_example))
    set_seed(args.seed)
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    metrics = {}
    if eval_dataset is not None:
        metrics["before_perplexity"] = math.exp(trainer.evaluate()["eval_loss"])
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
        metrics["perplexity"] = math.exp(metrics["eval_loss"])
        if trainer.is_world_process_zero():
            print(f"held-out perplexity: {metrics['before_perplexity']:.2f} -> {metrics['perplexity']:.2f}")
    finish_run(trainer, cfg, "pretrain", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
