"""`finetune-kit train <recipe> --help`: the recipe's own keys first, grouped, with their defaults and help text;
`--help-all` adds every key of the library trainer's arguments (several hundred lines)."""

from __future__ import annotations

import dataclasses
import typing

from finetune_kit import recipes

# The trainer keys most runs set; the rest are behind --help-all.
COMMON_TRAINING = ("output_dir", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "max_length", "bf16", "activation_checkpointing", "packing",
                   "eval_strategy", "save_strategy", "save_steps", "logging_steps", "seed", "report_to",
                   "resume_from_checkpoint", "beta", "loss_type", "num_generations")
ADAPTER_PREFIXES = ("lora_", "use_peft", "use_dora", "use_rslora", "load_in_", "bnb_", "use_bnb")


def _line(field: dataclasses.Field, hint) -> str:
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    kind = getattr(hint, "__name__", str(hint)).replace("typing.", "")
    text = field.metadata.get("help", "").replace("%%", "%")
    return f"  --{field.name} ({kind}, default {default!r}){': ' + text if text else ''}"


def recipe_help(name: str, everything: bool = False) -> str:
    """The help text of one recipe: its keys grouped model / LoRA and quantization / data / task / training / run."""
    from finetune_kit.config import config_parts

    row = recipes.get(name)
    groups: dict[str, list[str]] = {}
    for part_name, part in config_parts(row.config_type()).items():
        hints = typing.get_type_hints(part)
        for field in dataclasses.fields(part):
            if field.name in row.unread or field.name.startswith("_") or not field.init:
                continue
            if part_name == "training":
                reads = row.training_reads
                if (reads is not None and field.name not in reads) or \
                        (not everything and field.name not in COMMON_TRAINING):
                    continue
            group = "LoRA and quantization" if field.name.startswith(ADAPTER_PREFIXES) else part_name
            groups.setdefault(group, []).append(_line(field, hints.get(field.name)))
    order = ["model", "LoRA and quantization", "data", "task", "rewards", "ppo", "training", "run"]
    lines = [f"usage: finetune-kit train {name} --config CONFIG [--key value ...]", "", f"{name}: {row.summary}",
             f"shipped configs: {', '.join(row.shipped_configs()) or 'none'}"]
    for group in sorted(groups, key=lambda g: order.index(g) if g in order else len(order)):
        lines += ["", f"{group}:", *groups[group]]
    if not everything and row.training_reads is None:
        lines += ["", "more training keys (the trainer's own): finetune-kit train " + name + " --help-all"]
    return "\n".join(lines)


def recipes_help() -> str:
    width = max(map(len, recipes.names()))
    return "\n".join(["usage: finetune-kit train [RECIPE] --config CONFIG [--key value ...]", "",
                      "RECIPE (default: the one the config names with `recipe:`):",
                      *(f"  {r.name:<{width}}  {r.summary}" for r in recipes.RECIPES), "",
                      "finetune-kit train RECIPE --help shows its keys; finetune-kit recipes lists the shipped configs."])
