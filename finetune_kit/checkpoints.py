"""Atomic checkpoints for any transformers / trl Trainer: each checkpoint is written into a staging folder and renamed
into place once complete, so a `checkpoint-N` folder in the run either is whole or does not exist.

    trainer = SFTTrainer(...)
    atomic_checkpoints(trainer)

The Trainer builds a checkpoint's path from `_get_output_dir()`; while a save runs that points at
`<output_dir>/.checkpoint-staging`, so weights, optimizer, scheduler, RNG and trainer state all land there. Then the
main process renames the finished folder to `<output_dir>/checkpoint-N` (one rename on one filesystem: atomic) and
rotates old checkpoints (`save_total_limit`) in the real run folder. Leftovers of a killed save are cleared when the
next run prepares its trainer and never look like a checkpoint to `resume_from_checkpoint: latest`. Methods are set
on the instance, so this composes with any trainer class, subclassed or not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING = ".checkpoint-staging"


def _fsync_dir(path: str) -> None:
    """Make a rename durable (the directory entry reaches the disk), where the OS allows opening folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_checkpoints(trainer) -> None:
    """Make every checkpoint save of `trainer` write-then-rename (see the module docstring)."""
    library_save = trainer._save_checkpoint  # the class's method, bound: trl's model-card step and all
    library_output_dir = trainer._get_output_dir
    staging: dict[str, str] = {}
    leftover = os.path.join(trainer.args.output_dir, STAGING)
    if trainer.args.should_save and os.path.isdir(leftover):
        shutil.rmtree(leftover)  # a save killed in an earlier run of this folder; never a checkpoint

    def _get_output_dir(trial=None):
        return staging.get("dir") or library_output_dir(trial=trial)

    def _save_checkpoint(model, trial):
        args = trainer.args
        run_dir = library_output_dir(trial=trial)
        stage = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        # A killed save's leftovers went when the trainer was prepared (above), and each save clears its own.
        trainer.accelerator.wait_for_everyone()  # every rank starts writing (RNG state, shards) together
        staging["dir"] = stage
        try:
            library_save(model, trial)
        finally:
            staging.clear()
        trainer.accelerator.wait_for_everyone()  # all ranks' files are in before the folder moves
        if args.should_save:
            _publish(trainer, os.path.join(stage, name), os.path.join(run_dir, name), stage, run_dir)
        trainer.accelerator.wait_for_everyone()

    trainer._get_output_dir = _get_output_dir
    trainer._save_checkpoint = _save_checkpoint


def _publish(trainer, staged: str, final: str, stage: str, run_dir: str) -> None:
    state = trainer.state
    if state.best_model_checkpoint and state.best_model_checkpoint.startswith(stage):
        # The library recorded the best checkpoint where it was written; record where it will live, in the staged
        # trainer_state.json too, before the rename publishes it.
        state.best_model_checkpoint = os.path.join(run_dir, Path(state.best_model_checkpoint).name)
        state.save_to_json(os.path.join(staged, "trainer_state.json"))
    elif state.best_global_step and state.best_model_checkpoint is None:
        best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
        if os.path.isdir(best):
            state.best_model_checkpoint = best
            state.save_to_json(os.path.join(staged, "trainer_state.json"))
    if os.path.isdir(final):
        # Saving the same step twice (e.g. a final save after a step save): the new one replaces the old one, which is
        # moved aside first so that a kill in between still leaves a whole checkpoint in place.
        old = os.path.join(stage, "replaced")
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old)
    else:
        os.rename(staged, final)
    _fsync_dir(run_dir)
    shutil.rmtree(stage, ignore_errors=True)
    rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                       best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)
