"""RLOO: REINFORCE with a leave-one-out baseline, with trl's RLOOTrainer (Ahmadian et al. 2024).

    finetune-kit train rloo --config rloo_arithmetic_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.rloo --config rloo_arithmetic_smollm2

For each prompt trl samples `num_generations` answers; an answer's advantage is its reward minus the mean reward of
the prompt's other answers: no value head, like grpo, and unbiased. trl's `beta` (default 0.05) adds a KL
penalty against the reference (the base with adapters disabled under LoRA). Rewards, prompts, held-out scoring,
the guard and `keep_policy` are the grpo recipe's (finetune_kit/rl/online.py, rl/guard.py).
"""

from __future__ import annotations

from transformers import set_seed
from trl import RLOOTrainer, get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_decoder import RLOORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_prompt
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.rl.guard import keep_policy_decision
from finetune_kit.rl.online import fused_head_in_fp32, guarded_train
from finetune_kit.rl.rewards import RewardSources
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RLOORecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_prompt)
    rewards = RewardSources(cfg.rewards.reward_model, cfg.rewards.reward_functions, args.device)
    decisions.add(cfg, keep_policy_decision(cfg.guard.keep_policy, eval_dataset is not None))

    set_seed(args.seed)
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)

    trainer = RLOOTrainer(
        model=model,
        reward_funcs=rewards.for_trl(),
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    # Under half-precision autocast, log-probabilities from an fp32 LM head (a recorded decision; rl/online.py).
    decisions.add(None, fused_head_in_fp32(trainer))
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = guarded_train(trainer, cfg, eval_dataset, resume, decisions)
    finish_run(trainer, cfg, "rloo", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
