"""Reward model: a one-score head on a causal LM, trained on chosen / rejected pairs with trl's RewardTrainer.

    finetune-kit train reward --config reward_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.reward --config reward_lora_smollm2

Pairs come as prompt / chosen / rejected (strings or conversations), sharegpt conversations + chosen / rejected
turns, or whole dialogues sharing a prefix (Anthropic HH); every row is checked before the model loads. The loss is
-log sigmoid(r_chosen - r_rejected); held-out pairwise accuracy (share of pairs scored chosen > rejected) is
reported. The run folder is a reward model that the ppo recipe and the grpo recipe take as `reward_model`.
"""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardTrainer, get_peft_config

from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.config_decoder import RewardRecipeConfig
from finetune_kit.data import load_sft_datasets, margins_on_every_row_or_none, normalise_scored_pair
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.memory import activation_checkpointing
from finetune_kit.models import load_model, load_tokenizer
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RewardRecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_scored_pair)
    # `margin` (trl's margin loss): on every row or none, kept only when given
    train_dataset = margins_on_every_row_or_none(train_dataset, cfg.data.source_label())
    eval_dataset = margins_on_every_row_or_none(eval_dataset, f"{cfg.data.source_label()} (validation)")

    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, args.max_length or 1024,
                                                 recipes.get("reward").sequences_per_example))
    set_seed(args.seed)  # the new score head starts from the same random init on every run and resume
    # num_labels=1: one scalar reward per sequence. The head reads the last non-pad token, so the model must know pad.
    model = load_model(AutoModelForSequenceClassification, cfg.model, args.trust_remote_code, num_labels=1,
                       pad_token_id=tokenizer.pad_token_id)

    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not (args.bf16 or args.fp16):
        # trl casts every trainable tensor of a QLoRA model to bf16, the new score head's copy too; without bf16
        # autocast (CPU, fp32 runs) that head then gets fp32 inputs and fails. LoRA layers cast for themselves.
        for name, param in trainer.model.named_parameters():
            if "modules_to_save" in name and param.requires_grad:
                param.data = param.data.float()
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())  # eval_accuracy: held-out pairs with chosen scored above rejected
        if trainer.is_world_process_zero():
            print(f"held-out pairwise accuracy: {metrics['eval_accuracy']:.3f} on {len(trainer.eval_dataset)} pairs "
                  f"(of {len(eval_dataset)}; trl drops pairs over max_length)")
    finish_run(trainer, cfg, "reward", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
