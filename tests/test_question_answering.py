"""Extractive QA: SQuAD reading and validation, windows with stride, span post-processing, EM/F1, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SHARED, run_recipe, write_config
from finetune_kit.errors import DataError
from finetune_kit.tasks import qa

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


def squad_file(tmp_path, answer_start=0, text="Paris", impossible=False):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is the capital of France.", "qas": [
        {"id": "q1", "question": "What is the capital of France?", "is_impossible": impossible,
         "answers": [] if impossible else [{"text": text, "answer_start": answer_start}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_reads_real_squad_v2_sample():
    rows = qa.read_squad(str(SHARED / "squad" / "squad_v2_sample.json"))
    assert len(rows) == 950 and len({r["title"] for r in rows}) == 3
    assert any(not r["answers"]["text"] for r in rows) and any(r["answers"]["text"] for r in rows)


def test_answer_span_outside_its_context_is_named(tmp_path):
    with pytest.raises(DataError, match=r"squad\.json data\[0\]\.paragraphs\[0\] question 'q1': answer 'Paris' "
                                        r"is not inside its context at answer_start=3"):
        qa.read_squad(squad_file(tmp_path, answer_start=3))


def test_one_question_per_row_reads_as_the_nested_file_does(tmp_path):
    nested = qa.read_squad(squad_file(tmp_path))
    row = {"id": "q1", "title": "T", "context": "Paris is the capital of France.",
           "question": "What is the capital of France?", "answers": {"text": ["Paris"], "answer_start": [0]}}
    (tmp_path / "flat.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "flat.json").write_text(json.dumps([row]))
    assert qa.read_squad(str(tmp_path / "flat.jsonl")) == nested == qa.read_squad(str(tmp_path / "flat.json"))
    (tmp_path / "flat.jsonl").write_text(json.dumps(row) + "\n{oops\n")
    with pytest.raises(DataError, match=r"flat\.jsonl line 2: not valid JSON"):
        qa.read_squad(str(tmp_path / "flat.jsonl"))


PARAGRAPH = {"context": "abc", "qas": [{"id": "1", "question": "q", "answers": [{"text": "b", "answer_start": 1}]}]}
ROW = {"id": "1", "context": "abc", "question": "q", "answers": {"text": ["b"], "answer_start": [1]}}


@pytest.mark.parametrize("name, content, message", [
    ("s.json", {"data": [1]}, r"s\.json data\[0\]: an article must be an object with a 'paragraphs' list"),
    ("s.json", {"data": [{"paragraphs": [{"context": "abc", "qas": [{"question": "q"}]}]}]},
     r"data\[0\]\.paragraphs\[0\] question 0: missing field 'id'"),
    ("s.json", {"data": [{"paragraphs": [{**PARAGRAPH, "qas": [{"id": "1", "question": "q", "answers": ["b"]}]}]}]},
     r"question '1': 'answers' must be a list of \{text, answer_start\} objects"),
    ("s.json", {"data": [{"paragraphs": [PARAGRAPH, PARAGRAPH]}]}, "question id '1' is used twice"),
    ("s.json", {"data": {"x": 1}}, r"expected SQuAD JSON \(\{'data': \[articles\]\}\) or one question per row"),
    ("s.json", [ROW, "text"], "s.json row 2: expected an object with context, question, answers; got str"),
    ("s.jsonl", [{**ROW, "answers": {"text": ["b"]}}], "s.jsonl line 1: field 'answers' must be"),
    ("s.jsonl", [{**ROW, "answers": {"text": ["b"], "answer_start": [-2]}}],
     "line 1: answer 'b' is not inside its context at answer_start=-2"),
    ("s.jsonl", [{**ROW, "context": ""}], "line 1: field 'context' is missing or empty"),
    ("s.jsonl", [ROW, {**ROW, "question": None}], "s.jsonl line 2: field 'question' is missing or empty"),
])
def test_bad_squad_files_are_named_by_place(tmp_path, name, content, message):
    path = tmp_path / name
    rows = content if name.endswith(".jsonl") else [content]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=message):
        qa.read_squad(str(path))


def test_windows_label_the_answer_or_cls(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    context = " ".join(f"word{i}" for i in range(60)) + " the answer is Paris ."
    start = context.index("Paris")
    batch = {"question": ["Where?"], "context": [context], "answers": [{"text": ["Paris"], "answer_start": [start]}]}
    features = qa.train_features(tokenizer, batch, max_length=48, stride=16)
    assert len(features["input_ids"]) > 1  # the long context was split into windows
    labelled = [(s, e) for s, e in zip(features["start_positions"], features["end_positions"]) if s != 0]
    assert labelled, "no window holds the answer"
    for i, (s, e) in enumerate(zip(features["start_positions"], features["end_positions"])):
        if s:
            assert tokenizer.decode(features["input_ids"][i][s:e + 1]) == "paris"  # uncased WordPiece


def test_span_post_processing_on_a_hand_made_example():
    example = {"id": "q", "context": "Paris is the capital of France."}
    # token 0 = [CLS]; tokens 1..6 map onto the context words; token 7 = [SEP]
    offsets = [None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), None]
    features = {"example_id": ["q"], "offset_mapping": [offsets]}
    start = np.array([[0.0, 5.0, 0, 0, 1.0, 0, 0, 0]])
    end = np.array([[0.0, 4.0, 0, 0, 0, 0, 3.0, 0]])
    assert qa.best_answers([example], features, start, end)["q"] == "Paris"
    # A strong null score ([CLS]) wins in v2 mode, and is ignored in v1 mode.
    start[0, 0], end[0, 0] = 10.0, 10.0
    assert qa.best_answers([example], features, start, end, null_score_threshold=0.0)["q"] == ""
    assert qa.best_answers([example], features, start, end, null_score_threshold=None)["q"] == "Paris"
    # An end before the start, or a span longer than max_answer_length, is never chosen.
    start = np.array([[0.0, 0, 0, 0, 0, 0, 9.0, 0]])
    end = np.array([[0.0, 9.0, 0, 0, 0, 0, 1.0, 0]])
    assert qa.best_answers([example], features, start, end, null_score_threshold=None)["q"] == "France"
    start = np.array([[0.0, 9.0, 0, 0, 0, 0, 0, 0]])
    end = np.array([[0.0, 0, 0, 0, 0, 0, 9.0, 0]])
    assert qa.best_answers([example], features, start, end, max_answer_length=3,
                           null_score_threshold=None)["q"] != "Paris is the capital of France."


def test_squad_metric_against_hand_computed_values():
    from finetune_kit.metrics import load_metric

    result = load_metric("squad_v2").compute(predictions=["the Eiffel Tower", "in Paris", ""],
                                             references=[["Eiffel Tower"], ["Paris, France"], [""]])
    assert result["exact"] == pytest.approx(200 / 3) and result["f1"] == pytest.approx(250 / 3)
    assert result["NoAns_exact"] == 100.0 and result["HasAns_f1"] == 75.0


def test_tiny_run_trains_and_scores_a_held_out_article(tmp_path, tiny_bert_dir, capsys):
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(SHARED / "squad" / "squad_v2_sample.json"),
           "eval_split_ratio": 0.34, "max_train_samples": 64, "max_length": 96, "doc_stride": 32,
           "output_dir": str(tmp_path / "run"), "num_train_epochs": 2, "per_device_train_batch_size": 16,
           "learning_rate": 3e-3, "logging_steps": 2, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0}
    metrics = run_recipe("question_answering", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    history = [e["loss"] for e in json.loads((tmp_path / "run" / "log_history.json").read_text()) if "loss" in e]
    assert history[-1] < history[0]
    assert 0 <= metrics["eval_f1"] <= 100 and metrics["eval_total"] > 100
    predictions = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert len(predictions) == metrics["eval_total"]
    assert 0 <= metrics["eval_HasAns_f1_spans_only"] <= 100
    # null_odds.json (run_qa's name) holds what the threshold was applied to: "" exactly where the odds pass it.
    odds = json.loads((tmp_path / "run" / "null_odds.json").read_text())
    threshold = json.loads((tmp_path / "run" / "run_info.json").read_text())["decisions"]["null_score_threshold"]
    assert odds.keys() == predictions.keys()
    assert all(predictions[i] == "" for i in odds if odds[i] is None or odds[i] > threshold["value"] + 1e-3)
    assert all(predictions[i] != "" for i in odds if odds[i] is not None and odds[i] < threshold["value"] - 1e-3)
    spans = json.loads((tmp_path / "run" / "best_spans.json").read_text())
    assert spans.keys() == predictions.keys() and all(predictions[i] in ("", spans[i]) for i in predictions)
    # The null threshold was chosen on training paragraphs held out of training, recorded, and used by predict.
    decision = json.loads((tmp_path / "run" / "run_info.json").read_text())["decisions"]["null_score_threshold"]
    assert "held out of training" in decision["why"]
    from finetune_kit.cli import main
    from finetune_kit.cli_commands import run_null_threshold

    assert run_null_threshold(str(tmp_path / "run")) == decision["value"]

    capsys.readouterr()
    context = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
    main(["predict", "--model", str(tmp_path / "run"), "--question", "Who gave their name to Normandy?",
          "--context", context])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["answer"] == "" or result["answer"] in context  # an extracted span, never invented text


def test_answer_start_alignment_across_stride_windows(tiny_bert_dir):
    """A worked example: the answer sits where two windows overlap, and next to a window's end. Every window that
    holds the whole answer labels exactly its tokens; a window that cuts it labels [CLS]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    context = " ".join(f"w{i}" for i in range(40)) + " the capital is New Delhi today " + \
        " ".join(f"v{i}" for i in range(40))
    start = context.index("New Delhi")
    batch = {"question": ["Capital?"], "context": [context],
             "answers": [{"text": ["New Delhi"], "answer_start": [start]}]}
    for max_length, stride in ((48, 16), (64, 24), (40, 12)):
        features = qa.train_features(tokenizer, batch, max_length=max_length, stride=stride)
        windows = tokenizer(batch["question"], batch["context"], truncation="only_second", max_length=max_length,
                            stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        holding = 0
        for i, (s, e) in enumerate(zip(features["start_positions"], features["end_positions"])):
            context_offsets = [o for o, seq in zip(windows["offset_mapping"][i], windows.sequence_ids(i)) if seq == 1]
            whole = context_offsets[0][0] <= start and context_offsets[-1][1] >= start + len("New Delhi")
            if whole:
                holding += 1
                assert tokenizer.decode(features["input_ids"][i][s:e + 1]) == "new delhi", (max_length, i)
            else:
                assert s == e == 0, (max_length, i)  # [CLS]: the answer is not (wholly) in this window
        assert holding >= 1 and len(features["input_ids"]) >= 3


def test_null_threshold_is_the_best_cut_on_held_out_questions():
    from finetune_kit.metrics.squad_v2.squad_v2 import f1

    examples = [{"id": i, "answers": {"text": gold}} for i, gold in
                [("a", ["Paris"]), ("b", ["Rome"]), ("c", []), ("d", []), ("e", ["Oslo"])]]
    # (best span, null score minus span score): answerable questions have low margins except "e".
    spans = {"a": ("Paris", -3.0), "b": ("Rome", -1.0), "c": ("Lyon", 0.5), "d": ("Bern", 2.0), "e": ("Oslo", 4.0)}
    threshold, best = qa.choose_null_threshold(examples, spans, f1)
    # Answering a and b, nulling c and d is 4 / 5; also answering e (threshold above 4) loses c and d: 3 / 5.
    assert -1.0 < threshold < 0.5 and best == pytest.approx(80.0)
    answers = qa.answers_at(spans, threshold)
    assert answers == {"a": "Paris", "b": "Rome", "c": "", "d": "", "e": ""}
    # All unanswerable: the threshold lies below every margin, so every answer is "".
    nothing = [{"id": i, "answers": {"text": []}} for i in spans]
    threshold, best = qa.choose_null_threshold(nothing, spans, f1)
    assert set(qa.answers_at(spans, threshold).values()) == {""} and best == 100.0
