"""What the board starts for a run: `finetune-kit train ...`, plus a callback that writes the run's progress.

    python -m finetune_kit.ui.worker PROGRESS_JSONL train sft --config runs.yaml [--resume_from_checkpoint latest]

The recipe runs exactly as `finetune-kit train` runs it (the same `cli.main`); the callback reaches its trainer the
way `finetune-kit tune` reaches it (`trainer_setup.driver_callbacks`). It appends one JSON line per optimizer step
and per log (loss, learning rate, eval metrics: what the board plots and its ETA reads), so the board never parses
the human log.

Stop: the board sends SIGINT. During training the first one asks the trainer to save a checkpoint at the end of the
current step and stop (published atomically like every checkpoint, so `--resume_from_checkpoint latest` continues
from exactly there); the run then ends as a Ctrl-C ends it (exit 130, no run_info.json: the run is not finished).
Outside training (loading, tokenizing), or the second time, SIGINT interrupts at once, as in a terminal.
"""

from __future__ import annotations

import json
import signal
import sys
import time


def progress_callback(path: str):
    """A TrainerCallback appending progress events to `path`, and asking the trainer to stop when `stop` is set."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        training = False
        stop_requested = False

        def write(self, event: str, state, **fields) -> None:
            if not state.is_world_process_zero:
                return
            line = {"event": event, "time": time.time(), "step": state.global_step, "max_steps": state.max_steps,
                    "epoch": state.epoch, **fields}
            with open(path, "a") as out:
                out.write(json.dumps(line, default=str) + "\n")

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True
            self.write("begin", state)

        def on_step_end(self, args, state, control, **kwargs):
            self.write("step", state)
            if self.stop_requested:  # a checkpoint of this very step, then the loop ends
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.write("log", state, logs=logs or {})

        def on_train_end(self, args, state, control, **kwargs):
            self.training = False
            if self.stop_requested:
                self.write("stopped", state)
                raise KeyboardInterrupt  # ends as Ctrl-C does: no final save, no run_info.json

        def on_signal(self, signum, frame) -> None:
            if not self.training or self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            print("stop requested: saving a checkpoint at the end of this step", file=sys.stderr, flush=True)

    return Progress()


def main(argv: list[str]) -> None:
    from finetune_kit.cli import main as cli_main
    from finetune_kit.trainer_setup import driver_callbacks

    progress = progress_callback(argv[0])
    signal.signal(signal.SIGINT, progress.on_signal)
    with driver_callbacks(progress):
        cli_main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
