"""The Set up form, generated from a recipe's typed config: one field per key, grouped, with help and choices.

Nothing here knows a key by heart except which training keys are shown first: the keys, their kinds (how the
command line converts them), defaults and choices come from the recipe table's key index (recipes/keys.json, written
from the parser that `train` uses), the help text from the dataclass field metadata. A key added to a config
dataclass appears in the form without UI code; a key the recipe refuses (`unread`) does not appear at all.

Validation is `finetune-kit check`'s first stage, `preflight(row, argv)`, on the YAML the form would write: the same
functions, so the board and the command line cannot disagree. Its one-line error names the key; `error_field`
finds which field to show it beside.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from finetune_kit import recipes
from finetune_kit.errors import UserError
from finetune_kit.ui.paths import existing_workspace, inside_workspace
from finetune_kit.yaml_config import RECIPE_KEY, TUNE_KEY

GROUPS = ("Model", "Data", "LoRA / quantization", "Task", "Training", "Training: more keys")
# Model keys that choose the adapter or the quantization (trl's ModelConfig keeps them with the model).
_ADAPTER = re.compile(r"^(use_peft|use_dora|use_rslora|lora_.*|load_in_(4|8)bit|bnb_.*|use_bnb_nested_quant)$")
# The training keys most runs set, shown open; the other ~120 of TrainingArguments wait in a closed group.
FIRST_TRAINING_KEYS = ("output_dir", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type",
                       "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                       "logging_steps", "save_strategy", "save_steps", "eval_strategy", "eval_steps", "seed", "bf16",
                       "overwrite_output_dir", "resume_from_checkpoint")
# Keys holding a path or a model / data reference: their values must stay inside the workspace (or be a hub id /
# an embedded name, which resolve to nothing on disk).
_PATH_KEY = re.compile(r".*(_dir|_path|_name_or_path|dataset_name|_file|reward_model)$|"
                       r"^(resume_from_checkpoint|deepspeed|fsdp_config)$")
DEFAULT = "(default)"


@dataclass(frozen=True)
class FormField:
    name: str
    group: str
    kind: str  # bool | choice | int | float | str | raw (YAML text: lists, mappings)
    is_list: bool
    default: Any
    choices: tuple[str, ...] | None
    nullable: bool
    help: str

    @property
    def three_way(self) -> bool:
        """A flag whose default is neither true nor false (None: decided for the user; transformers' "no"): its
        widget offers "(default)" beside true / false, so leaving it alone writes nothing."""
        return self.kind == "bool" and (self.nullable or not isinstance(self.default, bool))


def _group(name: str, part: str) -> str:
    if part == "model":
        return "LoRA / quantization" if _ADAPTER.match(name) else "Model"
    if part == "data":
        return "Data"
    if part in ("training", "run"):
        return "Training" if name in FIRST_TRAINING_KEYS else "Training: more keys"
    return "Task"  # a recipe's own part: task, rewards, ppo


def form_fields(recipe: str) -> list[FormField]:
    """Every key the recipe accepts and reads, in group order (first training keys in their listed order)."""
    from finetune_kit.config import config_parts  # imports transformers / trl: the first form takes a few seconds

    row = recipes.get(recipe)
    index = recipes.key_index(row)
    if index is None:
        raise UserError(f"recipe {recipe}: no key index (run `python -m finetune_kit.recipes` to write it).")
    helps = {f.name: f.metadata.get("help", "") for part in config_parts(row.config_type()).values()
             for f in dataclasses.fields(part)}
    training = set(index["training"])
    fields = []
    for name, (part, kind, is_list, default, choices, nullable) in index["fields"].items():
        if recipes.refused_key(row, name, training) is not None:
            continue
        kind = "raw" if is_list and kind != "choice" else kind
        fields.append(FormField(name, _group(name, part), kind, is_list, default,
                                tuple(choices) if choices else None, nullable, helps.get(name, "")))
    first = {name: i for i, name in enumerate(FIRST_TRAINING_KEYS)}
    return sorted(fields, key=lambda f: (GROUPS.index(f.group), first.get(f.name, len(first)), f.name))


def widget_value(field: FormField, value: Any) -> Any:
    """What the field's widget shows for a YAML value (the default when the YAML does not set it)."""
    if field.kind == "bool":
        return value if not field.three_way else DEFAULT if value == field.default else str(value).lower()
    if field.kind == "choice":
        return DEFAULT if value is None else str(value)
    if field.kind in ("int", "float"):
        return value
    if field.kind == "raw":
        return "" if value is None else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return "" if value is None else str(value)


def yaml_value(field: FormField, shown: Any) -> Any:
    """The YAML value of what a widget holds (None: unset); a raw text that is not YAML is named by its key."""
    if field.kind == "bool":
        return field.default if shown == DEFAULT else shown if isinstance(shown, bool) else shown == "true"
    if field.kind == "choice":
        return None if shown in (DEFAULT, None, "") else shown
    if field.kind == "int":
        return None if shown is None else int(shown) if float(shown).is_integer() else shown
    if field.kind == "float":
        return None if shown is None else float(shown)
    if field.kind == "raw":
        if shown is None or not str(shown).strip():
            return None
        try:
            return yaml.safe_load(str(shown))
        except yaml.YAMLError:
            raise UserError(f"config key '{field.name}': {shown!r} is not a YAML value (a list is written "
                            "[a, b]).") from None
    return None if shown is None or shown == "" else str(shown)


def config_from_form(fields: list[FormField], shown: list[Any], base: dict[str, Any], recipe: str) -> dict[str, Any]:
    """The YAML mapping the form describes: the keys the base config set (in its order) and every field the form
    changed from its default; unchanged defaults stay out, so the file reads like one written by hand."""
    config: dict[str, Any] = {RECIPE_KEY: recipe}
    if TUNE_KEY in base:
        config[TUNE_KEY] = base[TUNE_KEY]
    values = {f.name: yaml_value(f, s) for f, s in zip(fields, shown)}
    defaults = {f.name: f.default for f in fields}
    for name in list(base) + [f.name for f in fields]:
        if name in values and name not in config and (name in base or values[name] != defaults[name]):
            config[name] = values[name]
    return config


def confine_paths(workspace: Path, config: dict[str, Any]) -> None:
    """Refuse a config whose path keys point outside the workspace (the message names the key)."""
    existing_workspace(workspace)  # a workspace gone is its own error, not one of the first path key's
    for key, value in config.items():
        if not _PATH_KEY.match(key) or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                if item.strip().startswith("~"):
                    raise UserError(f"config key '{key}': {item!r} is outside the workspace; use a path inside it.")
                try:
                    inside_workspace(workspace, item)
                except UserError as err:
                    raise UserError(f"config key '{key}': {err}") from None


def error_field(message: str, names: list[str], values: dict[str, Any] | None = None) -> str | None:
    """The form field an error message is about: the key it names (`config key 'x'`), else the field whose value
    (a data file, a model folder) it quotes, else the one field name it mentions first."""
    for match in re.finditer(r"\bkeys? '(\w+)'", message):
        if match.group(1) in names:
            return match.group(1)
    quoted = []  # (where, field) of a path value the message quotes whole, or by its file name
    for name, value in (values or {}).items():
        if isinstance(value, str) and re.search(r"[/.-]", value) and len(value) > 3:
            for text in (value, Path(value).name):
                if len(text) > 3 and text in message:
                    quoted.append((message.index(text), name))
                    break
    if quoted:
        return min(quoted)[1]
    named = [(m.start(), n) for n in names if (m := re.search(rf"(?<![\w-]){re.escape(n)}\b", message))]
    return min(named)[1] if named else None


def write_config(path: Path, config: dict[str, Any]) -> Path:
    from finetune_kit.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def validate(workspace: Path, recipe: str, config: dict[str, Any], path: Path) -> None:
    """Raise the first problem `check` / `train` would name before any library loads (the preflight), with the
    workspace rule for paths first. Writes the YAML to `path` (inside the workspace) for the preflight to read."""
    confine_paths(workspace, config)
    from finetune_kit.preflight import preflight

    argv = ["--config", str(write_config(path, config))]
    row = recipes.choose(recipe, argv)  # unknown / refused keys
    preflight(row, argv)
