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
    from finetune_kit.cli import main

    capsys.readouterr()
    context = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
    main(["predict", "--model", str(tmp_path / "run"), "--question", "Who gave their name to Normandy?",
          "--context", context])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["answer"] == "" or result["answer"] in context  # an extracted span, never invented text
