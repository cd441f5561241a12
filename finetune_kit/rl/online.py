"""Training trl's online RL trainers (GRPO, RLOO, online DPO) under the run-level guard, with held-out scoring before
and after.

trl's `evaluate` samples answers to the held-out prompts and scores them with the run's rewards (`eval_reward`;
online DPO's is ours, rl/online_dpo.py, as trl's OnlineDPOTrainer has none).
The recipe scores them before training (the guard's step 0), the guard every `guard_eval_steps` (rl/guard.py),
and once more after, on the kept policy. Before and after use one fixed sampling seed, so the two differ by the
policy only; the training's random stream goes on as if they had not run.
"""

from __future__ import annotations

import torch

from finetune_kit.decisions import Decision, Decisions
from finetune_kit.rl.guard import HeldOutRewardGuard


def guarded_train(trainer, cfg, eval_dataset, resume: str | None, decisions: Decisions,
                  answers_per_prompt: int | None = None) -> dict:
    """trainer.train() with the guard; metrics with `before` / `after` (held-out) and `guard` where scored.

    `answers_per_prompt`: how many answers an evaluation samples per held-out prompt; by default GRPO / RLOO's
    `num_generations_eval` (else `num_generations`)."""
    args, guarding = cfg.training, cfg.guard
    per_prompt = answers_per_prompt or args.num_generations_eval or args.num_generations
    answers = len(eval_dataset) * per_prompt if eval_dataset else 0
    guard = HeldOutRewardGuard(trainer.model, guarding.guard_eval_steps if answers else 0, answers,
                               guarding.kl_ceiling if args.beta else 0.0)
    trainer.add_callback(guard)
    eval_seed, metrics = args.seed + 1_000_003, {}
    if eval_dataset is not None and resume is None:
        metrics["before"] = evaluate_seeded(trainer, eval_seed)  # also the guard's step 0
    metrics.update(trainer.train(resume_from_checkpoint=resume).metrics)
    if answers and guarding.guard_eval_steps:
        metrics["guard"] = guard.summary()
        if guarding.keep_policy == "best":
            decisions.add(None, guard.best.keep_best(trainer.state.global_step, guard.scores))
    trainer.remove_callback(guard)
    if eval_dataset is not None:
        metrics["after"] = evaluate_seeded(trainer, eval_seed)
    return metrics


def evaluate_seeded(trainer, seed: int) -> dict:
    """trl's evaluate with its own sampling seed, the training's random stream set aside and restored."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return trainer.evaluate()


def fused_head_in_fp32(trainer) -> Decision | None:
    """Under bf16 / fp16 autocast the LM head's matmul rounds the logits that log-probabilities, ratios and KL come
    from (~0.03 nats at a logit of 8 in bf16, as large as one update's change: the bf16 collapse of issue #25). trl's
    GRPO / RLOO score log-probabilities through a fused LM head (`add_fused_lm_head`, from `lm_head.weight`
    directly); this wraps it again with trl's own function, in fp32 with autocast off, as our PPO's head
    (rl/ppo.output_layer_in_fp32). The outer wrapper answers every fused call; others pass through. Not trl's
    `cast_lm_head_to_fp32` key (grpo only): with LoRA and tied embeddings (SmolLM2) it fails in trl 1.16 looking
    for `embed_tokens` on the wrong module."""
    from trl.trainer.utils import add_fused_lm_head

    args = trainer.args
    if not (args.bf16 or args.fp16):
        return None
    policy = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    add_fused_lm_head(policy, temperature=args.temperature, cast_lm_head_to_fp32=True,
                      outputs=("log_probs", "entropy"))
    if getattr(trainer, "ref_model", None) is not None:
        add_fused_lm_head(trainer.ref_model, temperature=args.temperature, cast_lm_head_to_fp32=True)
    return Decision("fused_lm_head_fp32", True, "half-precision autocast: log-probabilities, ratios and KL from an "
                    "fp32 LM head")
