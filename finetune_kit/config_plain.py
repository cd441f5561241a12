"""The config parts that need no library: where the data is and what to do about the run folder.

Kept apart from finetune_kit.config (which imports transformers and trl) so that `finetune_kit.preflight` can build
them, and run the same data and folder checks, before those imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from finetune_kit.yaml_config import yaml_problem

DATASET_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text")
MIX_STRATEGIES = ("concat", "interleave_under", "interleave_over")


@dataclass
class DataArguments:
    """Where the data is, what shape it has, and how to split it."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Local file / folder (json, jsonl, csv, tsv, parquet, txt) or hub dataset id."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (hub datasets)."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Separate validation file or hub id; otherwise see eval_split_ratio."}
    )
    eval_split_ratio: float = field(
        default=0.0, metadata={"help": "Fraction of the training rows held out for validation (seeded)."}
    )
    dataset_format: str = field(
        default="auto", metadata={"help": "Row format, detected from the columns when 'auto'.", "choices": DATASET_FORMATS}
    )
    column_mapping: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "Mapping from the format's column names to yours, e.g. {instruction: question}."},
    )
    max_train_samples: int | None = field(default=None, metadata={
        "help": "Train on the first N training rows, counted after the validation / test split (which it leaves "
                "unchanged)."})
    skip_invalid_rows: bool = field(default=False, metadata={
        "help": "Drop rows that fail validation (counted and shown) instead of stopping at the first one."})
    split_seed: int | None = field(default=None, metadata={
        "help": "Seed of the validation / test split (default: seed). tune fixes it, so trials with their own seeds "
                "are scored on the same held-out rows."})
    datasets: list[dict] | str | None = field(default=None, metadata={
        "help": "Several training sources instead of dataset_name: a list of mappings, each with dataset_name and "
                "optionally dataset_config, dataset_train_split, dataset_format, column_mapping, max_samples, and "
                "weight (relative) or ratio (fractions summing to 1) for interleave_* (finetune_kit/data/mixing.py)."})
    mix_strategy: str = field(default="concat", metadata={
        "help": "How `datasets` combine: concat (every row once), interleave_under (sampled by weight / ratio until "
                "the first source runs out), interleave_over (until the last does, repeating the others).",
        "choices": MIX_STRATEGIES})
    streaming: bool = field(default=False, metadata={
        "help": "Read the training data as a stream (files too large for memory; sft and pretrain): rows are "
                "validated as they are read, max_steps is required, validation comes from eval_dataset_name."})

    def source_label(self) -> str:
        """How messages name the training data: the file or hub id, or the mixture's sources."""
        if self.datasets:
            return "datasets (" + " + ".join(str(d.get("dataset_name")) for d in self.datasets) + ")"
        return str(self.dataset_name)

    def __post_init__(self):
        if isinstance(self.datasets, str):
            try:
                self.datasets = yaml.safe_load(self.datasets)
            except yaml.YAMLError as err:
                raise ValueError(f"datasets is not a YAML list: {yaml_problem(err)}") from None
        if self.datasets is not None:
            from finetune_kit.data.mixing import check_sources

            check_sources(self)
        elif self.mix_strategy != "concat":
            raise ValueError(f"mix_strategy {self.mix_strategy} mixes the sources of `datasets`, which is not set.")
        if isinstance(self.column_mapping, str):
            try:
                parsed = yaml.safe_load(self.column_mapping)
            except yaml.YAMLError as err:
                raise ValueError(f"column_mapping is not a mapping: {yaml_problem(err)}") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"column_mapping must be a mapping such as {{instruction: question}}, got {parsed!r}")
            self.column_mapping = {str(k): str(v) for k, v in parsed.items()}
        if self.column_mapping is not None and not isinstance(self.column_mapping, dict):
            raise ValueError("column_mapping must be a mapping such as {instruction: question}, got "
                             f"{self.column_mapping!r}")
        if self.max_train_samples is not None and self.max_train_samples < 1:  # a negative N kept the first none
            raise ValueError(f"max_train_samples must be a whole number >= 1 (or unset for every row), got "
                             f"{self.max_train_samples}.")


@dataclass
class RunArguments:
    """What to do about an existing output directory and a non-finite gradient; whether to write a report."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the contents of a non-empty output_dir (a finished run too)."}
    )
    on_nonfinite: str = field(default="stop", metadata={
        "help": "A NaN / inf gradient: stop the run (the newest checkpoint is the last good state), or skip that "
                "update and count it.", "choices": ("stop", "skip")})
    report: bool = field(default=True, metadata={
        "help": "Write report.html and PNG plots (loss, learning rate, metrics) into the run folder at the end."})
