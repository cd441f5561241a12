"""PPO (RLHF's last stage): a LoRA policy with a value head, rewarded by a reward model and / or Python functions.

    finetune-kit train ppo --config ppo_lora_smollm2 [--key value ...]
    accelerate launch -m finetune_kit.recipes.ppo --config ppo_lora_smollm2

Prompts come as `prompt` (text or turns), conversations (a final assistant turn is dropped) or alpaca
`instruction`. Each step samples answers, scores them, and makes `ppo_epochs` clipped updates against a per-token
KL penalty to the reference (the base with adapters disabled); see finetune_kit/rl/ppo.py. Held-out prompts
(`eval_split_ratio` / `eval_dataset_name`) are scored before and after: mean reward, its spread, and the KL.
Checkpoints (save_steps) hold adapter, value head, optimizer and KL state; --resume_from_checkpoint latest resumes.
Guards (finetune_kit/rl/guard.py): updates on a rollout stop once the policy has moved `early_stop_kl` from it; the
run stops when its held-out reward clearly falls or its KL passes `kl_ceiling`; `keep_policy: best` saves the best step.
"""

from __future__ import annotations

import json

from accelerate import Accelerator
from peft import get_peft_model
from transformers import set_seed
from trl import get_peft_config

from finetune_kit.config import parse_config
from finetune_kit.config_decoder import PPORecipeConfig
from finetune_kit.data import encode_prompt, load_sft_datasets, normalise_prompt
from finetune_kit.decisions import Decisions
from finetune_kit.errors import run_cli
from finetune_kit.models import load_causal_lm, load_tokenizer
from finetune_kit.rl.guard import BestPolicy, keep_policy_decision, kl_exceeded
from finetune_kit.rl.ppo import PolicyWithValue, PPOTrainer
from finetune_kit.rl.rewards import RewardSources
from finetune_kit.runs import Replacement, check_output_dir, finish_run
from finetune_kit.trainer_setup import LoopEvents


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PPORecipeConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, ppo, guarding = cfg.training, cfg.ppo, cfg.guard
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train, held_out = load_sft_datasets(cfg.data, seed=args.seed, normaliser=normalise_prompt)

    def encode(rows, name):
        return [encode_prompt(tokenizer, p, cfg.rewards.max_prompt_length, f"{name} prompt {i + 1}")
                for i, p in enumerate(rows["prompt"])]

    train_ids = encode(train, "training")
    eval_ids = encode(held_out, "held-out") if held_out is not None else None
    decisions.add(cfg, keep_policy_decision(guarding.keep_policy, bool(eval_ids)))

    accelerator = Accelerator(cpu=args.use_cpu, mixed_precision="bf16" if args.bf16 else "fp16" if args.fp16 else "no")
    rewards = RewardSources(cfg.rewards.reward_model, cfg.rewards.reward_functions, accelerator.device)
    set_seed(args.seed)  # adapters and value head start from the same init on every run and resume
    policy = get_peft_model(load_causal_lm(cfg.model, trust_remote_code=args.trust_remote_code),
                            get_peft_config(cfg.model))
    trainer = PPOTrainer(PolicyWithValue(policy), tokenizer, train["prompt"], train_ids, rewards, ppo, args, accelerator,
                         cfg.run.on_nonfinite)
    if resume:
        trainer.load_checkpoint(resume)
    # --overwrite_output_dir: the old run is set aside now, deleted after the first step, restored on a failure
    # before it (the held-out scoring below included).
    replacement = Replacement(args.output_dir, cfg.run.overwrite_output_dir and not resume and
                              accelerator.is_main_process)

    metrics, eval_seed = {}, args.seed + 1_000_003  # the same sampled answers' randomness before and after
    # The guard scores held-out prompts with other sampled answers than the before / after scoring, so that picking
    # the best step does not pick the luckiest answers of the reported ones (finetune_kit/rl/guard.py).
    guard = BestPolicy(trainer) if eval_ids and guarding.guard_eval_steps else None
    guard_scores, stop = {}, None

    def score_for_guard():
        result = trainer.evaluate(held_out["prompt"], eval_ids, args.seed + 2_000_003)
        guard_scores[trainer.step] = round(result["reward_mean"], 4)
        return guard.offer(trainer.step, result)

    with replacement:
        if eval_ids and resume is None:
            metrics["before"] = trainer.evaluate(held_out["prompt"], eval_ids, eval_seed)
        if guard:
            score_for_guard()
        # A driver's callbacks (the board's progress lines and Stop, `tune`) see this loop as they see a Trainer.
        events = LoopEvents(args, trainer.step, args.max_steps, accelerator.is_main_process)
        events.begin()
        while trainer.step < args.max_steps and stop is None:
            log = trainer.train_step()
            replacement.first_step_done()
            control = events.step(trainer.step, log)
            if accelerator.is_main_process and (trainer.step % args.logging_steps == 0 or trainer.step == 1):
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in log.items()}))
            due_save = args.save_strategy == "steps" and trainer.step % args.save_steps == 0
            if control.should_save or (due_save and trainer.step < args.max_steps):
                trainer.save_checkpoint(args.output_dir)
            if control.should_training_stop:
                break
            stop = kl_exceeded(log, guarding.kl_ceiling)
            due = guard and (trainer.step % guarding.guard_eval_steps == 0 or trainer.step == args.max_steps)
            if stop is None and due:
                stop = score_for_guard()
        if stop and accelerator.is_main_process:
            print(f"guard: {stop}: the run stops at step {trainer.step}.")
        events.end()  # a stop a callback asked for ends the run here (the board's Stop: as Ctrl-C, resumable)
    if guard:
        metrics["guard"] = {"held_out_reward_by_step": guard_scores, "best_step": guard.step, "stopped": stop}
        if guarding.keep_policy == "best":
            decisions.add(None, guard.keep_best(trainer.step, guard_scores))
    if eval_ids:
        metrics["after"] = trainer.evaluate(held_out["prompt"], eval_ids, eval_seed)
        if accelerator.is_main_process and "before" in metrics:
            b, a = metrics["before"], metrics["after"]
            print(f"held-out mean reward {b['reward_mean']:.3f} (sd {b['reward_std']:.3f}) -> {a['reward_mean']:.3f} "
                  f"(sd {a['reward_std']:.3f}); KL to the reference {a['kl']:.3f} nats per answer")

    accelerator.wait_for_everyone()
    metrics["train"] = trainer.log_history[-1] if trainer.log_history else {}
    finish_run(trainer, cfg, "ppo", metrics, decisions)
    return metrics


if __name__ == "__main__":
    run_cli(main)
