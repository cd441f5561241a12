"""Decisions the toolkit makes for the user: values returned by small functions, printed once, recorded in the run.

Each is a key the user left unset (in the YAML and on the command line) and the value chosen for it, with the
reason: bf16 from the hardware, activation checkpointing from the memory estimate, packing / Liger / attention from
what is installed, LM-head tiles from the device. A recipe collects them in a `Decisions`, applies each to its config
in one visible place, and `finish_run` writes them into `run_info.json` (`decisions`); `config.yaml` holds the
resolved values. Setting the key yourself always wins and is never second-guessed.

    decisions = Decisions(cfg, argv)                        # bf16 / use_cpu as parse-time defaults chose them
    decisions.add(cfg, activation_checkpointing(cfg, decisions.user, seq))
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from finetune_kit.yaml_config import keys_in


@dataclass(frozen=True)
class Decision:
    key: str
    value: Any
    why: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value} (auto: {self.why})"


def user_keys(argv: list[str] | None) -> set[str]:
    """Keys the user set: in the `--config` YAML or as `--key` on the command line."""
    return {key for key, _ in keys_in(list(sys.argv[1:] if argv is None else argv))}


def precision_decisions(training_args, user: set[str]) -> list[Decision]:
    """bf16 and use_cpu as `config.machine_defaults` set them at parse time (transformers validates them there)."""
    from finetune_kit.hardware import bf16_reason

    made = []
    if not user & {"bf16", "fp16"}:
        made.append(Decision("bf16", bool(training_args.bf16), bf16_reason()))
    if "use_cpu" not in user and training_args.use_cpu and (training_args.bf16 or training_args.fp16):
        made.append(Decision("use_cpu", True, "no accelerator: transformers autocasts on the CPU only with use_cpu"))
    return made


class Decisions:
    """The decisions of one run, in the order made; each printed when made (main process)."""

    def __init__(self, cfg, argv: list[str] | None):
        self.user = user_keys(argv)
        self.made: list[Decision] = []
        if hasattr(cfg, "training"):
            self.add(cfg, *precision_decisions(cfg.training, self.user))

    def add(self, cfg, *decisions: Decision | None) -> None:
        """Record each decision and set its key on the part of `cfg` that declares it (None: nothing decided)."""
        for decision in filter(None, decisions):
            if cfg is not None:
                apply(cfg, decision)
            self.made.append(decision)
            if _main_process():
                print(f"decision: {decision}", flush=True)

    def record(self) -> dict[str, dict[str, Any]]:
        return {d.key: {"value": d.value, "why": d.why} for d in self.made}


def apply(cfg, decision: Decision) -> None:
    for part in (getattr(cfg, f.name) for f in dataclasses.fields(cfg)):
        if any(f.name == decision.key for f in dataclasses.fields(part)):
            setattr(part, decision.key, decision.value)
            if decision.key == "activation_checkpointing":  # transformers' deprecated alias follows it
                part.gradient_checkpointing = decision.value
            return
    raise KeyError(f"no config part declares '{decision.key}'")


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
