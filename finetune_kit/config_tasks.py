"""Configs of the encoder and vision tasks: text and token classification, masked-LM pretraining, extractive QA,
image classification. Their trainer is transformers' `Trainer` (`TrainerArguments`, machine defaults as for trl's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune_kit.config import (
    DataArguments,
    ModelArguments,
    RunArguments,
    TrainerArguments,
    length_grouped_sampling,
    register_checks,
)
from finetune_kit.config_checks import COMMON_CHECKS


@dataclass
class TextTaskTrainingArguments(TrainerArguments):
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
    test_dataset_name: str | None = field(default=None, metadata={
        "help": "A separate labelled test file (GLUE dev, a benchmark's test set), scored once at the end."})
    class_weights: list[str] | None = field(default=None, metadata={
        "help": "auto (inverse class frequency) or one weight per label in id order, e.g. [1, 5]."})
    sampling: str = field(default="none", metadata={
        "help": "Training-set balancing.", "choices": ("none", "balanced", "oversample", "undersample")})
    freeze_layers: int = field(default=0, metadata={"help": "Freeze the embeddings and the lowest N layers."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's classification head that has a different number of labels."})


@dataclass
class TextClassificationConfig:
    """The text_classification recipe: BERT-family sequence classification or regression."""

    model: ModelArguments
    data: DataArguments
    task: ClassificationArguments
    training: TextTaskTrainingArguments
    run: RunArguments


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
    test_dataset_name: str | None = field(default=None, metadata={
        "help": "A separate tagged test file (CoNLL test, ...), scored once at the end (test_* metrics)."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's token-classification head that has a different number of tags."})


@dataclass
class TokenClassificationConfig:
    """The token_classification recipe: NER / tagging with a BERT-family encoder."""

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
    """The masked_lm recipe: continued masked-LM pretraining of a BERT-family encoder."""

    model: ModelArguments
    data: DataArguments
    task: MaskedLMArguments
    training: TrainerArguments
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
    """The image_classification recipe: ViT image classification."""

    model: ModelArguments
    data: DataArguments
    task: ImageTaskArguments
    training: TrainerArguments
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
    """The question_answering recipe: extractive QA on SQuAD-format JSON."""

    model: ModelArguments
    data: DataArguments
    task: QuestionAnsweringArguments
    training: TrainerArguments
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


def one_test_source(cfg) -> str | None:
    if cfg.task.test_dataset_name and cfg.task.test_split_ratio:
        return "test_dataset_name and test_split_ratio are both set; use one source of test data."
    return None


def weights_or_balanced_sampling(cfg) -> str | None:
    if cfg.task.class_weights and cfg.task.sampling != "none":
        return "class_weights and sampling both correct for imbalance; use one of them."
    return None


def freeze_layers_not_negative(cfg) -> str | None:
    if cfg.task.freeze_layers < 0:
        return f"freeze_layers must be >= 0, got {cfg.task.freeze_layers}."
    return None


register_checks(TokenClassificationConfig, *COMMON_CHECKS)
register_checks(MaskedLMConfig, *COMMON_CHECKS, mlm_probability_in_range)
register_checks(ImageClassificationConfig, *COMMON_CHECKS, classifier_splits_in_range)
register_checks(QuestionAnsweringConfig, *COMMON_CHECKS, stride_below_window)
register_checks(TextClassificationConfig, *COMMON_CHECKS, classifier_splits_in_range, weights_or_balanced_sampling,
                freeze_layers_not_negative, one_test_source)
