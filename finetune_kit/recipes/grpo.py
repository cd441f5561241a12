"""GRPO: group-relative policy optimisation with trl's GRPOTrainer, the critic-free alternative to our PPO.

    finetune-kit train grpo --config grpo_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.grpo --config grpo_lora_smollm2

For each prompt trl samples `num_generations` answers and uses each answer's reward relative to its group as the
advantage: no value head. Rewards come from a reward-model run (`reward_model`, scored through text with its own
tokenizer) and / or Python functions (`reward_functions: [module:function]`), exactly as for the ppo recipe, so
one reward works with both. trl's `beta` (default 0: no reference model) adds a KL term. `grpo_preset` (dapo,
dr_grpo, gspo, cispo, grpo) sets the loss options of a published variant together (rl/presets.py); a key set by
hand wins over it.

With held-out prompts (`eval_split_ratio` / `eval_dataset_name`) trl's evaluate samples answers to them and scores
them: before training, every `guard_eval_steps`, and after (finetune_kit/rl/online.py). The guard (rl/guard.py, as
for ppo) stops a run whose held-out reward clearly falls or whose KL passes `kl_ceiling`, and `keep_policy: best`
saves the best step.
"""

from __future__ import annotations

from transformers import set_seed
from trl import GRPOTrainer, get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_decoder import GRPORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_prompt
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.rl.guard import keep_policy_decision
from finetune_kit.rl.online import fused_head_in_fp32, guarded_train
from finetune_kit.rl.presets import preset_decisions
from finetune_kit.rl.rewards import RewardSources
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(GRPORecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    decisions.add(cfg, *preset_decisions(cfg.preset.grpo_preset, decisions.user))  # before trl reads beta & co.
    args = cfg.training
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_dataset, eval_dataset = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_prompt)
    rewards = RewardSources(cfg.rewards.reward_model, cfg.rewards.reward_functions, args.device)
    decisions.add(cfg, keep_policy_decision(cfg.guard.keep_policy, eval_dataset is not None))

    set_seed(args.seed)
    model = load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards.for_trl(),
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    if "cast_lm_head_to_fp32" not in decisions.user:  # trl's own key, where the user set it, decides alone
        decisions.add(None, fused_head_in_fp32(trainer))
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = guarded_train(trainer, cfg, eval_dataset, resume, decisions)
    finish_run(trainer, cfg, "grpo", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
