"""Token classification: CoNLL reading, sub-word label alignment, seqeval metrics, learning, bad rows."""

from __future__ import annotations

import json
import random

import pytest

from conftest import SHARED, run_recipe, write_config, write_jsonl
from finetune_kit.errors import DataError
from finetune_kit.tasks import tokens as tok

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


def test_conll_reader_detects_the_tag_column(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("-DOCSTART- -X- O\n\nEU B-ORG 0\nrejects O 0\n\nPeter B-PER 0\nBlackburn I-PER 0\n")
    rows = tok.read_conll(path)
    assert rows == [("d.txt line 3", {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}),
                    ("d.txt line 6", {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]})]


def test_real_conll_file_reads():
    rows = tok.read_conll(SHARED / "conll2003" / "valid.txt")
    assert len(rows) == 3250 and all(len(r["tokens"]) == len(r["tags"]) for _, r in rows)


def test_label_alignment_on_a_worked_example(tmp_path):
    from transformers import AutoTokenizer

    from finetune_kit.models import embedded_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_path("minilm-l6"))
    words, tags = ["Tokenizers", "work"], ["B-MISC", "O"]
    names = ["O", "B-MISC", "I-MISC"]
    encoded = tokenizer(words, is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "token", "##izer", "##s", "work", "[SEP]"]
    ids = [names.index(t) for t in tags]
    assert tok.align_labels(encoded.word_ids(), ids, False) == [-100, 1, -100, -100, 0, -100]
    assert tok.align_labels(encoded.word_ids(), ids, True, {1: 2}) == [-100, 1, 2, 2, 0, -100]


def test_seqeval_module_against_hand_computed_values():
    from finetune_kit.metrics import load_metric

    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    preds = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]
    result = load_metric("seqeval_f1").compute(predictions=preds, references=refs)
    # 3 gold entities, 2 predicted, both correct: precision 1, recall 2/3, f1 0.8
    assert result["precision"] == 1.0 and result["recall"] == pytest.approx(2 / 3) and result["f1"] == pytest.approx(0.8)
    assert result["LOC_f1"] == 0.0 and result["PER_f1"] == 1.0


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    people, places = ["Anna", "Boris", "Chen", "Dara"], ["Paris", "Oslo", "Lima", "Cairo"]
    rows = []
    for _ in range(n):
        person, place = rng.choice(people), rng.choice(places)
        rows.append({"tokens": [person, "lives", "in", place], "tags": ["B-PER", "O", "O", "B-LOC"]})
    return rows


def test_learns_tags_on_a_tiny_bert(tmp_path, tiny_bert_dir):
    data = write_jsonl(tmp_path / "ner.jsonl", ner_rows(96))
    test = write_jsonl(tmp_path / "test.jsonl", ner_rows(24, seed=1))  # a held-out test file, scored at the end
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "eval_split_ratio": 0.25,
           "output_dir": str(tmp_path / "run"), "num_train_epochs": 10, "per_device_train_batch_size": 16,
           "learning_rate": 3e-3, "logging_steps": 2, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0, "test_dataset_name": str(test)}
    metrics = run_recipe("token_classification", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    history = [e["loss"] for e in json.loads((tmp_path / "run" / "log_history.json").read_text()) if "loss" in e]
    assert history[-1] < 0.3 * history[0] and metrics["eval_f1"] >= 0.9 and metrics["test_f1"] >= 0.9
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(saved["id2label"].values()) == {"O", "B-PER", "B-LOC"}


def test_mismatched_token_and_tag_counts(tmp_path, tiny_bert_dir):
    rows = ner_rows(2) + [{"tokens": ["a", "b"], "tags": ["O"]}]
    data = write_jsonl(tmp_path / "ner.jsonl", rows)
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "o")}
    with pytest.raises(DataError, match=r"ner\.jsonl line 3: 2 tokens but 1 tags"):
        run_recipe("token_classification", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert not (tmp_path / "o").exists()


def test_predict_tags_entities(tmp_path, tiny_bert_dir, capsys):
    from finetune_kit.cli import main

    data = write_jsonl(tmp_path / "ner.jsonl", ner_rows(96))
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
           "num_train_epochs": 10, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "save_strategy": "no",
           "report_to": "none", "disable_tqdm": True, "seed": 0}
    run_recipe("token_classification", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    capsys.readouterr()
    main(["predict", "--model", str(tmp_path / "run"), "--text", "Chen lives in Oslo"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(e["entity"], e["word"]) for e in result["entities"]] == [("PER", "chen"), ("LOC", "oslo")]
