"""One config type per recipe, composed of the shared parts, plus small named cross-field checks.

Each check takes the whole config and returns an error message naming the keys, or None. They run in
`parse_config`, before any model or dataset is touched, and each is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from finetune_kit.config import DataArguments, ModelArguments, RunArguments, register_checks
from finetune_kit.hardware import bf16_is_fast, has_accelerator


@dataclass
class SFTTrainingArguments(SFTConfig):
    """trl's `SFTConfig` with defaults that suit the machine instead of assuming a recent GPU."""

    # trl turns bf16 on unconditionally; on a CPU without native bf16 that is several times slower than fp32.
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on where the hardware runs it natively."}
    )
    # trl defaults this (deprecated alias) to True; checkpointing costs ~20-30% speed and small models don't need it.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing.", "nargs": "?", "const": True}
    )

    def __post_init__(self):
        if not self.output_dir:  # transformers would write to ./trainer_output; a run folder should be chosen
            raise ValueError("output_dir is required.")
        if self.bf16 is None:
            self.bf16 = not self.fp16 and bf16_is_fast()
        if (self.bf16 or self.fp16) and not has_accelerator():
            self.use_cpu = True  # transformers only allows CPU autocast when told it runs on the CPU
        super().__post_init__()


@dataclass
class SFTRecipeConfig:
    """`recipes/sft.py`: supervised fine-tuning of a causal LM on instruction / chat data."""

    model: ModelArguments
    data: DataArguments
    training: SFTTrainingArguments
    run: RunArguments


# --- checks shared by the recipes ---------------------------------------------------------------------------


def quantization_is_exclusive(cfg) -> str | None:
    if cfg.model.load_in_4bit and cfg.model.load_in_8bit:
        return "load_in_4bit and load_in_8bit are both true; choose one."
    return None


def quantization_needs_adapter(cfg) -> str | None:
    # Quantized base weights cannot take gradient updates; only adapters on top of them can (QLoRA).
    if (cfg.model.load_in_4bit or cfg.model.load_in_8bit) and not cfg.model.use_peft:
        return "load_in_4bit / load_in_8bit train adapters only: set use_peft: true."
    return None


def dora_needs_peft(cfg) -> str | None:
    if cfg.model.use_dora and not cfg.model.use_peft:
        return "use_dora: true needs use_peft: true."
    return None


def dataset_is_given(cfg) -> str | None:
    if not cfg.data.dataset_name:
        return "dataset_name is required (a local file or folder, or a hub dataset id)."
    return None


def eval_split_ratio_in_range(cfg) -> str | None:
    if not 0.0 <= cfg.data.eval_split_ratio < 1.0:
        return f"eval_split_ratio must be in [0, 1), got {cfg.data.eval_split_ratio}."
    if cfg.data.eval_split_ratio and cfg.data.eval_dataset_name:
        return "eval_dataset_name and eval_split_ratio are both set; use one source of validation data."
    return None


def eval_strategy_has_data(cfg) -> str | None:
    strategy = getattr(cfg.training.eval_strategy, "value", cfg.training.eval_strategy)
    if strategy != "no" and not (cfg.data.eval_dataset_name or cfg.data.eval_split_ratio):
        return f"eval_strategy is '{strategy}' but there is no validation data: set eval_split_ratio or eval_dataset_name."
    return None


def learning_rate_positive(cfg) -> str | None:
    if not cfg.training.learning_rate > 0:
        return f"learning_rate must be positive, got {cfg.training.learning_rate}."
    return None


def lora_rank_positive(cfg) -> str | None:
    if cfg.model.use_peft and cfg.model.lora_r <= 0:
        return f"lora_r must be a positive integer, got {cfg.model.lora_r}."
    return None


def one_mixed_precision(cfg) -> str | None:
    if cfg.training.bf16 and cfg.training.fp16:
        return "bf16 and fp16 are both true; choose one."
    return None


COMMON_CHECKS = (
    quantization_is_exclusive,
    quantization_needs_adapter,
    dora_needs_peft,
    dataset_is_given,
    eval_split_ratio_in_range,
    eval_strategy_has_data,
    learning_rate_positive,
    lora_rank_positive,
    one_mixed_precision,
)

register_checks(SFTRecipeConfig, *COMMON_CHECKS)

# Which config type a shipped YAML belongs to, by file-name prefix (recipes/configs/<recipe>_*.yaml).
RECIPE_CONFIGS = {"sft": SFTRecipeConfig}
