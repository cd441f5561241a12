"""Step-labelled reasoning for process reward models: rows checked one by one, split by problem, tokenized with a
label on the separator after each step; step metrics and how well solution scores rank the candidates of a problem.

A row is trl's stepwise format (what its old PRMTrainer read, and `trl-lib/prm800k` / `trl-lib/math_shepherd` hold):
`prompt` (text), `completions` (the steps, a list of texts) and `labels` (one true / false per step: is the solution
still right after this step). Nothing here imports torch or datasets: the preflight runs `step_rows` before any
library loads.
"""

from __future__ import annotations

import random
from functools import partial

from finetune_kit.errors import ConfigError, DataError

IGNORE = -100
FIELDS = ("prompt", "completions", "labels")


def check_row(row: dict, where: str, separator: str) -> dict:
    """The row's prompt, steps and labels; a `DataError` naming the row and the field otherwise."""
    for name in FIELDS:
        if name not in row:
            raise DataError(f"{where}: missing field '{name}' (step-labelled rows have {', '.join(FIELDS)}; "
                            "column_mapping renames yours).")
    prompt, steps, labels = row["prompt"], row["completions"], row["labels"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: field 'prompt' must be a non-empty string.")
    if not isinstance(steps, list) or not steps:
        raise DataError(f"{where}: field 'completions' must be a non-empty list of steps (strings).")
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, str):
            raise DataError(f"{where}: field 'completions': step {i} is {type(step).__name__}, not a string.")
        if not step.strip():
            raise DataError(f"{where}: field 'completions': step {i} is empty.")
        if separator in step:
            # A step holding the separator would read as two steps when an answer is split to be scored.
            raise DataError(f"{where}: field 'completions': step {i} contains the step separator {separator!r}; "
                            "remove it from the step, or set step_separator to text no step holds.")
    if not isinstance(labels, list):
        raise DataError(f"{where}: field 'labels' must be a list of true / false, one per step.")
    if len(labels) != len(steps):
        raise DataError(f"{where}: field 'labels' has {len(labels)} labels for {len(steps)} steps in 'completions'; "
                        "every step needs exactly one label.")
    for i, label in enumerate(labels, start=1):
        if not isinstance(label, bool):
            raise DataError(f"{where}: field 'labels': label {i} is {label!r}, not true or false (PRM800K ratings: "
                            "+1 is true, 0 and -1 are false).")
    return {"prompt": prompt, "completions": steps, "labels": labels}


def step_rows(cfg) -> tuple[list[dict], list[dict] | None, list[dict] | None]:
    """Training, validation and test rows (None where not given), every row checked before any model loads: by the
    prm recipe and the preflight (recipe table `data_check`)."""
    from finetune_kit.data import load_rows

    data, check = cfg.data, partial(check_row, separator=cfg.task.step_separator)
    train = load_rows(data.dataset_name, data, data.dataset_train_split, check)
    evaluation = load_rows(data.eval_dataset_name, data, "validation", check) if data.eval_dataset_name else None
    test = load_rows(cfg.task.test_dataset_name, data, "test", check) if cfg.task.test_dataset_name else None
    return train, evaluation, test


def step_splits(cfg) -> tuple[list[dict], list[dict] | None, list[dict] | None]:
    """step_rows, then whole problems held out when eval_split_ratio asks: by the prm recipe and the preflight (recipe
    table `data_check`), so `check` refuses a ratio the problems cannot meet, as training would."""
    from finetune_kit.data import split_seed

    train, evaluation, test = step_rows(cfg)
    if evaluation is None and cfg.data.eval_split_ratio:  # whole problems held out: no prompt on both sides
        train, evaluation = split_by_problem(train, cfg.data.eval_split_ratio, split_seed(cfg.data, cfg.training.seed),
                                             cfg.data.dataset_name)
    return train, evaluation, test


def split_by_problem(rows: list[dict], ratio: float, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """Hold out `ratio` of the problems (rows sharing a prompt), seeded: no problem is on both sides, so held-out
    scores measure problems the model has not seen."""
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:round(ratio * len(prompts))])
    if not held or len(held) == len(prompts):
        raise DataError(f"{where}: eval_split_ratio {ratio:g} cannot split its {len(prompts)} problems (distinct "
                        "prompts) into two non-empty sides; change the ratio or add problems.")
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def encode(prompt_ids: list[int], step_ids: list[list[int]], labels: list[bool], separator_ids: list[int],
           max_length: int, last_step_only: bool = False) -> dict[str, list[int]]:
    """Prompt, separator, then each step followed by the separator; the separator's last token after a step carries
    that step's label (1 right, 0 wrong), every other position IGNORE. Cut at `max_length` (later steps go unlabelled).
    With a causal LM that token sees the prompt and the steps up to it, never a later one."""
    input_ids = [*prompt_ids, *separator_ids]
    targets = [IGNORE] * len(input_ids)
    for i, (ids, label) in enumerate(zip(step_ids, labels)):
        input_ids += [*ids, *separator_ids]
        kept = not last_step_only or i == len(step_ids) - 1
        targets += [IGNORE] * (len(ids) + len(separator_ids) - 1) + [int(label) if kept else IGNORE]
    return {"input_ids": input_ids[:max_length], "labels": targets[:max_length]}


def separator_ids(tokenizer, separator: str) -> list[int]:
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"step_separator {separator!r} is no token for this tokenizer (WordPiece drops whitespace): "
                          "choose one it keeps, e.g. ' ки' or '[SEP]' for an encoder.")
    return ids


def encoder(tokenizer, separator: str, max_length: int, last_step_only: bool = False):
    """A batched `datasets.map` function: rows -> input_ids and labels. The prompt is tokenized as the tokenizer does
    by default (its BOS or [CLS] where it adds one); steps and separator without special tokens, piece by piece, so
    the separator's tokens never merge with a step's."""
    sep = separator_ids(tokenizer, separator)

    def encode_batch(batch: dict) -> dict:
        prompts = tokenizer(batch["prompt"])["input_ids"]
        pieces = [s for steps in batch["completions"] for s in steps]
        flat = tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
        out, start = {"input_ids": [], "labels": []}, 0
        for prompt_ids, steps, labels in zip(prompts, batch["completions"], batch["labels"]):
            row = encode(prompt_ids, flat[start:start + len(steps)], labels, sep, max_length, last_step_only)
            start += len(steps)
            out["input_ids"].append(row["input_ids"])
            out["labels"].append(row["labels"])
        return out

    return encode_batch


def step_metrics(predictions, labels) -> dict[str, float]:
    """Step accuracy, and precision / recall / F1 of the error class (a wrong step is what a PRM must catch), over the
    labelled positions of argmax predictions."""
    import numpy as np

    predictions, labels = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    keep = labels != IGNORE
    pred, gold = predictions[keep], labels[keep]
    caught, flagged, wrong = int(((pred == 0) & (gold == 0)).sum()), int((pred == 0).sum()), int((gold == 0).sum())
    precision, recall = caught / max(flagged, 1), caught / max(wrong, 1)
    return {"step_accuracy": float((pred == gold).mean()) if gold.size else 0.0, "labelled_steps": int(gold.size),
            "error_precision": precision, "error_recall": recall,
            "error_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def metrics_fn():
    """compute_metrics for transformers' Trainer: logits (rows, tokens, 2) -> step_metrics."""
    import numpy as np

    def compute(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return step_metrics(np.argmax(logits, -1), p.label_ids)

    return compute


def held_out_metrics(rows: list[dict], probabilities: list[list[float]], how: str) -> dict[str, float]:
    """Loss (mean -log P(the step's label)), step_metrics at P(right) >= 0.5, and the ranking of the solution scores,
    from each row's scored steps (those within max_length)."""
    import math

    pairs = [(p, label) for row, probs in zip(rows, probabilities) for p, label in zip(probs, row["labels"])]
    loss = sum(-math.log(max(p if label else 1 - p, 1e-12)) for p, label in pairs) / max(len(pairs), 1)
    metrics = {"loss": loss, **step_metrics([int(p >= 0.5) for p, _ in pairs], [int(label) for _, label in pairs])}
    return {**metrics, **ranking(rows, [solution_score(p, how) for p in probabilities])}


def solution_score(probabilities: list[float], how: str) -> float:
    """A solution's score from its steps' P(right): the weakest step (min) or all of them right (prod); 0 when no
    step was scored (an empty answer)."""
    if not probabilities:
        return 0.0
    if how == "min":
        return min(probabilities)
    product = 1.0
    for p in probabilities:
        product *= p
    return product


def ranking(rows: list[dict], scores: list[float]) -> dict[str, float]:
    """How well solution scores rank the candidates of each problem (rows sharing a prompt): pairwise accuracy (the
    AUC within problems: the share of (fully right, wrong) pairs of one problem scored right above wrong, ties half),
    and best-of-n accuracy (the share of problems with a fully right candidate whose top-scored one is right)."""
    problems: dict[str, list[tuple[float, bool]]] = {}
    for row, score in zip(rows, scores):
        problems.setdefault(row["prompt"], []).append((score, all(row["labels"])))
    won = pairs = best = ranked = 0
    for candidates in problems.values():
        right = [s for s, ok in candidates if ok]
        wrong = [s for s, ok in candidates if not ok]
        if not right:
            continue
        ranked += 1
        best += max(candidates, key=lambda c: c[0])[1]
        won += sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
        pairs += len(right) * len(wrong)
    if not pairs:
        return {}
    return {"solution_pairwise_accuracy": won / pairs, "solution_pairs": pairs,
            "best_of_n_accuracy": best / ranked, "ranked_problems": ranked}
