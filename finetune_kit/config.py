"""Typed recipe configs: flat YAML + command-line overrides, unknown keys and wrong types rejected by name.

A recipe's config is a dataclass whose fields are the shared parts (model, data, training, run). The YAML file
and the command line stay flat, with keys named as trl / transformers name them (`model_name_or_path`,
`learning_rate`, `lora_r`, `load_in_4bit`, ...), so an existing trl YAML runs with few changes.

Parsing reuses transformers' `HfArgumentParser`: the YAML is turned into `--key value` arguments placed before
the command-line ones, so YAML values get the same type conversion and checks as command-line values, and the
command line wins (argparse keeps the last occurrence).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import datasets
from transformers import HfArgumentParser, TrainingArguments
from trl import ModelConfig

from finetune_kit.config_plain import DATASET_FORMATS, DataArguments, RunArguments  # noqa: F401 - re-exported
from finetune_kit.errors import ConfigError
from finetune_kit.hardware import bf16_is_fast, has_accelerator
from finetune_kit.yaml_config import (
    RECIPE_KEY,
    TUNE_KEY,
    dashless_override,
    given_keys,
    null_message,
    read_yaml_config,
    unknown_key_message,
)

C = TypeVar("C")


@dataclass
class ModelArguments(ModelConfig):
    """trl's `ModelConfig` (LoRA, DoRA, 4/8-bit, dtype, attention) with toolkit defaults.

    `model_name_or_path` takes a hub id, a local folder, a `.gguf` file, or a short name of an embedded
    checkpoint (see `finetune_kit.models.EMBEDDED`).
    """

    model_name_or_path: str | None = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Hub id, local folder, .gguf file, or embedded short name (smollm2-135m-instruct)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use when it differs from the model's."}
    )
    # LoRA on every linear layer is what recent recipes (QLoRA paper, trl docs) recommend over q/v only.
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"], metadata={
            "help": "LoRA target modules: names or dotted suffixes ([q_proj, v_proj]), all-linear, or one regex over "
                    "full module names (a single value with regex characters, e.g. '.*\\.(q|v)_proj')."}
    )

    def __post_init__(self):
        targets = self.lora_target_modules
        super().__post_init__()
        # trl turns a one-element list into a string, which peft reads as a regex over full module names: [q_proj]
        # would then match nothing. One plain name stays a list (suffix match); a value with regex characters or
        # peft's keyword all-linear is passed as the string.
        if isinstance(targets, list) and len(targets) == 1 and targets[0] != "all-linear" and \
                not re.search(r"[.*+?()\[\]|^$\\]", targets[0]):
            self.lora_target_modules = targets


def length_grouped_sampling():
    """The `train_sampling_strategy` field of recipes whose rows vary in length (one field object per class)."""
    return field(default="group_by_length", metadata={
        "help": "Training sampler: group_by_length (default here: less padding), random, sequential, "
                "batch_rebalance."})


def machine_defaults(args) -> None:
    """Shared by the recipes' training arguments, before transformers validates them."""
    if not args.output_dir:  # transformers would write to ./trainer_output; a run folder should be chosen
        raise ValueError("output_dir is required.")
    if args.disable_tqdm is None and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        # A log file or CI log (not a terminal, not a notebook: Jupyter's stderr is no TTY either but shows bars
        # well) gets the logged numbers, not thousands of redrawn progress bars.
        args.disable_tqdm = True
        datasets.disable_progress_bars()
    if args.bf16 is None:
        args.bf16 = not args.fp16 and bf16_is_fast()
    if (args.bf16 or args.fp16) and not has_accelerator():
        args.use_cpu = True  # transformers only allows CPU autocast when told it runs on the CPU


@dataclass
class TrainerArguments(TrainingArguments):
    """transformers' `TrainingArguments` with the machine defaults: the trainer of the encoder / vision tasks, and
    the optimiser, schedule and logging settings of our PPO loop."""

    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on where the hardware runs it natively."}
    )
    # Named and placed as in trl's configs, so the key means the same in every recipe.
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with a hub checkpoint."})

    def __post_init__(self):
        machine_defaults(self)
        super().__post_init__()


# ---------------------------------------------------------------------------------------------------------------
# Parsing


class _Parser(HfArgumentParser):
    """HfArgumentParser that raises instead of printing usage and exiting, so we control the message."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise ConfigError(message)


def config_parts(config_type: type) -> dict[str, type]:
    """The dataclass type of each part of a composed recipe config."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


def _parser_for(config_type: type) -> _Parser:
    return _Parser(list(config_parts(config_type).values()), allow_abbrev=False)


def known_keys(config_type: type) -> list[str]:
    """Every flat key a recipe config accepts."""
    return sorted({f.name for part in config_parts(config_type).values() for f in dataclasses.fields(part)})




def mapping_keys(config_type: type) -> set[str]:
    """Keys whose values may be mappings (typed `dict | str`, as transformers types them); all others are flat."""
    # From the annotations: HfArgumentParser rewrites `field.type` in place when it builds its parser.
    return {name for part in config_parts(config_type).values()
            for name, hint in typing.get_type_hints(part).items() if "dict" in str(hint)}


def non_nullable_keys(config_type: type) -> set[str]:
    """Keys whose type does not admit None (`learning_rate: float`): a YAML null there is a mistake to name, not a
    value to pass on (it ended in a TypeError inside transformers, or silently in a library default)."""
    return {name for part in config_parts(config_type).values()
            for name, hint in typing.get_type_hints(part).items()
            if type(None) not in typing.get_args(hint) and hint is not Any}


def _yaml_value_to_args(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [f"--{key}", str(value).lower()]
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
        return [f"--{key}", json.dumps(value)]  # a mapping, or a list of them (`datasets`): one JSON value
    if isinstance(value, list):
        return [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in value)]
    return [f"--{key}", str(value)]


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, config_path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path to a YAML file.")
            config_path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config_path, rest


def _check_cli_keys(args: list[str], parser: _Parser, known: Sequence[str]) -> None:
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            if option not in parser._option_string_actions:
                raise ConfigError(unknown_key_message(option[2:].replace("-", "_"), known, "command line"))
        elif (message := dashless_override(arg, known)) is not None:
            raise ConfigError(message)


def _argparse_message(message: str, cli_args: list[str], config_path: str | None) -> str:
    """Rewrite argparse's 'argument --x/--y: invalid float value' as 'config key 'x' (where): ...'."""
    match = re.match(r"argument --([\w]+)(?:/--[\w-]+)?: (.*)", message)
    if not match:
        return message
    key, detail = match.groups()
    options = (f"--{key}", f"--{key.replace('_', '-')}")
    given = [cli_args[i + 1] if "=" not in a and i + 1 < len(cli_args) else a.partition("=")[2]
             for i, a in enumerate(cli_args) if a.split("=", 1)[0] in options]
    bad = re.search(r"value: '(.*)'$", detail)
    on_cli = bool(given) and (bad is None or bad.group(1) in given)
    where = "command line" if on_cli or not config_path else f"config file {config_path}"
    return f"config key '{key}' ({where}): {detail}"


def parse_config(config_type: type[C], argv: Sequence[str] | None = None) -> C:
    """Build a recipe config from `--config file.yaml` plus `--key value` overrides (the command line wins).

    Unknown keys, wrong types and broken cross-field rules raise `ConfigError` naming the key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, cli_args = _split_config_flag(argv)
    parser = _parser_for(config_type)
    known = known_keys(config_type)

    yaml_args: list[str] = []
    nulls: dict[str, Any] = {}
    raw = read_yaml_config(config_path) if config_path is not None else {}
    if config_path is not None:
        nested_ok, not_nullable = mapping_keys(config_type), non_nullable_keys(config_type)
        for key, value in raw.items():
            if key == TUNE_KEY:
                continue  # the search space of `finetune-kit tune` (finetune_kit/tune.py); training ignores it
            if key == RECIPE_KEY:
                _require_recipe(value, config_type, config_path)
                continue
            if f"--{key}" not in parser._option_string_actions:
                raise ConfigError(unknown_key_message(str(key), known, f"config file {config_path}"))
            if isinstance(value, dict) and key not in nested_ok:
                raise ConfigError(f"{config_path}: key '{key}' holds a mapping, but it takes a single value.")
            if isinstance(value, list) and len(value) > 1 and not _takes_a_list(parser, key) and \
                    not (key in nested_ok and all(isinstance(v, dict) for v in value)):
                raise ConfigError(f"{config_path}: key '{key}' holds a list ({value}), but it takes a single value.")
            if value is None and key in not_nullable:
                raise ConfigError(null_message(str(key), f"config file {config_path}"))
            if value is None or value == []:
                nulls[key] = None if value is None else []
            else:
                yaml_args += _yaml_value_to_args(key, value)
    _check_cli_keys(cli_args, parser, known)
    _refuse_unread_keys(config_type, raw, cli_args, config_path)
    parser.set_defaults(**nulls)

    try:
        parts = parser.parse_args_into_dataclasses(args=yaml_args + cli_args, look_for_args_file=False)
    except ConfigError as err:
        raise ConfigError(_argparse_message(str(err), cli_args, config_path)) from None
    except (ValueError, TypeError) as err:
        # Raised by a part's __post_init__, e.g. trl's "can't use 8 bit and 4 bit at the same time".
        raise ConfigError(f"invalid config{f' {config_path}' if config_path else ''}: {err}") from None

    config = config_type(*parts)
    problems = [msg for check in config_checks_of(config_type) if (msg := check(config))]
    if problems:
        raise ConfigError("invalid config: " + " ".join(problems))
    return config


def _refuse_unread_keys(config_type: type, yaml_keys: dict, cli_args: list[str], config_path: str | None) -> None:
    """A key the recipe would accept and ignore (recipe table `unread` / `training_reads`) is refused by name."""
    from finetune_kit import recipes

    row = recipes.for_config_type(config_type)
    if row is None or (not row.unread and row.training_reads is None):
        return
    training_part = config_parts(config_type).get("training")
    training = {f.name for f in dataclasses.fields(training_part)} if training_part else set()
    for key, where in given_keys(yaml_keys, cli_args, config_path):
        problem = recipes.refused_key(row, key, training)
        if problem:
            raise ConfigError(f"{problem} ({where}).")


def _takes_a_list(parser: _Parser, key: str) -> bool:
    return parser._option_string_actions[f"--{key}"].nargs not in (None, "?")


def _require_recipe(named: Any, config_type: type, config_path: str) -> None:
    from finetune_kit import recipes

    row = recipes.for_config_type(config_type)
    if row is not None:
        recipes.require_recipe_key(row, named, config_path)


def config_checks_of(config_type: type) -> tuple[Callable[[Any], str | None], ...]:
    """The cross-field checks a config type runs: its recipe table row's (the preflight runs the same)."""
    from finetune_kit import recipes

    row = recipes.for_config_type(config_type)
    return row.checks if row is not None else ()


def config_to_dict(config: Any) -> dict[str, Any]:
    """The resolved flat config as plain YAML-able values (what a run folder records)."""
    flat: dict[str, Any] = {}
    for part_name in config_parts(type(config)):
        part = getattr(config, part_name)
        values = part.to_dict() if hasattr(part, "to_dict") else dataclasses.asdict(part)
        for f in dataclasses.fields(part):
            if f.name in values and not f.name.startswith("_"):
                flat[f.name] = _plain(values[f.name])
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return getattr(value, "value", str(value))
