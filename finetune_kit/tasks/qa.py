"""Extractive question answering (SQuAD v1 / v2): reading, long contexts split with a stride, span post-processing.

Features follow the transformers QA examples: a context longer than `max_length` becomes several overlapping
windows (`doc_stride` tokens of overlap); each window's labels are the answer's start / end tokens, or the [CLS]
token when the answer is not inside it (or the question has none). At prediction time the best valid span over all
windows wins, unless the null score beats it by more than `null_score_threshold` (v2).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np

from finetune_kit.errors import DataError


def read_squad(path: str) -> list[dict]:
    """One row per question: id, title, context, question, answers {text: [...], answer_start: [...]}.

    Reads SQuAD's own JSON ({"data": [articles with paragraphs and qas]}) or one question per row (.jsonl, or a JSON
    list: the rows of the Hub's squad / squad_v2 datasets, `answers` {text, answer_start} lists, empty when the question
    has no answer). Every question is checked, and a bad one named by its place in the file."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset file not found: {path}")
    if file.suffix == ".jsonl":  # read as every jsonl file is (data.readers): errors name the line
        from finetune_kit.data.readers import read_file

        data = read_file(file)
    else:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text.") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}).") from None
    if isinstance(data, list):
        rows = [_flat(where, row) for where, row in (data if file.suffix == ".jsonl" else
                                                     ((f"{file.name} row {n}", r) for n, r in enumerate(data, 1)))]
    elif isinstance(data, dict) and isinstance(data.get("data"), list):
        rows = _nested(file.name, data["data"])
    else:
        raise DataError(f"{path}: expected SQuAD JSON ({{'data': [articles]}}) or one question per row (.jsonl with "
                        "context, question, answers).")
    if not rows:
        raise DataError(f"{path}: no questions found.")
    seen = set()
    for row in rows:
        if row["id"] in seen:  # predictions are matched to questions by id
            raise DataError(f"{path}: question id {row['id']!r} is used twice; ids must be unique.")
        seen.add(row["id"])
    return rows


def _nested(name: str, articles: list) -> list[dict]:
    rows = []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(x, dict) for x in paragraphs):
            raise DataError(f"{name} data[{a}]: an article must be an object with a 'paragraphs' list of objects.")
        for p, paragraph in enumerate(paragraphs):
            questions = paragraph.get("qas", [])
            if not isinstance(questions, list) or not all(isinstance(x, dict) for x in questions):
                raise DataError(f"{name} data[{a}].paragraphs[{p}]: 'qas' must be a list of question objects.")
            for k, question in enumerate(questions):
                where = f"{name} data[{a}].paragraphs[{p}] question {question.get('id', k)!r}"
                answers = [] if question.get("is_impossible") else question.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise DataError(f"{where}: 'answers' must be a list of {{text, answer_start}} objects.")
                if "id" not in question:
                    raise DataError(f"{where}: missing field 'id' (a unique name for the question).")
                rows.append(_question(where, question["id"], article.get("title", f"article {a}"),
                                      paragraph.get("context"), question.get("question"),
                                      [x.get("text") for x in answers], [x.get("answer_start") for x in answers]))
    return rows


def _flat(where: str, row) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with context, question, answers; got {type(row).__name__}.")
    answers = row.get("answers", {"text": [], "answer_start": []})
    texts, starts = (answers.get("text"), answers.get("answer_start")) if isinstance(answers, dict) else (None, None)
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise DataError(f"{where}: field 'answers' must be {{text: [...], answer_start: [...]}}, lists of one length "
                        "(both empty when the question has no answer).")
    return _question(where, row.get("id", where.rsplit(" ", 1)[-1]), row.get("title", ""), row.get("context"),
                     row.get("question"), texts, starts)


def _question(where, qid, title, context, question, texts: list, starts: list) -> dict:
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{where}: field 'context' is missing or empty.")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' is missing or empty.")
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool) or start < 0 \
                or context[start:start + len(text)] != text:
            raise DataError(f"{where}: answer {text!r} is not inside its context at answer_start={start}.")
    return {"id": str(qid), "title": str(title), "context": context, "question": question.strip(),
            "answers": {"text": list(texts), "answer_start": list(starts)}}


def squad_splits(cfg) -> tuple[list[dict], list[dict] | None]:
    """The training questions and those of eval_dataset_name (None when not given), every one checked: by the
    question_answering recipe and the preflight (recipe table `data_check`)."""
    evaluation = read_squad(cfg.data.eval_dataset_name) if cfg.data.eval_dataset_name else None
    return read_squad(cfg.data.dataset_name), evaluation


def hold_out(rows: list[dict], key: str, ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """`ratio` of the groups of rows sharing `key` (at least one, none when there is only one group) apart, whole."""
    groups = sorted({r[key] for r in rows})
    random.Random(seed).shuffle(groups)
    held = set(groups[: max(1, round(ratio * len(groups)))]) if len(groups) > 1 else set()
    return [r for r in rows if r[key] not in held], [r for r in rows if r[key] in held]


def split_by_article(rows: list[dict], ratio: float, seed: int, source: str = "the data") -> tuple[list, list]:
    if len({r["title"] for r in rows}) < 2:
        raise DataError(f"{source}: eval_split_ratio splits by article (title), and the data has only one; give "
                        "eval_dataset_name, or rows of more articles.")
    return hold_out(rows, "title", ratio, seed)


def question_splits(cfg) -> tuple[list[dict], list[dict], list[dict], bool]:
    """Training, evaluation and null-calibration questions, and whether the data is v2 (has unanswerable questions).
    Evaluation: eval_dataset_name, else eval_split_ratio of the articles, whole. Calibration (v2, threshold left
    unset): null_calibration_ratio of the training paragraphs, whole, so no calibration context is trained on. By the
    question_answering recipe and the preflight (recipe table `data_check`): `check` refuses what training would."""
    from finetune_kit.data import split_seed

    rows, given_eval = squad_splits(cfg)
    seed, task = split_seed(cfg.data, cfg.training.seed), cfg.task
    if given_eval is not None:
        train, evaluation = rows, given_eval
    elif cfg.data.eval_split_ratio:
        train, evaluation = split_by_article(rows, cfg.data.eval_split_ratio, seed, cfg.data.dataset_name)
    else:
        train, evaluation = rows, []
    version_2 = bool(task.version_2_with_negative) or any(not r["answers"]["text"] for r in rows)
    calibration = []
    if version_2 and task.null_score_threshold is None and task.null_calibration_ratio:
        train, calibration = hold_out(train, "context", task.null_calibration_ratio, seed + 1)
    return train, evaluation, calibration, version_2


def _windows(tokenizer, batch, max_length: int, stride: int, padding: str | bool = "max_length"):
    pad_right = tokenizer.padding_side == "right"
    return tokenizer(batch["question" if pad_right else "context"], batch["context" if pad_right else "question"],
                     truncation="only_second" if pad_right else "only_first", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding=padding)


def train_features(tokenizer, batch, max_length: int, stride: int, padding: str | bool = "max_length") -> dict:
    """Windows labelled with the answer's first / last token, or [CLS] where the window lacks the whole answer.
    `padding=False` leaves padding to the batch collator (shorter batches; labels are positions, unaffected)."""
    enc = _windows(tokenizer, batch, max_length, stride, padding)
    sample_map = enc.pop("overflow_to_sample_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(enc.pop("offset_mapping")):
        cls = enc["input_ids"][i].index(tokenizer.cls_token_id) if tokenizer.cls_token_id in enc["input_ids"][i] else 0
        answers = batch["answers"][sample_map[i]]
        sequence = enc.sequence_ids(i)
        context_tokens = [k for k, s in enumerate(sequence) if s == 1]
        if not answers["answer_start"]:
            starts.append(cls)
            ends.append(cls)
            continue
        a_start = answers["answer_start"][0]
        a_end = a_start + len(answers["text"][0])
        first, last = context_tokens[0], context_tokens[-1]
        if offsets[first][0] > a_start or offsets[last][1] < a_end:  # answer not in this window
            starts.append(cls)
            ends.append(cls)
            continue
        starts.append(next(k for k in context_tokens if offsets[k][1] > a_start))
        ends.append(next(k for k in reversed(context_tokens) if offsets[k][0] < a_end))
    enc["start_positions"], enc["end_positions"] = starts, ends
    return enc


def eval_features(tokenizer, batch, max_length: int, stride: int) -> dict:
    enc = _windows(tokenizer, batch, max_length, stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [batch["id"][s] for s in sample_map]
    # Keep offsets only for context tokens, so a predicted span can never fall in the question.
    enc["offset_mapping"] = [[o if enc.sequence_ids(i)[k] == 1 else None for k, o in enumerate(offsets)]
                             for i, offsets in enumerate(enc["offset_mapping"])]
    return enc


def best_spans(examples, features, start_logits, end_logits, n_best: int = 20,
               max_answer_length: int = 30) -> dict[str, tuple[str, float]]:
    """Per example id: the best span's text over all its windows, and its margin against the null answer (null score
    minus the span's score: positive when the model prefers "no answer")."""
    by_example: dict[str, list[int]] = {}
    for i, example_id in enumerate(features["example_id"]):
        by_example.setdefault(example_id, []).append(i)
    spans = {}
    for example in examples:
        best_text, best_score, null_score = "", -np.inf, np.inf
        for f in by_example.get(example["id"], []):
            starts, ends, offsets = start_logits[f], end_logits[f], features["offset_mapping"][f]
            null_score = min(null_score, starts[0] + ends[0])
            for s in np.argsort(starts)[-n_best:][::-1]:
                for e in np.argsort(ends)[-n_best:][::-1]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = starts[s] + ends[e]
                    if score > best_score:
                        best_score, best_text = score, example["context"][offsets[s][0]:offsets[e][1]]
        spans[example["id"]] = (best_text, float(null_score - best_score))
    return spans


def answers_at(spans: dict[str, tuple[str, float]], null_score_threshold: float | None) -> dict[str, str]:
    """The answer text per example id: "" where the null margin passes the threshold (v2; None: always a span)."""
    return {i: "" if null_score_threshold is not None and margin > null_score_threshold else text
            for i, (text, margin) in spans.items()}


def best_answers(examples, features, start_logits, end_logits, n_best: int = 20, max_answer_length: int = 30,
                 null_score_threshold: float | None = 0.0) -> dict[str, str]:
    """The answer text per example id. With a threshold (v2), "" when null score - best span score > threshold."""
    spans = best_spans(examples, features, start_logits, end_logits, n_best, max_answer_length)
    return answers_at(spans, null_score_threshold)


def write_predictions(output_dir: str, answers: dict[str, str], spans: dict[str, tuple[str, float]] | None) -> None:
    """predictions.json; with `spans` (v2) also null_odds.json (null score minus best span score per question, as
    transformers' run_qa writes it; None: no valid span) and best_spans.json, so another threshold can be tried (the
    span where the odds are under it, else "") without predicting again."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    Path(output_dir, "predictions.json").write_text(json.dumps(answers, indent=1))
    if spans is not None:
        Path(output_dir, "null_odds.json").write_text(json.dumps(
            {i: round(margin, 4) if math.isfinite(margin) else None for i, (_, margin) in spans.items()}, indent=1))
        Path(output_dir, "best_spans.json").write_text(json.dumps({i: text for i, (text, _) in spans.items()},
                                                                  indent=1))


def choose_null_threshold(examples, spans: dict[str, tuple[str, float]], f1) -> tuple[float, float]:
    """The null threshold with the best mean F1 on `examples` (questions the model did not train on), and that F1.

    Answering "" scores 1 on an unanswerable question and 0 on an answerable one; answering the span scores its F1
    (`f1(prediction, gold)`, best over the golds). Sweeping the threshold over the sorted margins finds the best cut
    exactly, as the official SQuAD v2 script's best_f1_thresh does.
    """
    if not examples:
        raise ValueError("choose_null_threshold needs at least one question")
    golds = {e["id"]: e["answers"]["text"] for e in examples}
    span_f1 = {i: max((f1(spans[i][0], g) for g in golds[i]), default=0.0) if golds[i] else 0.0 for i in golds}
    null_f1 = {i: 0.0 if golds[i] else 1.0 for i in golds}
    order = sorted(golds, key=lambda i: spans[i][1])
    # Threshold below every margin: all answered null; raising it past margin k answers question k with its span.
    total = sum(null_f1.values())
    best_total, best_threshold = total, spans[order[0]][1] - 1.0
    for k, i in enumerate(order):
        total += span_f1[i] - null_f1[i]
        following = spans[order[k + 1]][1] if k + 1 < len(order) else spans[i][1] + 1.0
        if total > best_total:
            best_total, best_threshold = total, (spans[i][1] + following) / 2
    return float(best_threshold), 100 * best_total / len(order)
