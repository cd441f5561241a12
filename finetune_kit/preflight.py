"""The checks that need no library, run before trl / transformers / torch are imported (~7 s on a small CPU).

`finetune-kit train` and `check` (and the repo launchers) call `preflight(row, argv)` after choosing the recipe: a mistyped or
out-of-range value, a finished run in the output folder, a model path that does not exist, a broken data row is
named in well under 2 s instead of after the imports. Every check here is the function the recipe runs again on
the typed config (config_checks via the recipe table, runs.check_output_dir, model_files, the data normalisers),
so `check` and `train` cannot disagree; the preflight only runs them earlier.

Values come from the YAML and the command line, converted as transformers' HfArgumentParser converts them (the
kinds and defaults are in recipes/keys.json). What the preflight cannot read with certainty (a list where one value
goes, a mapping, an unusual command line) it leaves to the full parser, which names it a few seconds later.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from finetune_kit import recipes
from finetune_kit.errors import ConfigError, UserError
from finetune_kit.yaml_config import (
    RECIPE_KEY,
    TUNE_KEY,
    config_argument,
    dashless_override,
    null_message,
    read_yaml_config,
)


class _Unsure(Exception):
    """A value the preflight cannot convert with certainty: the full parser decides."""


def _bool(text: str) -> bool:  # transformers.hf_argparser.string_to_bool, its message too
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError(f"Truthy value expected: got {text} but expected one of yes/no, true/false, t/f, y/n, 1/0 "
                     "(case insensitive).")


_CONVERT = {"int": int, "float": float, "str": str, "bool": _bool}


def _one(key: str, value: Any, spec: list, where: str) -> Any:
    _, kind, _, _, choices, _ = spec
    if kind == "raw":
        return value
    if isinstance(value, (dict, list)):
        raise _Unsure(key)
    text = str(value).lower() if isinstance(value, bool) else str(value)  # as config._yaml_value_to_args writes it
    if kind == "choice":
        if text not in choices:
            raise ConfigError(f"config key '{key}' ({where}): invalid choice: '{text}' (choose from "
                              f"{', '.join(repr(c) for c in choices)})")
        return text
    try:
        return _CONVERT[kind](text)
    except ValueError as err:  # argparse's words for int / float, transformers' for bool
        detail = str(err) if kind == "bool" else f"invalid {kind} value: '{text}'"
        raise ConfigError(f"config key '{key}' ({where}): {detail}") from None


def _convert(key: str, value: Any, spec: list, where: str) -> Any:
    if value is None and not spec[5] and where != "command line":
        raise ConfigError(null_message(key, where))
    if value is None or (value == [] and spec[2]):
        return value
    if spec[2]:  # nargs "+": one value or a list of them
        return [_one(key, v, spec, where) for v in (value if isinstance(value, list) else [value])]
    return _one(key, value, spec, where)


def _command_line(args: list[str], fields: dict) -> list[tuple[str, Any]]:
    """(key, value) of `--key value`, `--key=value`, `--flag` and `--no_flag` arguments, `--config` left out."""
    given, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            if (message := dashless_override(arg, fields)) is not None:
                raise ConfigError(message)
            raise _Unsure(arg)
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        values = [text] if eq else []
        i += 1
        while not eq and i < len(args) and not args[i].startswith("--") and dashless_override(args[i], fields) is None \
                and not (key == "config" and values):
            values.append(args[i])
            i += 1
        if key == "config":
            continue
        if key not in fields and key.startswith("no_") and fields.get(key[3:], [0, ""])[1] == "bool" and not values:
            given.append((key[3:], False))
        elif key in fields and fields[key][1] == "bool" and not values:
            given.append((key, True))
        elif key in fields and len(values) == 1:
            given.append((key, values[0]))
        elif key in fields and values and fields[key][2]:
            given.append((key, values))
        else:
            raise _Unsure(key)
    return given


def user_values(fields: dict, argv: list[str]) -> dict[str, Any]:
    """The values the user set (YAML, then the command line, which wins), converted; `_Unsure` when unclear."""
    config = config_argument(argv)
    raw = read_yaml_config(config) if config else {}
    given = [(k, v, f"config file {config}") for k, v in raw.items() if k not in (RECIPE_KEY, TUNE_KEY)]
    given += [(k, v, "command line") for k, v in _command_line(list(argv), fields)]
    return {key: _convert(key, value, fields[key], where) for key, value, where in given if key in fields}


def config_view(fields: dict, values: dict[str, Any]):
    """The config as the checks read it: `cfg.<part>.<key>`, defaults where the user set nothing. The data and run
    parts are the real dataclasses (their own validation runs); the others plain namespaces of values."""
    from finetune_kit.config_plain import DataArguments, RunArguments

    parts: dict[str, dict[str, Any]] = {}
    for key, spec in fields.items():
        parts.setdefault(spec[0], {})[key] = values.get(key, spec[3])
    built = {}
    for part, kwargs in parts.items():
        cls = {"data": DataArguments, "run": RunArguments}.get(part)
        if cls is not None and set(kwargs) == {f for f in cls.__dataclass_fields__}:
            try:
                built[part] = cls(**kwargs)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"invalid config: {err}") from None
        else:
            built[part] = SimpleNamespace(**kwargs)
    return SimpleNamespace(**built)


def config_problems(row: recipes.Recipe, argv: list[str]):
    """The config as the checks see it and what they say of it; (None, []) when the preflight cannot tell."""
    index = recipes.key_index(row)
    if index is None:
        return None, []
    config = config_argument(argv)
    named = read_yaml_config(config).get(RECIPE_KEY) if config else None
    if named is not None:
        recipes.require_recipe_key(row, named, config)
    try:
        cfg = config_view(index["fields"], user_values(index["fields"], argv))
        return cfg, [message for check in row.checks if (message := check(cfg))]
    except (_Unsure, TypeError, AttributeError):  # a value shape the checks do not expect: the full parser decides
        return None, []


def preflight(row: recipes.Recipe, argv: list[str]) -> None:
    """Raise the first mistake the recipe would find without its libraries; return quietly when there is none."""
    cfg, problems = config_problems(row, argv)
    if problems:
        raise ConfigError("invalid config: " + " ".join(problems))
    if cfg is not None:
        _files(row, cfg)


def _files(row: recipes.Recipe, cfg) -> None:
    """The output folder; every data row of local files; for the decoder stages, the model and tokenizer folders."""
    from finetune_kit.data import NO_CHAT_TEMPLATE, ROW_NORMALISERS, load_rows, mixing
    from finetune_kit.data.chat import read_chat_template
    from finetune_kit.data.readers import is_local
    from finetune_kit.model_files import (
        EMBEDDED,
        has_chat_template,
        require_adapter_chain_ends,
        require_full_checkpoint,
        require_model_reference,
        require_tokenizer_files,
        require_weights,
    )
    from finetune_kit.rl.reward_functions import require_reward_sources
    from finetune_kit.runs import check_output_dir, require_checkpoint_fits

    training, run = getattr(cfg, "training", None), getattr(cfg, "run", None)
    if training is not None and run is not None and getattr(training, "output_dir", None):
        checkpoint = check_output_dir(training.output_dir, run.overwrite_output_dir, training.resume_from_checkpoint)
        if checkpoint is not None and getattr(cfg, "model", None) is not None:
            require_checkpoint_fits(checkpoint, cfg.model)
    data = getattr(cfg, "data", None)
    if data is None:
        return
    sources = [s for s in (data.dataset_name, data.eval_dataset_name,
                           getattr(getattr(cfg, "task", None), "test_dataset_name", None)) if s]
    if row.rows is None:  # the encoder / vision recipes: their own reader; their model names may not be paths
        model = getattr(getattr(cfg, "model", None), "model_name_or_path", None)
        if model and Path(model).expanduser().is_dir():
            require_full_checkpoint(model, str(Path(model).expanduser()))
        if sources and all(is_local(s) for s in sources):  # a hub dataset is read once, by the recipe
            row.check_data(cfg)
        return
    model = cfg.model
    if model.model_name_or_path and model.model_name_or_path not in EMBEDDED:
        require_model_reference(model.model_name_or_path)
        require_weights(model.model_name_or_path, str(Path(model.model_name_or_path).expanduser()))
        require_adapter_chain_ends(model.model_name_or_path, Path(model.model_name_or_path).expanduser())
    tokenizer = model.tokenizer_name_or_path or model.model_name_or_path
    if tokenizer and tokenizer not in EMBEDDED:
        require_model_reference(tokenizer)
        require_tokenizer_files(tokenizer, str(Path(tokenizer).expanduser()))
    if getattr(training, "chat_template_path", None):
        read_chat_template(training.chat_template_path)
    rewards = getattr(cfg, "rewards", None)  # the online-RL recipes
    if rewards is not None:
        require_reward_sources(rewards.reward_model, rewards.reward_functions)
    if data.skip_invalid_rows:
        return  # the recipe counts and reports what it skips
    conversations = False
    # Every source of a mixture with its own format; a stream is validated as it is read (it may not fit in memory).
    reads = [] if data.streaming else [(s, s.dataset_name, s.dataset_train_split) for s in mixing.source_args(data)]
    for args, source, split in reads + [(data, data.eval_dataset_name, "validation")]:
        if source and is_local(source):
            rows = load_rows(source, args, split, ROW_NORMALISERS[row.rows])
            conversations = conversations or "messages" in rows[0]
    folder = Path(tokenizer).expanduser() if tokenizer and tokenizer not in EMBEDDED else None
    if row.rows == "sft" and conversations and not getattr(training, "chat_template_path", None) and \
            folder is not None and folder.is_dir() and not has_chat_template(folder):
        raise UserError(NO_CHAT_TEMPLATE)  # what tokenize_sft_dataset says once the tokenizer has loaded

