"""Training guards: stop on a non-finite gradient before it reaches the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from finetune_kit.errors import UserError


class TrainingDiverged(UserError):
    """The loss or a gradient became NaN / inf."""


class NonFiniteGuard(TrainerCallback):
    """Checks every trainable gradient before each optimizer step; a NaN / inf stops the run with a message.

    The bad update is never applied, and no checkpoint is written after it, so the newest checkpoint is the last
    good state. (transformers' own `logging_nan_inf_filter` only hides such losses from the logs.)
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                from finetune_kit.runs import newest_complete_checkpoint

                newest = newest_complete_checkpoint(Path(args.output_dir))
                raise TrainingDiverged(
                    f"non-finite gradient in {name} at step {state.global_step + 1}: training diverged and was "
                    f"stopped before the update. Newest good checkpoint: {newest or 'none'}. Lower learning_rate, "
                    "set max_grad_norm, or check the data of that step."
                )
