"""Several datasets in one config, mixed by ratio or weight; streaming for data too large for memory.

    datasets:
      - {dataset_name: data/chat.jsonl, weight: 3}
      - {dataset_name: data/alpaca.json, dataset_format: alpaca, column_mapping: {instruction: question}}
    mix_strategy: interleave_under      # concat (default) | interleave_under | interleave_over

Each source is read, validated and normalised on its own (its own format, column mapping, split), then
`datasets.concatenate_datasets` (concat) or `datasets.interleave_datasets` (interleave_*: each next row drawn from
a source with its probability, seeded; `under` stops when the first source runs out, `over` when the last does,
LLaMA-Factory's names for datasets' first_exhausted / all_exhausted). The mixture is a function of the config and
`seed`, so a resumed run trains on the same order: the Trainer's own resume skips what it consumed.

`weight` is relative (any positive numbers, normalised); `ratio` is the share itself (fractions that sum to 1). Left
unset on every source, interleave_* draws from each source in proportion to its size.

Streaming (`streaming: true`, sft and pretrain): each source is a `datasets` IterableDataset read as training goes
(local files through datasets' json / csv / parquet / text builders, hub ids with streaming=True); rows are
normalised, and so validated, as they are read, and a bad row stops the run naming it. Rows come in file order.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

SOURCE_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_format", "column_mapping",
               "max_samples", "weight", "ratio")
STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}
# datasets' builders for local files in streaming mode.
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".txt": "text"}


def check_sources(data) -> None:
    """Raise ValueError naming `datasets[i].key` for a mixture the loader would refuse (DataArguments calls it)."""
    items = data.datasets
    if not isinstance(items, list) or not items:
        raise ValueError(f"datasets must be a non-empty list of mappings (each with dataset_name), got {items!r}.")
    if data.dataset_name:
        raise ValueError("dataset_name and datasets are both set; give the training data in one of them.")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"datasets[{i}] must be a mapping with dataset_name, got {item!r}.")
        unknown = sorted(set(item) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"datasets[{i}]: unknown key '{unknown[0]}' (known: {', '.join(SOURCE_KEYS)}).")
        if not item.get("dataset_name"):
            raise ValueError(f"datasets[{i}]: dataset_name is required (a local file or folder, or a hub id).")
        for key in ("weight", "ratio"):
            value = item.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ValueError(f"datasets[{i}].{key} must be a number > 0, got {value!r}; leave a source out "
                                 "rather than give it 0.")
        mapping = item.get("column_mapping")
        if mapping is not None and not isinstance(mapping, (dict, str)):
            raise ValueError(f"datasets[{i}].column_mapping must be a mapping such as {{instruction: question}}, got "
                             f"{mapping!r}.")
        samples = item.get("max_samples")
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
            raise ValueError(f"datasets[{i}].max_samples must be a whole number >= 1, got {samples!r}.")
    given = {key: [item.get(key) is not None for item in items] for key in ("weight", "ratio")}
    if any(given["weight"]) and any(given["ratio"]):
        raise ValueError("datasets: give every source a weight (relative) or every source a ratio (shares summing "
                         "to 1), not both.")
    for key, flags in given.items():
        if any(flags) and not all(flags):
            raise ValueError(f"datasets[{flags.index(False)}] has no {key}; give one to every source or to none.")
        if any(flags) and data.mix_strategy == "concat":
            raise ValueError(f"datasets: a {key} samples sources, which concat does not (it keeps every row once); "
                             "set mix_strategy: interleave_under or interleave_over.")
    if all(given["ratio"]):
        total = sum(item["ratio"] for item in items)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"datasets: the ratios sum to {total:g}, not 1; fix them, or use weight (relative).")


def source_args(data) -> list:
    """One DataArguments per source of a mixture (the shared keys of `data`, the source's own where it sets them);
    the single source otherwise."""
    if not data.datasets:
        return [data]
    own = [k for k in SOURCE_KEYS if k not in ("weight", "ratio", "max_samples")]
    return [dataclasses.replace(data, datasets=None, mix_strategy="concat",
                                **{k: item[k] for k in own if item.get(k) is not None}) for item in data.datasets]


def probabilities(data, sizes: list[int] | None) -> list[float] | None:
    """Each source's share of the interleaved rows: its ratio, its normalised weight, or (neither) its size."""
    shares = [item.get("ratio") or item.get("weight") for item in data.datasets]
    if shares[0] is None:
        if sizes is None:  # streams of unknown length: equal shares
            return None
        shares = sizes
    return [share / sum(shares) for share in shares]


def mix(parts: list, data, seed: int):
    """The sources combined as `mix_strategy` says (Dataset or IterableDataset alike); one source as it is."""
    from datasets import Dataset, concatenate_datasets, interleave_datasets

    strategy = data.mix_strategy
    if not data.datasets:
        return parts[0]
    parts = [part.select(range(min(item["max_samples"], len(part)))) if item.get("max_samples") and
             isinstance(part, Dataset) else part.take(item["max_samples"]) if item.get("max_samples") else part
             for part, item in zip(parts, data.datasets)]
    _same_columns(parts, data)
    if len(parts) == 1 or strategy == "concat":
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    sizes = [len(p) for p in parts] if all(isinstance(p, Dataset) for p in parts) else None
    return interleave_datasets(parts, probabilities=probabilities(data, sizes), seed=seed,
                               stopping_strategy=STOPPING[strategy])


def _same_columns(parts: list, data) -> None:
    """Sources must normalise to one shape (alpaca, sharegpt and messages all become `messages`)."""
    from trl.data_utils import get_dataset_column_names

    from finetune_kit.errors import DataError

    columns = [sorted(get_dataset_column_names(part)) for part in parts]
    for i, names in enumerate(columns[1:], start=1):
        if names != columns[0]:
            raise DataError(f"datasets[{i}] ({data.datasets[i]['dataset_name']}) reads as {', '.join(names)} but "
                            f"datasets[0] ({data.datasets[0]['dataset_name']}) as {', '.join(columns[0])}; mix "
                            "sources of one shape (alpaca, sharegpt and messages all become messages).")


def stream(data, split: str, normaliser):
    """An IterableDataset of the normalised rows of one source, read as training consumes it."""
    from datasets import load_dataset
    from trl.data_utils import get_dataset_column_names

    from finetune_kit.data.formats import apply_column_mapping, detect_format, normalise, require_mapped_columns
    from finetune_kit.data.readers import SUFFIXES, is_local
    from finetune_kit.errors import DataError

    source = data.dataset_name
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in SUFFIXES)
    elif path.is_file():
        files = [str(path)]
    elif is_local(source):
        raise DataError(f"dataset file not found: {source}")
    else:
        files = None
    if files == []:
        raise DataError(f"{source}: folder holds no data file ({', '.join(SUFFIXES)}).")
    if files:
        suffixes = {Path(f).suffix for f in files}
        if len(suffixes) > 1:
            raise DataError(f"{source}: streaming reads one kind of file per folder, found {', '.join(sorted(suffixes))}.")
        suffix = suffixes.pop()
        options = {"delimiter": "\t"} if suffix == ".tsv" else {}
        rows = load_dataset(BUILDERS[suffix], data_files=files, split="train", streaming=True, **options)
    else:
        rows = load_dataset(source, data.dataset_config, split=split, streaming=True)
    label = Path(source).name if files else f"{source}[{split}]"
    first = next(iter(rows), None)
    if first is None:
        raise DataError(f"{source}: the dataset is empty (no rows).")
    require_mapped_columns([(f"{label} row 1", first)], data.column_mapping, label)  # a stream: row 1 is all we read
    if normaliser is None:
        fmt = data.dataset_format
        if fmt == "auto":
            fmt = detect_format(apply_column_mapping(first, data.column_mapping), f"{label} row 1")
        normaliser = partial(normalise, fmt=fmt)

    def normalised(row, index):
        return normaliser(apply_column_mapping(row, data.column_mapping), where=f"{label} row {index + 1}")

    return rows.map(normalised, with_indices=True, remove_columns=get_dataset_column_names(rows))
