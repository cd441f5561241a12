"""What every recipe does to its trainer just before training: atomic checkpoints, length-grouped batches that resume
exactly, LM-head tiles sized for a device without Triton, plus the callbacks that a driver running the recipe
in-process (`finetune-kit tune`: report evaluations, prune a trial) has registered.

    prepare_trainer(trainer)            # in a recipe
    with driver_callbacks(callback):    # in a driver
        recipe.main(argv)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from finetune_kit.checkpoints import atomic_checkpoints
from finetune_kit.hardware import narrow_lm_head_tiles
from finetune_kit.runs import restore, set_aside

_DRIVER_CALLBACKS: list = []


def prepare_trainer(trainer, replace: bool = False) -> list:
    """Change the trainer as the module docstring says, say so in the log; returns the decisions made (LM-head tiles),
    for the run's record.

    `replace` (--overwrite_output_dir, not resuming): the trainer is built, so the config and model have passed
    every check the libraries make; the old contents of output_dir are set aside now, restored if training fails
    before its first optimizer step, and deleted after it (runs.set_aside).
    """
    atomic_checkpoints(trainer)
    if replace and trainer.is_world_process_zero():
        keep_replaced_run_until_first_step(trainer, set_aside(trainer.args.output_dir))
    tiles = narrow_lm_head_tiles(trainer.args.device)
    seeded_length_grouping(trainer)
    for callback in _DRIVER_CALLBACKS:
        trainer.add_callback(callback)
    if trainer.is_world_process_zero():
        changes = ["checkpoints published by rename", "length-grouped order seeded by (seed, epoch)"]
        changes += [f"{len(_DRIVER_CALLBACKS)} driver callback(s)"] if _DRIVER_CALLBACKS else []
        print(f"trainer prepared: {'; '.join(changes)}", flush=True)
    return [tiles] if tiles else []


def keep_replaced_run_until_first_step(trainer, aside) -> None:
    """Delete the set-aside run after the first optimizer step; restore it if `train` raises before that."""
    import shutil

    from transformers import TrainerCallback

    if aside is None:
        return
    state = {"aside": aside}

    class _DiscardReplaced(TrainerCallback):
        def on_step_end(self, args, control_state, control, **kwargs):
            if state["aside"] is not None:  # runs before the step's checkpoint is saved: no name collides
                shutil.rmtree(state["aside"], ignore_errors=True)
                state["aside"] = None

    library_train = trainer.train

    def train(*args, **kwargs):
        try:
            return library_train(*args, **kwargs)
        except BaseException:
            if state["aside"] is not None:
                restore(trainer.args.output_dir, state["aside"])
                state["aside"] = None
            raise

    trainer.add_callback(_DiscardReplaced())
    trainer.train = train


@contextmanager
def driver_callbacks(*callbacks):
    """Add `callbacks` to every trainer a recipe prepares inside this block."""
    _DRIVER_CALLBACKS.extend(callbacks)
    try:
        yield
    finally:
        for callback in callbacks:
            _DRIVER_CALLBACKS.remove(callback)


def seeded_length_grouping(trainer) -> None:
    """Make `train_sampling_strategy: group_by_length` order batches by `seed + epoch`.

    transformers' LengthGroupedSampler draws its order from the global torch RNG when an epoch starts; a resumed run
    restores a later RNG state, so it would train on a different order than the run it continues. With its own
    generator, reseeded through the `set_epoch(epoch)` call the Trainer makes at each epoch, the order is a function
    of (seed, epoch) alone, and a resume mid-epoch skips into the same order (tests/test_resume.py).
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    library_sampler = trainer._get_train_sampler
    seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed

    def _get_train_sampler(*args, **kwargs):
        sampler = library_sampler(*args, **kwargs)
        if isinstance(sampler, LengthGroupedSampler) and sampler.generator is None:
            sampler.generator = torch.Generator()
            sampler.set_epoch = lambda epoch: sampler.generator.manual_seed(seed + epoch)
            sampler.set_epoch(0)
        return sampler

    trainer._get_train_sampler = _get_train_sampler
