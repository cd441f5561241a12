"""Finding and reading a YAML config: a path, or the name of a config shipped in the package.

Imports nothing heavy, so a bad file is answered before trl / transformers load.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from finetune_kit.errors import ConfigError

# Shipped YAML configs, package data: a config can be named instead of a path (`--config sft_lora_smollm2`).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# The key by which a YAML names its recipe (`recipe: dpo`; finetune_kit.recipes); the file-name prefix is the fallback.
RECIPE_KEY = "recipe"
# The search space of `finetune-kit tune` (finetune_kit/tune.py); training ignores it.
TUNE_KEY = "tune"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def config_path(value: str | Path) -> Path:
    """A config given by path, or by the name of a shipped config (`sft_lora_smollm2`, with or without .yaml)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = CONFIGS_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {value} (neither a file nor a shipped config; `finetune-kit recipes` "
                      "lists the shipped ones).")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML key given twice is a mistake to name, not a value to drop silently (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' is given twice (line {key_node.start_mark.line + 1}); keep one.")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(err: Exception) -> str:
    """A YAML parser error on one line ("line L, column C: problem"): PyYAML's own message spans several lines, with
    the offending text and a caret."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (problem or " ".join(str(err).split()))


def read_yaml_config(value: str | Path) -> dict[str, Any]:
    """Read a YAML config (a path or a shipped name) as a flat mapping, with errors that name the file."""
    path = config_path(value)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys to values, got {type(data).__name__}.")
    return data


def unknown_key_message(key: str, known: Sequence[str], where: str) -> str:
    # A key that extends or truncates a known one (lora_rank / lora_r) beats a merely similar spelling (local_rank);
    # a close spelling must be close (0.75: loss_type is not lora_task_type).
    prefixed = [k for k in known if len(k) >= 4 and (key.startswith(k) or k.startswith(key))]
    close = sorted(prefixed, key=len, reverse=True) or difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{key}' ({where}).{hint}"


def dashless_override(arg: str, known) -> str | None:
    """`lora_r=4` on a command line is a mistaken override (argparse would take it for a stray word)."""
    key, eq, value = arg.partition("=")
    if eq and key.isidentifier() and key in known:
        return f"unexpected argument '{arg}': overrides are written --{key} {value}."
    return None


def null_message(key: str, where: str) -> str:
    return f"config key '{key}' ({where}) is null, but it takes a value; give one, or remove the line for the default."


def config_argument(argv: list[str]) -> str | None:
    """The value of `--config X` / `--config=X` in a recipe's arguments."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def given_keys(yaml_keys, cli_args: list[str], config: str | None) -> list[tuple[str, str]]:
    """(key, where) for each key the user set: the YAML's (not `recipe` / `tune`) and the command line's `--key`."""
    given = [(str(k), f"config file {config}") for k in yaml_keys if k not in (RECIPE_KEY, TUNE_KEY)]
    given += [(a.split("=", 1)[0][2:].replace("-", "_"), "command line") for a in cli_args
              if a.startswith("--") and a.split("=", 1)[0] != "--config"]
    return given


def keys_in(argv: list[str]) -> list[tuple[str, str]]:
    """`given_keys` of a recipe's arguments, reading the config they name."""
    config = config_argument(argv)
    return given_keys(read_yaml_config(config) if config else {}, argv, config)

