"""Supervised fine-tuning (SFT) of a causal LM on instruction or chat data: LoRA, QLoRA, DoRA or full.

    finetune-kit train sft --config sft_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.sft --config sft_lora_smollm2
    finetune-kit train sft --config sft_lora_smollm2

Data in alpaca, sharegpt, messages, prompt/completion or text form is detected, validated row by row and
normalised before the model loads. Conversations are rendered with the checkpoint's chat template and only the
assistant turns (their end-of-turn token included) carry loss. The output folder gets the adapter (or the full
model), the tokenizer, the resolved config, versions, and a model card.
"""

from __future__ import annotations

from transformers import set_seed
from trl import SFTTrainer, get_peft_config

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import SFTRecipeConfig
from finetune_kit.data import (
    load_sft_datasets,
    require_replies_within,
    tokenize_sft_dataset,
)
from finetune_kit.data.chat import read_chat_template
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.hardware import fast_path_decisions
from finetune_kit.memory import activation_checkpointing, longest_sequence
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SFTRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed now, recorded in run_info.json
    args = cfg.training
    # Everything cheap and checkable happens before weights load: output folder, tokenizer, every data row.
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    tokenizer = load_tokenizer(
        cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
        revision=cfg.model.model_revision,
        trust_remote_code=args.trust_remote_code,
    )
    if args.chat_template_path:
        tokenizer.chat_template = read_chat_template(args.chat_template_path)
        args.chat_template_path = None  # applied here, so trl must not apply it again

    train_rows, eval_rows = load_sft_datasets(cfg.data, seed=args.seed, streaming=cfg.data.streaming)
    train_dataset = tokenize_sft_dataset(train_rows, tokenizer, args.dataset_num_proc)
    eval_dataset = tokenize_sft_dataset(eval_rows, tokenizer, args.dataset_num_proc) if eval_rows is not None else None
    require_replies_within(train_dataset, args.max_length, cfg.data.source_label())

    decisions.add(cfg, *fast_path_decisions(cfg, decisions.user))  # flash attention, packing, Liger where they pay
    longest = longest_sequence(train_dataset, args.max_length, args.packing)
    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, longest, recipes.get("sft").sequences_per_example))
    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
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
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    finish_run(trainer, cfg, "sft", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
