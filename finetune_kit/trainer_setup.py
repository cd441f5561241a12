"""What every recipe does to its trainer just before training: atomic checkpoints, length-grouped batches that resume
exactly, LM-head tiles sized for a device without Triton (and SFT's head run on labelled tokens only there), plus the
callbacks that a driver running the recipe in-process (`finetune-kit tune`: report evaluations, prune a trial) has
registered.

    prepare_trainer(trainer)            # in a recipe
    with driver_callbacks(callback):    # in a driver
        recipe.main(argv)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from finetune_kit.checkpoints import atomic_checkpoints
from finetune_kit.hardware import narrow_lm_head_tiles
from finetune_kit.lm_head import score_label_positions
from finetune_kit.runs import Replacement

_DRIVER_CALLBACKS: list = []


def prepare_trainer(trainer, replace: bool = False) -> list:
    """Change the trainer as the module docstring says, say so in the log; returns the decisions made (LM-head tiles,
    SFT's LM head scoring labelled positions only: finetune_kit.lm_head), for the run's record.

    `replace` (--overwrite_output_dir, not resuming): the trainer is built, so the config and model have passed
    every check the libraries make; the old contents of output_dir are set aside now, restored if training fails
    before its first optimizer step, and deleted after it (runs.set_aside).
    """
    atomic_checkpoints(trainer)
    if replace and trainer.is_world_process_zero():
        keep_replaced_run_until_first_step(trainer, Replacement(trainer.args.output_dir, enabled=True))
    # trl's fused LM head only: a transformers Trainer (encoders, images, seq2seq) has none to narrow.
    from_trl = any(c.__module__.startswith("trl.") for c in type(trainer).__mro__)
    tiles = narrow_lm_head_tiles(trainer.args.device) if from_trl else None
    scoring = score_label_positions(trainer) if from_trl else None
    seeded_length_grouping(trainer)
    for callback in _DRIVER_CALLBACKS:
        trainer.add_callback(callback)
    if trainer.is_world_process_zero():
        changes = ["checkpoints published by rename", "length-grouped order seeded by (seed, epoch)"]
        changes += [f"{len(_DRIVER_CALLBACKS)} driver callback(s)"] if _DRIVER_CALLBACKS else []
        print(f"trainer prepared: {'; '.join(changes)}", flush=True)
    return [decision for decision in (tiles, scoring) if decision]


def keep_replaced_run_until_first_step(trainer, replacement: Replacement) -> None:
    """Delete the set-aside run after the first optimizer step; restore it if `train` raises before that."""
    from transformers import TrainerCallback

    class _FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            replacement.first_step_done()  # runs before the step's checkpoint is saved: no name collides

    library_train = trainer.train

    def train(*args, **kwargs):
        with replacement:
            return library_train(*args, **kwargs)

    trainer.add_callback(_FirstStep())
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


class LoopEvents:
    """The driver callbacks' events for a training loop of our own (PPO), which no transformers Trainer runs.

    A driver (the board's progress writer, `tune`) sees such a loop as it sees a Trainer: on_train_begin, then
    on_step_end and on_log once per optimizer step, then on_train_end, with a real TrainerState / TrainerControl. The
    loop honours what a callback asks through the control: should_save (a checkpoint of this step) and
    should_training_stop (the loop ends after it).
    """

    def __init__(self, args, step: int, max_steps: int, is_main: bool):
        from transformers import TrainerControl, TrainerState

        self.args, self.callbacks = args, list(_DRIVER_CALLBACKS)
        self.state = TrainerState(global_step=step, max_steps=max_steps, is_world_process_zero=is_main,
                                  is_local_process_zero=is_main)
        self.control = TrainerControl()

    def _call(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self.args, self.state, self.control, **kwargs)

    def begin(self) -> None:
        self._call("on_train_begin")

    def step(self, step: int, logs: dict):
        """This optimizer step's events; returns the control (what the callbacks asked for)."""
        self.state.global_step, self.state.epoch = step, None
        self.state.log_history.append(dict(logs))
        self.control.should_save = False
        self._call("on_step_end")
        self._call("on_log", logs=dict(logs))
        return self.control

    def end(self) -> None:
        self._call("on_train_end")
