"""Token classification (NER, tagging): CoNLL and json readers, sub-word label alignment, entity metrics."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from finetune_kit.errors import DataError

IGNORE = -100
_TAG = re.compile(r"^(O|[BIES]-\S+)$")


def read_conll(path: Path, tag_column: int | None = None) -> list[tuple[str, dict]]:
    """Sentences of a CoNLL-style file (one `token ... tag ...` line per token, blank line between sentences).

    The tag column is the first column after the token whose values all look like BIO tags, unless given.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    sentences, current, start = [], [], None
    for lineno, line in enumerate(lines + [""], start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current:
                sentences.append((f"{path.name} line {start}", current))
            current, start = [], None
            continue
        if len(fields) < 2:
            raise DataError(f"{path} line {lineno}: expected 'token tag', got {line!r}.")
        current.append((lineno, fields))
        start = start or lineno
    if not sentences:
        raise DataError(f"{path}: no sentences found.")
    if tag_column is None:
        width = min(len(fields) for _, sent in sentences for _, fields in sent)
        tag_column = next((c for c in range(1, width) if all(_TAG.match(f[c]) for _, s in sentences for _, f in s)),
                          None)
        if tag_column is None:
            raise DataError(f"{path}: no column holds BIO tags (O, B-X, I-X) on every line; set tag_column_index.")
    rows = []
    for where, sent in sentences:
        for lineno, fields in sent:
            if len(fields) <= tag_column:
                raise DataError(f"{path} line {lineno}: no column {tag_column} for the tag.")
        rows.append((where, {"tokens": [f[0] for _, f in sent], "tags": [f[tag_column] for _, f in sent]}))
    return rows


def check_row(where: str, row: dict, tokens_column: str, tags_column: str) -> dict:
    for column in (tokens_column, tags_column):
        value = row.get(column)
        if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
            raise DataError(f"{where}: field '{column}' must be a non-empty list of non-empty strings.")
    tokens, tags = row[tokens_column], row[tags_column]
    if len(tokens) != len(tags):
        raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; every token needs exactly one tag.")
    return {"tokens": tokens, "tags": tags}


def read_tagged(source: str, task) -> list[dict]:
    """{tokens, tags} rows of a CoNLL-style text file, or of a JSON / JSONL / CSV / parquet file or hub dataset."""
    from finetune_kit.data.readers import read_rows

    path = Path(source)
    if path.suffix in (".txt", ".conll", ".iob", ".bio") and path.is_file():
        rows = read_conll(path, task.tag_column_index)
    else:
        rows = read_rows(source)
    return [check_row(where, row, task.tokens_column, task.tags_column) for where, row in rows]


def tagged_rows(cfg):
    """Training, validation and test rows (None where not given) and the tag set, every row checked before any
    model loads: by the token_classification recipe and the preflight (recipe table `data_check`)."""
    train = read_tagged(cfg.data.dataset_name, cfg.task)
    evaluation = read_tagged(cfg.data.eval_dataset_name, cfg.task) if cfg.data.eval_dataset_name else None
    test = read_tagged(cfg.task.test_dataset_name, cfg.task) if cfg.task.test_dataset_name else None
    return train, evaluation, test, tag_names(train + (evaluation or []) + (test or []))


def tagged_splits(cfg):
    """tagged_rows as datasets, with validation split off the training rows when eval_split_ratio asks: (train,
    validation or None, test or None, tag names). By the token_classification recipe and the preflight (recipe table
    `data_check`), so `check` refuses a ratio the rows cannot meet, as training would."""
    from datasets import Dataset

    from finetune_kit.data import split, split_seed

    train_rows, eval_rows, test_rows, names = tagged_rows(cfg)
    train, evaluation = Dataset.from_list(train_rows), None
    if eval_rows is not None:
        evaluation = Dataset.from_list(eval_rows)
    elif cfg.data.eval_split_ratio:
        parts = split(train, cfg.data.eval_split_ratio, split_seed(cfg.data, cfg.training.seed), cfg.data.dataset_name)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation, Dataset.from_list(test_rows) if test_rows else None, names


def tag_names(rows: list[dict]) -> list[str]:
    """Every tag seen, 'O' first, then entity tags grouped by type (B- before I-)."""
    tags = {t for r in rows for t in r["tags"]}
    return sorted(tags, key=lambda t: (t != "O", t[2:], t))


def align_labels(word_ids: list[int | None], word_labels: list[int], label_all_tokens: bool,
                 b_to_i: dict[int, int] | None = None) -> list[int]:
    """Word labels spread over sub-word tokens: the first sub-token of a word gets the word's label; the rest get
    -100 (ignored by the loss), or with `label_all_tokens` the word's label (B- turned into I-)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            label = word_labels[word]
            labels.append((b_to_i or {}).get(label, label) if label_all_tokens else IGNORE)
        previous = word
    return labels


def metrics_fn(names: list[str]):
    from finetune_kit.metrics import load_metric

    metric = load_metric("seqeval_f1")

    def compute(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        predictions = np.argmax(logits, -1)
        preds, refs = [], []
        for pred_row, label_row in zip(predictions, p.label_ids):
            keep = label_row != IGNORE
            preds.append([names[i] for i in pred_row[keep]])
            refs.append([names[i] for i in label_row[keep]])
        return metric.compute(predictions=preds, references=refs)

    return compute
