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
)


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
    image_size: int | None = field(default=None, metadata={
        "help": "Input size: of the ViT built by vit-tiny-from-config (unset: 32); for a timm checkpoint, replaces "
                "its data config's size (whole image resized; unset: the checkpoint's own, e.g. 224 center crop)."})
    class_weights: list[str] | None = field(default=None, metadata={
        "help": "auto (inverse class frequency) or one weight per label in id order, e.g. [1, 2, 2]."})
    freeze_layers: int = field(default=0, metadata={
        "help": "Freeze the embeddings (ViT) or stem (timm) and the lowest N layers (ViT) or stages (timm)."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Replace a checkpoint's classification head that has a different number of labels."})


@dataclass
class ImageClassificationConfig:
    """The image_classification recipe: ViT, timm or any image-classification checkpoint."""

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
    null_score_threshold: float | None = field(default=None, metadata={
        "help": "v2: answer '' when the null score beats the best span by more than this. Unset: chosen after "
                "training for the best F1 on null_calibration_ratio of the training paragraphs, held out of training "
                "(0.0, transformers' run_qa default, when there is nothing to choose on)."})
    null_calibration_ratio: float = field(default=0.1, metadata={
        "help": "v2 with null_score_threshold unset: share of the training paragraphs held out to choose it."})
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
