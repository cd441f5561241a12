"""Sequence classification helpers: labels from the data, stratified splits, class imbalance, freezing, metrics.

Single-label (one class per row), multi-label (a list of classes per row) and regression (one float per row).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from finetune_kit.errors import DataError

if TYPE_CHECKING:  # imported where used: reading and labelling rows (the preflight) needs neither
    import torch
    from datasets import Dataset

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


def detect_problem_type(labels: list[Any], requested: str) -> str:
    if requested != "auto":
        return {"single_label": SINGLE, "multi_label": MULTI, "regression": REGRESSION}[requested]
    if all(isinstance(v, list) for v in labels):
        return MULTI
    if all(isinstance(v, float) for v in labels) and any(not float(v).is_integer() for v in labels):
        return REGRESSION
    return SINGLE


def read_examples(rows: list[tuple[str, dict]], args) -> list[dict]:
    """{text, text_pair?, label} per row, with every problem named by row and field."""
    examples = []
    for where, row in rows:
        example = {"text": _text(row, args.text_column, where)}
        if args.text_pair_column:
            example["text_pair"] = _text(row, args.text_pair_column, where)
        if args.label_column not in row or row[args.label_column] in (None, ""):
            raise DataError(f"{where}: missing field '{args.label_column}' (the label).")
        example["label"] = row[args.label_column]
        examples.append(example)
    return examples


def _text(row: dict, column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: missing field '{column}' (set text_column / text_pair_column).")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{column}' must be non-empty text, got {value!r}.")
    return value


def label_names(examples: list[dict], problem: str, fixed: list[str] | None, source: str = "the data") -> list[str]:
    """The label set: the configured list (order kept) or every label seen, sorted; at least two classes."""
    if problem == REGRESSION:
        return ["score"]
    seen = sorted({str(v) for e in examples for v in (e["label"] if problem == MULTI else [e["label"]])})
    names = list(fixed) if fixed else seen
    if len(names) < 2:  # a one-class head learns to say that class: loss 0, nothing learned
        raise DataError(f"{source}: every row has the label {seen[0] if seen else None!r}; a classifier needs at least "
                        "two classes (for a numeric score, set problem_type: regression).")
    return names


def encode_labels(examples: list[dict], wheres: list[str], problem: str, names: list[str], column: str) -> None:
    """Replace each label by its id (single), a 0/1 float vector (multi) or a float (regression), in place."""
    index = {n: i for i, n in enumerate(names)}
    for example, where in zip(examples, wheres):
        value = example["label"]
        if problem == REGRESSION:
            try:
                example["label"] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{where}: field '{column}' must be a number for regression, got {value!r}.") from None
            continue
        values = value if problem == MULTI else [value]
        if problem == MULTI and not isinstance(value, list):
            raise DataError(f"{where}: field '{column}' must be a list of labels (multi-label: every row holds a "
                            f"list), got {value!r}.")
        if not all(isinstance(v, (str, int, float)) for v in values):  # bool is an int
            kind = ("a list, but other rows hold one label: give every row a list (multi-label) or none"
                    if problem == SINGLE and isinstance(value, list) else f"not a label (text or a number): {value!r}")
            raise DataError(f"{where}: field '{column}' is {kind}.")
        unknown = [str(v) for v in values if str(v) not in index]
        if unknown:
            raise DataError(f"{where}: field '{column}': label {unknown[0]!r} is not in the label set {names}.")
        if problem == MULTI:
            example["label"] = [float(str(n) in {str(v) for v in values}) for n in names]
        else:
            example["label"] = index[str(value)]


def labelled_examples(cfg):
    """Every row of the training, validation and test files read, validated and labelled, before any model loads:
    (wheres by split, examples by split, problem type, label names). Labels of the validation / test files must be
    among the training labels; an error names the file and row. The text_classification recipe and the preflight
    (recipe table `data_check`) both call it."""
    from finetune_kit.data.formats import apply_column_mapping, require_mapped_columns
    from finetune_kit.data.readers import read_rows

    task = cfg.task
    sources = {"train": cfg.data.dataset_name, "validation": cfg.data.eval_dataset_name,
               "test": task.test_dataset_name}
    read = {name: read_rows(source) for name, source in sources.items() if source}
    for name, part in read.items():
        require_mapped_columns(part, cfg.data.column_mapping, sources[name])
    rows = {name: [(w, apply_column_mapping(r, cfg.data.column_mapping)) for w, r in part]
            for name, part in read.items()}
    examples = {name: read_examples(part, task) for name, part in rows.items()}
    problem = detect_problem_type([e["label"] for e in examples["train"]], task.problem_type)
    names = label_names(examples["train"], problem, task.labels, cfg.data.dataset_name)
    wheres = {name: [w for w, _ in part] for name, part in rows.items()}
    for name, part in examples.items():
        encode_labels(part, wheres[name], problem, names, task.label_column)
    return wheres, examples, problem, names


def labelled_splits(cfg) -> tuple[dict, str, list[str]]:
    """labelled_examples, then the train / validation / test datasets the recipe trains on (stratified for single-label
    data; validation / test files as given): (splits, problem type, label names). By the text_classification recipe
    and the preflight (recipe table `data_check`), so `check` refuses a ratio the rows cannot meet, as training would."""
    from datasets import Dataset

    from finetune_kit.data import split_seed

    _, examples, problem, names = labelled_examples(cfg)
    splits = stratified_splits(Dataset.from_list(examples["train"]), cfg.data.eval_split_ratio,
                               cfg.task.test_split_ratio, split_seed(cfg.data, cfg.training.seed),
                               stratify=problem == SINGLE, source=cfg.data.dataset_name)
    splits.update({name: Dataset.from_list(part) for name, part in examples.items() if name != "train"})
    return splits, problem, names


def stratified_splits(dataset: Dataset, eval_ratio: float, test_ratio: float, seed: int, stratify: bool,
                      source: str = "the data"):
    """train / validation / test, each keeping the class ratios when `stratify` (single-label data)."""
    from datasets import ClassLabel

    from finetune_kit.data import split

    if stratify:
        dataset = dataset.cast_column("label", ClassLabel(num_classes=max(dataset["label"]) + 1))
    column = "label" if stratify else None
    splits = {"train": dataset, "validation": None, "test": None}
    for name, ratio in (("test", test_ratio), ("validation", eval_ratio)):
        if ratio:
            total = ratio * len(dataset) / len(splits["train"])  # ratios are of the whole dataset
            parts = split(splits["train"], total, seed, source, f"{'test' if name == 'test' else 'eval'}_split_ratio",
                          stratify_by_column=column)
            splits["train"], splits[name] = parts["train"], parts["test"]
    return splits


def resample(dataset: Dataset, how: str, seed: int) -> Dataset:
    """oversample: repeat minority rows up to the majority count; undersample: keep minority-count rows per class."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(dataset["label"]):
        by_class.setdefault(int(label), []).append(i)
    rng = random.Random(seed)
    target = (max if how == "oversample" else min)(len(v) for v in by_class.values())
    picked = []
    for rows in by_class.values():
        if how == "oversample":
            picked += rows + [rng.choice(rows) for _ in range(target - len(rows))]
        else:
            picked += rng.sample(rows, target)
    rng.shuffle(picked)
    return dataset.select(picked)


def class_weights(labels: list[int], num_labels: int, spec: list[str] | str) -> torch.Tensor:
    import torch

    """'auto': inverse class frequency, normalised to mean 1 (sklearn's 'balanced'); or one weight per label."""
    spec = [spec] if isinstance(spec, str) else list(spec)
    if spec == ["auto"]:
        counts = Counter(int(v) for v in labels)
        missing = [i for i in range(num_labels) if not counts[i]]
        if missing:
            raise DataError(f"class_weights: auto needs every class in the training split; missing ids {missing}.")
        return torch.tensor([len(labels) / (num_labels * counts[i]) for i in range(num_labels)], dtype=torch.float)
    try:
        weights = [float(w) for item in spec for w in str(item).split(",")]
    except ValueError:
        raise DataError(f"class_weights must be auto or numbers (one per label), got {spec!r}.") from None
    if len(weights) != num_labels:
        raise DataError(f"class_weights has {len(weights)} values for {num_labels} labels.")
    return torch.tensor(weights, dtype=torch.float)


def weighted_loss(weights: torch.Tensor):
    import torch

    """A `compute_loss_func` for transformers' Trainer: cross-entropy with per-class weights."""

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                 weight=weights.to(logits.device))

    return loss


def freeze_lower_layers(model, n: int) -> list[str]:
    """Freeze the embeddings and the lowest `n` transformer layers; return the frozen parameter names."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(getattr(base, "encoder", base), "layer", None)
    if layers is None or n > len(layers):
        raise DataError(f"freeze_layers: {n} is more than the model's {0 if layers is None else len(layers)} layers.")
    frozen = []
    for module in [base.embeddings, *layers[:n]]:
        for name, param in module.named_parameters():
            param.requires_grad = False
            frozen.append(name)
    return frozen


def metrics_fn(problem: str):
    """`compute_metrics` for Trainer, through our local evaluate modules."""
    from finetune_kit.metrics import load_metric

    if problem == REGRESSION:
        metric = load_metric("regression")
        return lambda p: metric.compute(predictions=np.squeeze(p.predictions).tolist(),
                                        references=np.squeeze(p.label_ids).tolist())
    metric = load_metric("classification", "multilabel" if problem == MULTI else None)

    def compute(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        if problem == MULTI:
            return metric.compute(predictions=(logits > 0).astype(int).tolist(),
                                  references=p.label_ids.astype(int).tolist())
        return metric.compute(predictions=logits.argmax(-1).tolist(), references=p.label_ids.tolist())

    return compute


def per_class_report(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    from sklearn.metrics import classification_report, confusion_matrix

    predictions = logits.argmax(-1)
    report = classification_report(labels, predictions, labels=list(range(len(names))), target_names=names,
                                   output_dict=True, zero_division=0)
    report["confusion_matrix"] = confusion_matrix(labels, predictions, labels=list(range(len(names)))).tolist()
    return report
