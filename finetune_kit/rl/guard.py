"""The run-level guard of online RL: keep the best policy by held-out reward, and stop a run that has clearly fallen.

A PPO run can collapse (reward high for twenty steps, then a step whose update sends the policy somewhere the
reward model scores badly, and no way back: issue #25). The guard scores the held-out prompts every
`guard_eval_steps`, keeps a copy of the adapters and value head of the best-scoring step (step 0, the starting
policy, included), and stops the run when the held-out reward falls below the best by more than two standard errors
of the difference, or when a step's KL to the reference passes `kl_ceiling`. With `keep_policy: best` the saved
policy is the kept one, and the run says which step it is.

Our PPO loop calls `BestPolicy` itself; trl's trainers (GRPO) get `HeldOutRewardGuard`, a callback that reads the
held-out reward trl's own `evaluate()` logs (`eval_reward`: answers sampled for the held-out prompts) and the KL it
logs per token.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from finetune_kit.decisions import Decision


class BestPolicy:
    def __init__(self, trainer, drop_in_standard_errors: float = 2.0):
        self.trainer, self.drop = trainer, drop_in_standard_errors
        self.step: int | None = None
        self.result: dict | None = None
        self.params = None

    def offer(self, step: int, result: dict) -> str | None:
        """Record a held-out score of the policy at `step`; a reason to stop when it has clearly fallen."""
        mean = result["reward_mean"]
        if self.result is None or mean > self.result["reward_mean"]:
            self.step, self.result, self.params = step, result, self.trainer.snapshot()
            return None
        best = self.result
        # Two standard errors of the difference of the two means (each over the same prompts): a drop that noise
        # between two scorings explains does not stop the run; a collapse does.
        margin = self.drop * math.hypot(_standard_error(best), _standard_error(result))
        if mean < best["reward_mean"] - margin:
            return (f"held-out reward {mean:.3f} at step {step} is below the best, {best['reward_mean']:.3f} at step "
                    f"{self.step}, by more than {self.drop:g} standard errors of the difference ({margin:.3f})")
        return None

    def restore(self) -> None:
        self.trainer.restore(self.params)

    def keep_best(self, last_step: int, scored_steps) -> Decision | None:
        """Restore the best step's policy when it is not the last one; the decision that says so."""
        if self.step is None or self.step == last_step:
            return None
        self.restore()
        return Decision("policy_step", self.step, f"keep_policy: best: held-out reward "
                        f"{self.result['reward_mean']:.3f} at step {self.step}, the best of steps "
                        f"{sorted(scored_steps)} (the last, {last_step}, is not kept)")


def _standard_error(result: dict) -> float:
    count = result["answer_count"] if "answer_count" in result else len(result["scores"])
    return result["reward_std"] / math.sqrt(max(count, 1))


def kl_exceeded(log: dict, ceiling: float) -> str | None:
    if ceiling and log["kl"] > ceiling:
        return (f"KL to the reference {log['kl']:.2f} nats per answer at step {log['step']} passed kl_ceiling "
                f"{ceiling:g}")
    return None


def keep_policy_decision(keep_policy: str | None, has_held_out: bool) -> Decision | None:
    """keep_policy left unset: best where held-out prompts can be scored, else last."""
    if keep_policy is not None:
        return None
    if has_held_out:
        return Decision("keep_policy", "best", "held-out prompts are scored every guard_eval_steps; the best step's "
                        "policy is saved")
    return Decision("keep_policy", "last", "no held-out prompts to pick a step by (set eval_split_ratio or "
                    "eval_dataset_name for the guard)")


class TrainableParams:
    """Snapshot and restore of a model's trainable weights: LoRA adapters, or every weight in full fine-tuning."""

    def __init__(self, model):
        self.model = model

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def restore(self, params: dict[str, torch.Tensor]) -> None:
        for name, param in self.model.named_parameters():
            if name in params:
                param.copy_(params[name])


class HeldOutRewardGuard(TrainerCallback):
    """The guard for trl's online trainers: asks for an evaluation every `every` steps (and at the last), offers
    trl's held-out `eval_reward` to `BestPolicy`, and stops training when it has clearly fallen or when the KL
    (trl logs it per token, at beta > 0) times the mean answer length passes `kl_ceiling` nats per answer."""

    def __init__(self, model, every: int, answers_per_eval: int, kl_ceiling: float):
        self.best = BestPolicy(TrainableParams(model))
        self.every, self.answers, self.kl_ceiling = every, answers_per_eval, kl_ceiling
        self.scores: dict[int, float] = {}
        self.stopped: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and (state.global_step % self.every == 0 or state.global_step == state.max_steps):
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_reward" not in metrics:
            return
        result = {"reward_mean": metrics["eval_reward"], "reward_std": metrics.get("eval_reward_std") or 0.0,
                  "answer_count": self.answers}
        self.scores[state.global_step] = round(result["reward_mean"], 4)
        self._stop(self.best.offer(state.global_step, result), state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        per_answer = logs.get("objective/kl")  # online DPO logs it summed over each answer's tokens already
        if per_answer is None and logs.get("kl") is not None and "completions/mean_length" in logs:
            per_answer = logs["kl"] * logs["completions/mean_length"]
        if per_answer is not None:
            self._stop(kl_exceeded({"kl": per_answer, "step": state.global_step}, self.kl_ceiling), state, control)

    def _stop(self, reason: str | None, state, control) -> None:
        if reason and self.stopped is None:
            self.stopped = reason
            control.should_training_stop = True
            if state.is_world_process_zero:
                print(f"guard: {reason}: the run stops at step {state.global_step}.", flush=True)

    def summary(self) -> dict:
        return {"held_out_reward_by_step": self.scores, "best_step": self.best.step, "stopped": self.stopped}
