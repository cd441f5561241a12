"""What every recipe does to its trainer just before training: atomic checkpoints, plus the callbacks that a driver
running the recipe in-process (`finetune-kit tune`: report evaluations, prune a trial) has registered.

    prepare_trainer(trainer)            # in a recipe
    with driver_callbacks(callback):    # in a driver
        recipe.main(argv)
"""

from __future__ import annotations

from contextlib import contextmanager

from finetune_kit.checkpoints import atomic_checkpoints

_DRIVER_CALLBACKS: list = []


def prepare_trainer(trainer) -> None:
    atomic_checkpoints(trainer)
    for callback in _DRIVER_CALLBACKS:
        trainer.add_callback(callback)


@contextmanager
def driver_callbacks(*callbacks):
    """Add `callbacks` to every trainer a recipe prepares inside this block."""
    _DRIVER_CALLBACKS.extend(callbacks)
    try:
        yield
    finally:
        for callback in callbacks:
            _DRIVER_CALLBACKS.remove(callback)
