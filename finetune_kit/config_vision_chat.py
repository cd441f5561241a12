"""The sft_vision recipe's config: trl's `SFTConfig` and `ModelConfig` as the sft recipe uses them, with the defaults
that change for a vision-language model (LoRA targets, loss on answers only).

The SFT keys that do nothing for image rows (packing, padding_free, dataset_text_field, ... : trl refuses or skips
them once the dataset holds images) are refused by name through the recipe table's `unread`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from finetune_kit.config import DataArguments, ModelArguments, RunArguments
from finetune_kit.config_decoder import TrlMachineDefaults


@dataclass
class VisionModelArguments(ModelArguments):
    """trl's `ModelConfig` for an image-text-to-text checkpoint (SmolVLM / Idefics3, LLaVA, Qwen2-VL, ...)."""

    model_name_or_path: str | None = field(default="HuggingFaceTB/SmolVLM-256M-Instruct", metadata={
        "help": "Hub id or local folder of an image-text-to-text checkpoint (AutoModelForImageTextToText)."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "Processor (tokenizer + image processor + chat template) to use when it differs from the model's."})
    # None: decided once the model is built (tasks/vision_chat.lora_targets): the language model's linear layers.
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "LoRA target modules: names or dotted suffixes, all-linear (the vision tower too), or one regex over "
                "full module names. Default: every linear layer of the language model; the vision tower and the "
                "connector keep their weights (lora_modules_to_save: [connector] trains the connector whole)."})


@dataclass
class VisionSFTTrainingArguments(TrlMachineDefaults, SFTConfig):
    """trl's `SFTConfig` with machine-chosen bf16. Rows are tokenized batch by batch by trl's vision collator (the
    processor expands each image into its image tokens), cut at max_length: `check` and `train` refuse, before the
    model loads, any row whose cut would fall inside its image tokens."""

    # None: on where trl can mask the prompt (the chat template has {% generation %} markers, or trl ships a training
    # version of it), a recorded decision (tasks/vision_chat.answers_only).
    assistant_only_loss: bool | None = field(default=None, metadata={
        "help": "Loss on the assistant turns only (the prompt and its image tokens carry none). Default: on where the "
                "chat template allows it (generation markers, or a template trl knows, such as SmolVLM's)."})


@dataclass
class VisionSFTRecipeConfig:
    """The sft_vision recipe: supervised fine-tuning of a vision-language model on image + chat rows."""

    model: VisionModelArguments
    data: DataArguments
    training: VisionSFTTrainingArguments
    run: RunArguments
