"""Training guards: a non-finite gradient never reaches the weights."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from finetune_kit.errors import UserError

logger = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss or a gradient became NaN / inf."""


class NonFiniteGuard(TrainerCallback):
    """Checks every trainable gradient before each optimizer step.

    `on_nonfinite: stop` (default): a NaN / inf stops the run with a message naming the step, the parameter and the
    newest checkpoint; the bad update is never applied and no checkpoint is written after it.
    `on_nonfinite: skip`: the step's gradients are dropped (the optimizer skips parameters without a gradient, so
    weights and Adam moments stay as they were), the step is counted (`nonfinite_skipped_steps` in the logs), and
    training goes on. (transformers' own `logging_nan_inf_filter` only hides such losses from the logs.)
    """

    def __init__(self, on_nonfinite: str = "stop"):
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {on_nonfinite!r}")
        self.skip = on_nonfinite == "skip"
        self.skipped = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = next((name for name, param in model.named_parameters()
                    if param.grad is not None and not torch.isfinite(param.grad).all()), None)
        if bad is None:
            return
        if self.skip:
            for param in model.parameters():
                param.grad = None
            self.skipped += 1
            logger.warning("step %d: non-finite gradient in %s; update skipped (%d so far)", state.global_step + 1,
                           bad, self.skipped)
            return
        from finetune_kit.runs import newest_complete_checkpoint

        newest = newest_complete_checkpoint(Path(args.output_dir))
        raise TrainingDiverged(
            f"non-finite gradient in {bad} at step {state.global_step + 1}: training diverged and was stopped before "
            f"the update. Newest good checkpoint: {newest or 'none'}. Lower learning_rate, set max_grad_norm, check "
            "the data of that step, or set on_nonfinite: skip to drop such steps."
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.skip and logs is not None:
            logs["nonfinite_skipped_steps"] = self.skipped  # for trackers (report_to)
            if state.log_history:  # the trainer recorded its copy of these logs just before calling us
                state.log_history[-1]["nonfinite_skipped_steps"] = self.skipped
