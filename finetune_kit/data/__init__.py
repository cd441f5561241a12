"""Datasets for the recipes: read, detect the format, validate every row, normalise, split, tokenize."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from finetune_kit.data.chat import end_of_turn_is_trained, tokenize_conversation
from finetune_kit.data.formats import apply_column_mapping, detect_format, normalise, require_mapped_columns
from finetune_kit.data.preference import (
    encode_prompt,
    normalise_pair,
    normalise_prompt,
    margins_on_every_row_or_none,
    normalise_scored_pair,
    normalise_unpaired,
    pairs_with_answer_room,
    require_both_labels,
)
from finetune_kit.data.readers import read_rows
from finetune_kit.errors import DataError, UserError

if TYPE_CHECKING:  # `datasets` is imported where a Dataset is built: the preflight reads rows without it
    from datasets import Dataset

logger = logging.getLogger(__name__)
Normaliser = Callable[[dict[str, Any], str], dict[str, Any]]
# Recipe table `rows` kind -> how its rows are validated and normalised (None: the SFT formats, detected).
ROW_NORMALISERS: dict[str, Normaliser | None] = {"sft": None, "text": partial(normalise, fmt="text"),
                                                 "pair": normalise_pair, "scored_pair": normalise_scored_pair,
                                                 "unpaired": normalise_unpaired,
                                                 "prompt": normalise_prompt}

__all__ = [
    "encode_prompt",
    "end_of_turn_is_trained",
    "load_rows",
    "load_sft_datasets",
    "margins_on_every_row_or_none",
    "normalise_pair",
    "normalise_prompt",
    "normalise_scored_pair",
    "normalise_unpaired",
    "pairs_with_answer_room",
    "require_both_labels",
    "tokenize_conversation",
    "tokenize_sft_dataset",
]


def load_rows(source: str, data_args, split: str = "train", normaliser: Normaliser | None = None) -> list[dict]:
    """Every row of `source` validated and normalised: by `normaliser`, or to one SFT format (detected from the
    first row if 'auto')."""
    rows = read_rows(source, split=split, config=data_args.dataset_config)
    require_mapped_columns(rows, data_args.column_mapping, source)
    rows = [(where, apply_column_mapping(row, data_args.column_mapping)) for where, row in rows]
    if normaliser is None:
        fmt = data_args.dataset_format
        if fmt == "auto":
            fmt = detect_format(rows[0][1], rows[0][0])
        normaliser = partial(normalise, fmt=fmt)
    if not getattr(data_args, "skip_invalid_rows", False):
        return [normaliser(row, where=where) for where, row in rows]
    kept, problems = [], []
    for where, row in rows:
        try:
            kept.append(normaliser(row, where=where))
        except DataError as err:
            problems.append(str(err))
    if problems:
        logger.warning("%s: skipped %d of %d rows (skip_invalid_rows); first: %s", source, len(problems), len(rows),
                       "; ".join(problems[:3]))
    if not kept:
        raise DataError(f"{source}: no valid rows left; first problem: {problems[0]}")
    return kept


def split(dataset: Dataset, ratio: float, seed: int, where: str, what: str = "eval_split_ratio", **kwargs):
    """datasets' train_test_split, its refusals (a side left empty, a class too small to stratify) named as data
    errors: the file, the ratio, the row count and what to change."""
    try:
        return dataset.train_test_split(test_size=ratio, seed=seed, **kwargs)
    except ValueError as err:
        raise DataError(f"{where}: {what} {ratio:g} cannot split its {len(dataset)} rows ({str(err).splitlines()[0]}); "
                        "lower the ratio or add rows.") from None


def split_seed(data, seed: int) -> int:
    """The seed of held-out splits: the data part's split_seed, else the training `seed`. Read off plain values, so
    the functions that split (shared by a recipe and the preflight's view of its config) pick the same rows in both."""
    return seed if getattr(data, "split_seed", None) is None else data.split_seed


def split_off_validation(rows: dict[str, list], cfg) -> dict[str, list]:
    """rows["validation"] split off rows["train"] (datasets' seeded split of their indices, as `split` picks them) when
    no validation rows are given and eval_split_ratio asks. For recipes that check rows before they become datasets
    (seq2seq, sft_vision): the recipe and the preflight call it alike, so `check` refuses what training would."""
    from datasets import Dataset

    if "validation" in rows or not cfg.data.eval_split_ratio:
        return rows
    train = rows["train"]
    parts = split(Dataset.from_dict({"row": list(range(len(train)))}), cfg.data.eval_split_ratio,
                  split_seed(cfg.data, cfg.training.seed), cfg.data.dataset_name)
    return {**rows, **{name: [train[i] for i in parts[side]["row"]]
                       for name, side in (("train", "train"), ("validation", "test"))}}


def cap_train(train: Dataset, max_train_samples: int | None) -> Dataset:
    """The first `max_train_samples` training rows. Every recipe caps after its validation / test split, so the
    held-out rows are the same whatever the cap."""
    return train.select(range(min(max_train_samples, len(train)))) if max_train_samples else train


def load_sft_datasets(data_args, seed: int = 42, normaliser: Normaliser | None = None,
                      streaming: bool = False) -> tuple[Dataset, Dataset | None]:
    """Train and (optional) validation datasets: from a separate source, or a seeded split of the training rows; a
    mixture of sources when `datasets` is set (finetune_kit/data/mixing.py).

    `normaliser(row, where)` validates and reshapes each row; the default handles the SFT formats. `streaming` (the
    recipes that take it pass `data.streaming`): the training rows as an IterableDataset, read as training goes.
    """
    from datasets import Dataset

    from finetune_kit.data import mixing

    if streaming:  # read as training consumes it (validation data is read whole: it is scored in full)
        parts = [mixing.stream(source, source.dataset_train_split, normaliser) for source in mixing.source_args(data_args)]
    else:
        parts = [Dataset.from_list(load_rows(source.dataset_name, source, source.dataset_train_split, normaliser))
                 for source in mixing.source_args(data_args)]
    train = mixing.mix(parts, data_args, seed)
    evaluation = None
    if data_args.eval_dataset_name:
        evaluation = Dataset.from_list(load_rows(data_args.eval_dataset_name, data_args, "validation", normaliser))
    elif data_args.eval_split_ratio:
        if len(train) < 2:
            raise DataError(f"{data_args.source_label()}: too few rows ({len(train)}) to hold out a validation split.")
        parts = split(train, data_args.eval_split_ratio, split_seed(data_args, seed), data_args.source_label())
        train, evaluation = parts["train"], parts["test"]
    if streaming:
        return train.take(data_args.max_train_samples) if data_args.max_train_samples else train, evaluation
    train = cap_train(train, data_args.max_train_samples)
    return train, evaluation


NO_CHAT_TEMPLATE = ("the tokenizer has no chat template, so conversations cannot be rendered. Use an instruct "
                    "checkpoint, set chat_template_path to a .jinja file, or use prompt/completion or text data.")

# Rows from which rendering chat templates in several processes pays for starting them (benchmarks/tokenize_procs.py).
PARALLEL_TOKENIZE_ROWS = 20_000


def tokenize_sft_dataset(dataset: Dataset, tokenizer, num_proc: int | None = None) -> Dataset:
    """Conversations become `input_ids` + `assistant_masks` (trl builds labels from them); other shapes pass through.

    trl tokenizes `prompt`/`completion` and `text` rows itself, with completion-only loss for the former.
    `num_proc` (trl's `dataset_num_proc`) unset: one process per core, up to 8, from PARALLEL_TOKENIZE_ROWS rows.
    """
    from datasets import Dataset
    from trl.data_utils import get_dataset_column_names

    columns = get_dataset_column_names(dataset)  # a stream's are read from its first row
    if "messages" not in columns:
        return dataset
    if not tokenizer.chat_template:
        raise UserError(NO_CHAT_TEMPLATE)
    if not isinstance(dataset, Dataset):  # a stream: each row tokenized as training reads it
        return dataset.map(lambda row: tokenize_conversation(tokenizer, row["messages"]), remove_columns=columns)
    if num_proc is None and len(dataset) >= PARALLEL_TOKENIZE_ROWS:
        num_proc = min(os.cpu_count() or 1, 8)
    return dataset.map(
        lambda row: tokenize_conversation(tokenizer, row["messages"]),
        remove_columns=dataset.column_names,
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        desc="Tokenizing conversations",
    )


def require_replies_within(dataset: Dataset, max_length: int | None, where: str) -> None:
    """Before weights load: trl drops rows whose reply truncation cuts off entirely; all of them is a data error.
    (A stream is not read ahead: there trl's drop shows as steps on fewer rows.)"""
    if max_length and hasattr(dataset, "__len__") and "assistant_masks" in dataset.column_names and \
            not any(any(mask[:max_length]) for mask in dataset["assistant_masks"]):
        raise DataError(f"{where}: no training row keeps a reply token within max_length {max_length}; raise "
                        "max_length (`finetune-kit check` shows the lengths).")
