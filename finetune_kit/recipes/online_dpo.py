"""Online DPO with trl's OnlineDPOTrainer (Guo et al. 2024): the policy samples two answers per prompt, the reward
picks the chosen one, and the DPO loss (against the base with adapters disabled, under LoRA) trains on the pair.

    finetune-kit train online_dpo --config online_dpo_arithmetic_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.online_dpo --config online_dpo_arithmetic_smollm2

Prompts, rewards and guard are grpo's: prompt rows as for grpo / rloo; `reward_functions: [file.py:function]` (a
Python judge: prompts and answers in, one number per answer out; one that raises or returns the wrong count stops
the run with its name) and / or `reward_model` (a reward run, scored through its own tokenizer), summed
(rl/rewards.py). With held-out prompts (`eval_split_ratio` / `eval_dataset_name`) two answers per prompt are sampled
and scored before training, every `guard_eval_steps` and after (rl/online_dpo.py: trl's trainer has no evaluation of
its own); the guard (rl/guard.py) stops a run whose held-out reward clearly falls, or whose KL to the reference
(trl's `objective/kl`, nats per answer) passes `kl_ceiling`, and `keep_policy: best` saves the best step.
"""

from __future__ import annotations

from transformers import set_seed
from trl import get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_decoder import OnlineDPORecipeConfig
from finetune_kit.data import load_sft_datasets, normalise_prompt
from finetune_kit.decisions import Decision, Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.rl.guard import keep_policy_decision
from finetune_kit.rl.online import guarded_train
from finetune_kit.rl.online_dpo import ANSWERS_PER_PROMPT, ScoredOnlineDPOTrainer
from finetune_kit.rl.ppo import output_layer_in_fp32
from finetune_kit.rl.rewards import RewardSources
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(OnlineDPORecipeConfig, argv)
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

    trainer = ScoredOnlineDPOTrainer(
        model=model,
        reward_funcs=rewards.for_trl(),
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(cfg.model),
        callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)],
    )
    decisions.add(None, lm_head_in_fp32(trainer))
    # Atomic checkpoints, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = guarded_train(trainer, cfg, eval_dataset, resume, decisions, answers_per_prompt=ANSWERS_PER_PROMPT)
    finish_run(trainer, cfg, "online_dpo", metrics, decisions)
    return metrics


def lm_head_in_fp32(trainer) -> Decision | None:
    """Under bf16 / fp16 autocast the LM head rounds the logits the DPO log-ratios come from (issue #25, as for PPO
    and GRPO); trl's OnlineDPOTrainer takes them from the model's plain logits, so the head itself runs in fp32 with
    autocast off (rl/ppo.output_layer_in_fp32). Under LoRA the reference is the same model, adapters off: same head."""
    args = trainer.args
    if not (args.bf16 or args.fp16):
        return None
    model = trainer.model
    output_layer_in_fp32(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if trainer.ref_model is not None:
        output_layer_in_fp32(trainer.accelerator.unwrap_model(trainer.ref_model))
    return Decision("lm_head_fp32", True, "half-precision autocast: DPO log-ratios and KL from an fp32 LM head")


if __name__ == "__main__":
    run_cli(main)
