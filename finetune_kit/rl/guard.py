"""The run-level guard of PPO: keep the best policy by held-out reward, and stop a run that has clearly fallen.

A PPO run can collapse (reward high for twenty steps, then a step whose update sends the policy somewhere the
reward model scores badly, and no way back: issue #25). The guard scores the held-out prompts every
`guard_eval_steps`, keeps a copy of the adapters and value head of the best-scoring step (step 0, the starting
policy, included), and stops the run when the held-out reward falls below the best by more than two standard errors
of the difference, or when a step's KL to the reference passes `kl_ceiling`. With `keep_policy: best` the saved
policy is the kept one, and the run says which step it is.
"""

from __future__ import annotations

import math


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


def _standard_error(result: dict) -> float:
    return result["reward_std"] / math.sqrt(max(len(result["scores"]), 1))


def kl_exceeded(log: dict, ceiling: float) -> str | None:
    if ceiling and log["kl"] > ceiling:
        return (f"KL to the reference {log['kl']:.2f} nats per answer at step {log['step']} passed kl_ceiling "
                f"{ceiling:g}")
    return None
