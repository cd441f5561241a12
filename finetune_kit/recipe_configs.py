"""One config type per recipe, composed of the shared parts, plus small named cross-field checks.

Each check takes the whole config and returns an error message naming the keys, or None. They run in
`parse_config`, before any model or dataset is touched, and each is tested on its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import datasets
from transformers import TrainingArguments
from trl import SFTConfig

from finetune_kit.config import DataArguments, ModelArguments, RunArguments, register_checks
from finetune_kit.hardware import bf16_is_fast, has_accelerator


def length_grouped_sampling():
    """The `train_sampling_strategy` field of recipes whose rows vary in length (one field object per class)."""
    return field(default="group_by_length", metadata={
        "help": "Training sampler: group_by_length (default here: less padding), random, sequential, "
                "batch_rebalance."})


@dataclass
class TrlMachineDefaults:
    """Mixed into trl's configs (SFT, reward, DPO, KTO, GRPO): defaults that suit the machine, not a recent GPU."""

    # trl turns bf16 on unconditionally; on a CPU without native bf16 that is several times slower than fp32.
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on where the hardware runs it natively."}
    )
    # trl defaults this (deprecated alias) to True; checkpointing costs ~20-30% speed, so ours turns it on when the
    # memory estimate says it pays (memory.choose_activation_checkpointing), unless either name is set.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing.", "nargs": "?", "const": True}
    )

    def __post_init__(self):
        # Neither name set: the recipe decides from a memory estimate (memory.choose_activation_checkpointing).
        self.activation_checkpointing_auto = self.activation_checkpointing is None and self.gradient_checkpointing is None
        machine_defaults(self)
        super().__post_init__()


@dataclass
class SFTTrainingArguments(TrlMachineDefaults, SFTConfig):
    """trl's `SFTConfig` with machine-chosen bf16, activation checkpointing when memory says so, length-grouped batches."""

    # Chat / instruction rows vary a lot in length; batching similar lengths together cuts the padding that a random
    # sampler computes on (benchmarks/results/bench_sft.json). `random` restores trl's order.
    train_sampling_strategy: str = length_grouped_sampling()
    # Unset (None) = chosen by hardware.choose_fast_paths once the attention implementation is known.
    packing: bool | None = field(default=None, metadata={
        "help": "Pack examples into rows of max_length tokens (packing_strategy bfd: best-fit, padding-free, "
                "position_ids mark the examples); default: on with flash attention."})
    use_liger_kernel: bool | None = field(default=None, metadata={
        "help": "Liger's fused kernels; default: on a CUDA GPU where liger-kernel is installed."})

    def __post_init__(self):
        self.packing_auto, self.use_liger_kernel_auto = self.packing is None, self.use_liger_kernel is None
        self.packing, self.use_liger_kernel = bool(self.packing), bool(self.use_liger_kernel)
        super().__post_init__()


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
class ClassifierTrainingArguments(TrainingArguments):
    """transformers' `TrainingArguments` with bf16 chosen by the hardware, as for SFT."""

    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on where the hardware runs it natively."}
    )
    # Named and placed as in trl's configs, so the key means the same in every recipe.
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with a hub checkpoint."})

    def __post_init__(self):
        machine_defaults(self)
        super().__post_init__()


@dataclass
class TextTaskTrainingArguments(ClassifierTrainingArguments):
    """For text classification and tagging: batches of similar lengths by default (dynamic padding then pads
    little: benchmarks/results/bench_text_classification.json). Images and QA windows have one size: no gain there."""

    train_sampling_strategy: str = length_grouped_sampling()


@dataclass
class ClassificationArguments:
    """Columns, label handling, class imbalance and freezing for text classification."""

    text_column: str = field(default="text", metadata={"help": "Column with the text (the first sentence)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for pair tasks."})
    label_column: str = field(default="label", metadata={"help": "Column with the label(s) or the score."})
    problem_type: str = field(default="auto", metadata={
        "help": "Detected from the labels when auto.", "choices": ("auto", "single_label", "multi_label", "regression")})
    labels: list[str] | None = field(default=None, metadata={"help": "The label set, in id order (default: sorted)."})
    max_length: int = field(default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    test_split_ratio: float = field(default=0.0, metadata={"help": "Fraction held out as a test split (stratified)."})
    class_weights: list[str] | None = field(default=None, metadata={
        "help": "auto (inverse class frequency) or one weight per label in id order, e.g. [1, 5]."})
    sampling: str = field(default="none", metadata={
        "help": "Training-set balancing.", "choices": ("none", "balanced", "oversample", "undersample")})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze the embeddings and the lowest N layers."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's classification head that has a different number of labels."})


@dataclass
class TextClassificationConfig:
    """`recipes/text_classification.py`: BERT-family sequence classification or regression."""

    model: ModelArguments
    data: DataArguments
    task: ClassificationArguments
    training: TextTaskTrainingArguments
    run: RunArguments


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


# report_to name -> the module it needs, and the package that ships it (our extras cover the first four).
TRACKERS = {"tensorboard": ("tensorboard", "finetune-kit[tensorboard]"), "wandb": ("wandb", "finetune-kit[wandb]"),
            "mlflow": ("mlflow", "finetune-kit[mlflow]"), "trackio": ("trackio", "finetune-kit[trackio]"),
            "comet_ml": ("comet_ml", "comet_ml"), "clearml": ("clearml", "clearml"), "dvclive": ("dvclive", "dvclive"),
            "neptune": ("neptune", "neptune"), "swanlab": ("swanlab", "swanlab"), "codecarbon": ("codecarbon",
                                                                                                  "codecarbon")}


def trackers_installed(cfg) -> str | None:
    """A tracker named in report_to must be importable now, not after the model has loaded."""
    import importlib.util

    for name in cfg.training.report_to or []:
        module, package = TRACKERS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            return f"report_to: {name} needs the {module} package, which is not installed: pip install '{package}'."
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
    trackers_installed,
)

@dataclass
class TokenTaskArguments:
    """Columns and sub-word label alignment for token classification."""

    tokens_column: str = field(default="tokens", metadata={"help": "json/jsonl column with the word list."})
    tags_column: str = field(default="tags", metadata={"help": "json/jsonl column with one tag per word."})
    tag_column_index: int | None = field(default=None, metadata={
        "help": "CoNLL files: 0-based column of the tag (default: the first column holding BIO tags)."})
    label_all_tokens: bool = field(default=False, metadata={
        "help": "Label every sub-token of a word (B- becomes I- after the first), not only the first."})
    max_length: int = field(default=256, metadata={"help": "Longest tokenized sentence; longer ones are truncated."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's token-classification head that has a different number of tags."})


@dataclass
class TokenClassificationConfig:
    """`recipes/token_classification.py`: NER / tagging with a BERT-family encoder."""

    model: ModelArguments
    data: DataArguments
    task: TokenTaskArguments
    training: TextTaskTrainingArguments
    run: RunArguments


@dataclass
class MaskedLMArguments:
    text_column: str = field(default="text", metadata={"help": "Column with the text (txt files: each line)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per training block."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked (BERT used 0.15)."})
    line_by_line: bool = field(default=False, metadata={"help": "One example per row instead of packed blocks."})


@dataclass
class MaskedLMConfig:
    """`recipes/masked_lm.py`: continued masked-LM pretraining of a BERT-family encoder."""

    model: ModelArguments
    data: DataArguments
    task: MaskedLMArguments
    training: ClassifierTrainingArguments
    run: RunArguments


@dataclass
class ImageTaskArguments:
    image_column: str = field(default="image", metadata={"help": "CSV/JSON(L): column with the image path."})
    label_column: str = field(default="label", metadata={"help": "CSV/JSON(L): column with the label."})
    labels: list[str] | None = field(default=None, metadata={"help": "The label set, in id order (default: sorted)."})
    test_split_ratio: float = field(default=0.0, metadata={"help": "Fraction held out as a test split (stratified)."})
    augment: str = field(default="none", metadata={
        "help": "Training-time augmentation.", "choices": ("none", "flip", "crop", "flip_crop")})
    image_size: int = field(default=32, metadata={"help": "Input size of the ViT built by vit-tiny-from-config."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's classification head that has a different number of labels."})


@dataclass
class ImageClassificationConfig:
    """`recipes/image_classification.py`: ViT image classification."""

    model: ModelArguments
    data: DataArguments
    task: ImageTaskArguments
    training: ClassifierTrainingArguments
    run: RunArguments


@dataclass
class QuestionAnsweringArguments:
    max_length: int = field(default=384, metadata={"help": "Tokens per window (question + part of the context)."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap between windows of a long context."})
    n_best_size: int = field(default=20, metadata={"help": "Start / end candidates considered per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer span, in tokens."})
    null_score_threshold: float = field(default=0.0, metadata={
        "help": "v2: answer '' when the null score beats the best span by more than this."})
    version_2_with_negative: bool = field(default=False, metadata={
        "help": "Allow '' answers (SQuAD v2); on automatically when the data has unanswerable questions."})


@dataclass
class QuestionAnsweringConfig:
    """`recipes/question_answering.py`: extractive QA on SQuAD-format JSON."""

    model: ModelArguments
    data: DataArguments
    task: QuestionAnsweringArguments
    training: ClassifierTrainingArguments
    run: RunArguments


def stride_below_window(cfg) -> str | None:
    if not 0 <= cfg.task.doc_stride < cfg.task.max_length // 2:
        return f"doc_stride ({cfg.task.doc_stride}) must be below half of max_length ({cfg.task.max_length})."
    return None


def mlm_probability_in_range(cfg) -> str | None:
    if not 0 < cfg.task.mlm_probability < 1:
        return f"mlm_probability must be between 0 and 1, got {cfg.task.mlm_probability}."
    return None


def classifier_splits_in_range(cfg) -> str | None:
    total = cfg.data.eval_split_ratio + cfg.task.test_split_ratio
    if not 0 <= cfg.task.test_split_ratio < 1 or total >= 1:
        return f"eval_split_ratio + test_split_ratio must stay below 1, got {total}."
    return None


def weights_or_balanced_sampling(cfg) -> str | None:
    if cfg.task.class_weights and cfg.task.sampling != "none":
        return "class_weights and sampling both correct for imbalance; use one of them."
    return None


def freeze_layers_not_negative(cfg) -> str | None:
    if cfg.task.freeze_layers < 0:
        return f"freeze_layers must be >= 0, got {cfg.task.freeze_layers}."
    return None


register_checks(SFTRecipeConfig, *COMMON_CHECKS)
register_checks(TokenClassificationConfig, *COMMON_CHECKS)
register_checks(MaskedLMConfig, *COMMON_CHECKS, mlm_probability_in_range)
register_checks(ImageClassificationConfig, *COMMON_CHECKS, classifier_splits_in_range)
register_checks(QuestionAnsweringConfig, *COMMON_CHECKS, stride_below_window)
register_checks(TextClassificationConfig, *COMMON_CHECKS, classifier_splits_in_range, weights_or_balanced_sampling,
                freeze_layers_not_negative)

# Which config type a shipped YAML belongs to, by file-name prefix (recipes/configs/<recipe>_*.yaml).
RECIPE_CONFIGS = {"sft": SFTRecipeConfig, "text_classification": TextClassificationConfig,
                  "token_classification": TokenClassificationConfig, "masked_lm": MaskedLMConfig,
                  "image_classification": ImageClassificationConfig,
                  "question_answering": QuestionAnsweringConfig}
