"""Read dataset rows from local files or the Hub, keeping where each row came from for error messages.

Local JSON / JSONL / CSV / TSV are parsed here, not by `datasets`, because a malformed line must be reported by
its line number, and `datasets` reports pyarrow errors without one. Parquet and hub datasets go through
`datasets`. Every row comes back as `(where, row)`, `where` being e.g. "train.jsonl line 7".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from finetune_kit.errors import DataError

Row = tuple[str, dict[str, Any]]
SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")


def read_rows(source: str, split: str = "train", config: str | None = None) -> list[Row]:
    """All rows of a local file / folder, or of a hub dataset split. Raises `DataError` naming file and line."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"{source}: folder holds no data file ({', '.join(SUFFIXES)}).")
        rows = [row for f in files for row in read_file(f)]
    elif path.is_file():
        rows = read_file(path)
    elif is_local(source):
        raise DataError(f"dataset file not found: {source}")
    else:
        rows = read_hub(source, split, config)
    if not rows:
        raise DataError(f"{source}: the dataset is empty (no rows).")
    return rows


def is_local(source: str) -> bool:
    """A local file or folder, or a name that can only mean one (a data suffix, a path start): never a hub id."""
    return Path(source).expanduser().exists() or Path(source).suffix in SUFFIXES or source.startswith((".", "/", "~"))


def read_file(path: Path) -> list[Row]:
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".tsv": _read_csv,
               ".parquet": _read_parquet, ".txt": _read_text}
    if path.suffix not in readers:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use one of {', '.join(SUFFIXES)}).")
    try:
        return readers[path.suffix](path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}).") from None


def _object_row(path: Path, where: str, value: Any) -> Row:
    if not isinstance(value, dict):
        raise DataError(f"{path} {where}: expected a JSON object with named fields, got {type(value).__name__}.")
    return f"{path.name} {where}", value


def _read_json(path: Path) -> list[Row]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # a .json file that is really JSON lines
            return _read_jsonl(path)
        raise DataError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}).") from None
    if isinstance(data, dict):  # one object holding the list, e.g. {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of rows (or an object holding one list), got an object.")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows, got {type(data).__name__}.")
    return [_object_row(path, f"row {i}", value) for i, value in enumerate(data, start=1)]


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
            rows.append(_object_row(path, f"line {lineno}", value))
    return rows


def _read_csv(path: Path) -> list[Row]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as handle:
        # TSV files such as GLUE's are not quoted: a stray " must stay a character, not open a quoted field.
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        if not reader.fieldnames:
            return []
        rows = []
        for row in reader:
            if None in row:
                raise DataError(f"{path} line {reader.line_num}: more fields than the header has columns.")
            rows.append((f"{path.name} line {reader.line_num}", dict(row)))
        return rows


def _read_parquet(path: Path) -> list[Row]:
    from datasets import Dataset

    with path.open("rb") as handle:  # every parquet file starts (and ends) with the magic bytes PAR1
        if handle.read(4) != b"PAR1":
            raise DataError(f"{path}: not a parquet file (it does not start with PAR1); rename it after its real "
                            "format (.jsonl, .csv, ...).")
    try:
        dataset = Dataset.from_parquet(str(path))
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"{path}: unreadable parquet file ({type(err).__name__}: {str(err).splitlines()[0]}).") \
            from None
    return [(f"{path.name} row {i}", row) for i, row in enumerate(dataset, start=1)]


def _read_text(path: Path) -> list[Row]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path.name} line {i}", {"text": line}) for i, line in enumerate(lines, start=1) if line.strip()]


def read_hub(name: str, split: str, config: str | None) -> list[Row]:
    """A split of a hub dataset through `datasets.load_dataset` (the real call; it fails clearly offline)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise DataError(
            f"could not load dataset '{name}' (split '{split}'): it is not a local path, so it was looked up on the "
            f"Hugging Face Hub, which failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from None
    return [(f"{name}[{split}] row {i}", row) for i, row in enumerate(dataset, start=1)]
