"""The seq2seq recipe's config: an encoder-decoder checkpoint (T5, BART, Marian, mT5), source / target columns, and
transformers' `Seq2SeqTrainingArguments` (predict_with_generate, generation_max_length, generation_num_beams).

Its own module beside config_tasks.py: the only recipe whose trainer arguments are transformers' seq2seq ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments

from finetune_kit.config import (
    DataArguments,
    ModelArguments,
    RunArguments,
    TrainerArguments,
    length_grouped_sampling,
)


@dataclass
class Seq2SeqTaskArguments:
    """Which fields hold the source and the target, the T5 task prefix, and the length limits."""

    source_column: str = field(default="source", metadata={
        "help": "Field with the input text (summarization: the document; or map it with column_mapping)."})
    target_column: str = field(default="target", metadata={"help": "Field with the output text (the summary, ...)."})
    source_lang: str | None = field(default=None, metadata={
        "help": "Translation pairs: the language code of the source inside each row's `translation` mapping, e.g. "
                "en for {\"translation\": {\"en\": ..., \"fr\": ...}}; replaces source_column / target_column."})
    target_lang: str | None = field(default=None, metadata={"help": "Translation pairs: the target's language code."})
    source_prefix: str | None = field(default=None, metadata={
        "help": "Text put before every source, as T5 was trained (\"translate English to German: \", "
                "\"summarize: \"); saved with the run, so predict / generate add it too."})
    max_source_length: int = field(default=512, metadata={
        "help": "Longest tokenized source (prefix included); longer ones are truncated (`check` counts them)."})
    max_target_length: int = field(default=128, metadata={
        "help": "Longest tokenized target (end-of-sequence included). A longer target is refused: cut, it would "
                "teach the model to stop mid-answer. truncate_targets: true cuts instead; skip_invalid_rows drops it."})
    truncate_targets: bool = field(default=False, metadata={
        "help": "Accept targets over max_target_length, cut to it (counted and printed)."})
    test_dataset_name: str | None = field(default=None, metadata={
        "help": "A separate test file, scored once at the end by generation (test_* metrics)."})


@dataclass
class Seq2SeqTrainerArguments(TrainerArguments, Seq2SeqTrainingArguments):
    """transformers' `Seq2SeqTrainingArguments` with the machine defaults; evaluation generates by default (the
    metrics compare generated text with the targets: exact match, sacreBLEU, chrF, ROUGE)."""

    predict_with_generate: bool = field(default=True, metadata={
        "help": "Evaluate by generating (the text metrics); false: loss only (faster)."})
    train_sampling_strategy: str = length_grouped_sampling()  # sources vary in length: less padding per batch


@dataclass
class Seq2SeqRecipeConfig:
    """The seq2seq recipe: translation, summarization or any text-to-text task with an encoder-decoder model."""

    model: ModelArguments
    data: DataArguments
    task: Seq2SeqTaskArguments
    training: Seq2SeqTrainerArguments
    run: RunArguments
