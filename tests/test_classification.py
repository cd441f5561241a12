"""Text classification on a tiny BERT: learning, labels, imbalance handling, splits, freezing, metrics, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import run_recipe, write_config, write_jsonl
from finetune_kit.errors import DataError, UserError
from finetune_kit.tasks import classification as clf

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

POS = ["great", "lovely", "superb", "wonderful", "fine"]
NEG = ["awful", "boring", "dreadful", "poor", "dull"]


def sentiment_rows(n: int, minority_every: int = 2, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % minority_every == 0
        word = rng.choice(POS if positive else NEG)
        rows.append({"text": f"the film was {word} overall", "label": "pos" if positive else "neg"})
    return rows


def config(tmp_path, model_dir, rows, name="run", **extra) -> list[str]:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    cfg = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / name),
           "num_train_epochs": 12, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "max_length": 16,
           "logging_steps": 2, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / f"{name}.yaml", cfg)]


def losses(out) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


def test_learns_sentiment_and_saves_labels(tmp_path, tiny_bert_dir):
    metrics = run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(160),
                                                        eval_split_ratio=0.2, test_split_ratio=0.2))
    out = tmp_path / "run"
    assert losses(out)[-1] < 0.5 * losses(out)[0]
    assert metrics["test_accuracy"] >= 0.9 and set(metrics["per_class"]) >= {"neg", "pos", "confusion_matrix"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}
    assert json.loads((out / "eval_results.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    # A transformers Trainer has no trl fused LM head: no decision about one is printed or recorded.
    assert "lm_head_tile_columns" not in json.loads((out / "run_info.json").read_text())["decisions"]

    from finetune_kit.models import load_for_inference

    model, tokenizer = load_for_inference(str(out))
    with torch.no_grad():
        logits = model(**tokenizer(["the film was superb overall", "the film was dull overall"],
                                   return_tensors="pt", padding=True)).logits
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == ["pos", "neg"]


def test_lora_keeps_the_head_trainable_and_loads_back(tmp_path, tiny_bert_dir):
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(96), use_peft=True,
                                             lora_r=4, lora_target_modules=["query", "value"], learning_rate=2e-2,
                                             test_split_ratio=0.25))
    out = tmp_path / "run"
    from safetensors.torch import load_file

    adapter = load_file(out / "adapter_model.safetensors")
    assert any("classifier" in k for k in adapter) and any("lora_A" in k for k in adapter)
    assert losses(out)[-1] < losses(out)[0]
    from finetune_kit.models import load_for_inference

    model, _ = load_for_inference(str(out))
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_sentence_pairs(tmp_path, tiny_bert_dir):
    rng = random.Random(1)
    rows = []
    for _ in range(96):
        a, b = rng.choice(POS + NEG), rng.choice(POS + NEG)
        rows.append({"a": f"it was {a}", "b": f"it was {b}", "y": "same" if (a in POS) == (b in POS) else "diff"})
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, rows, text_column="a", text_pair_column="b",
                                             label_column="y"))
    assert losses(tmp_path / "run")[-1] < losses(tmp_path / "run")[0]


def test_multi_label_and_regression(tmp_path, tiny_bert_dir):
    rows = [{"text": f"{w} and {v}", "label": sorted({"pos" if w in POS else "neg", "pos" if v in POS else "neg"})}
            for w in POS + NEG for v in POS + NEG]
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, rows, name="multi"))
    saved = json.loads((tmp_path / "multi" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification" and losses(tmp_path / "multi")[-1] < \
        losses(tmp_path / "multi")[0]
    rows = [{"text": f"{w} and {v}", "label": (w in POS) + (v in POS) + 0.5} for w in POS + NEG for v in POS + NEG]
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, rows, name="reg"))
    assert json.loads((tmp_path / "reg" / "config.json").read_text())["problem_type"] == "regression"
    assert losses(tmp_path / "reg")[-1] < losses(tmp_path / "reg")[0]


# --- pieces on their own ----------------------------------------------------------------------------------------


def test_weighted_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    weights = clf.class_weights([0, 1, 1, 1], 2, "auto")
    assert weights.tolist() == pytest.approx([2.0, 2 / 3])  # 4 / (2 * 1), 4 / (2 * 3)
    loss = clf.weighted_loss(weights)({"logits": logits}, labels)
    nll = [-np.log(np.exp(2) / (np.exp(2) + 1)), -np.log(np.exp(1) / (np.exp(1) + 1)), np.log(2)]
    expected = (2.0 * nll[0] + 2 / 3 * nll[1] + 2 / 3 * nll[2]) / (2.0 + 2 / 3 + 2 / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert clf.class_weights([0, 1], 2, "1,5").tolist() == [1.0, 5.0]
    assert clf.class_weights([0, 1], 2, ["1", "5"]).tolist() == [1.0, 5.0]  # YAML: class_weights: [1, 5]
    assert clf.class_weights([0, 1, 1, 1], 2, ["auto"]).tolist() == pytest.approx([2.0, 2 / 3])
    with pytest.raises(DataError, match="3 values for 2 labels"):
        clf.class_weights([0, 1], 2, "1,2,3")


def test_stratified_split_keeps_class_ratios():
    labels = [0] * 900 + [1] * 100
    splits = clf.stratified_splits(Dataset.from_dict({"label": labels}), 0.1, 0.2, seed=0, stratify=True)
    assert len(splits["test"]) == 200 and len(splits["validation"]) == 100 and len(splits["train"]) == 700
    for part in splits.values():
        share = sum(part["label"]) / len(part)
        assert share == pytest.approx(0.1, abs=0.011)


def test_resampling_balances_the_classes():
    data = Dataset.from_dict({"label": [0] * 30 + [1] * 5})
    assert Counter(clf.resample(data, "oversample", 0)["label"]) == {0: 30, 1: 30}
    assert Counter(clf.resample(data, "undersample", 0)["label"]) == {0: 5, 1: 5}


def test_freezing_leaves_frozen_weights_bit_identical(tmp_path, tiny_bert_dir):
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(64), freeze_layers=1,
                                             num_train_epochs=1))
    from safetensors.torch import load_file

    before = load_file(tiny_bert_dir / "model.safetensors")
    after = load_file(tmp_path / "run" / "model.safetensors")
    key = lambda k: k.removeprefix("bert.")  # noqa: E731 - the classifier checkpoint nests the encoder
    frozen = [k for k in after if k.startswith(("bert.embeddings", "bert.encoder.layer.0."))]
    trained = [k for k in after if k.startswith("bert.encoder.layer.1.")]
    assert frozen and all(torch.equal(after[k], before[key(k)]) for k in frozen)
    assert any(not torch.equal(after[k], before[key(k)]) for k in trained)


def test_metric_modules_against_hand_computed_values():
    from finetune_kit.metrics import load_metric

    result = load_metric("classification").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    # class 0: p=1 r=1; class 1: p=1/2 r=1; class 2: p=1 r=1/2 -> macro f1 = (1 + 2/3 + 2/3) / 3
    assert result["accuracy"] == 0.75 and result["f1_macro"] == pytest.approx(7 / 9)
    assert result["precision_macro"] == pytest.approx(5 / 6) and result["f1_micro"] == 0.75
    reg = load_metric("regression").compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 2.0, 3.0])
    assert reg["spearman"] == pytest.approx(1.0) and reg["mse"] == pytest.approx(1 / 3)


# --- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, extra, message", [
    ([{"text": "ok", "label": "pos"}, {"text": "ok", "label": "maybe"}], {"labels": ["neg", "pos"]},
     r"line 2: field 'label': label 'maybe' is not in the label set \['neg', 'pos'\]"),
    ([{"text": "ok", "label": "pos"}, {"label": "neg"}], {}, r"line 2: missing field 'text'"),
    ([{"text": "ok", "label": "pos"}, {"text": "  ", "label": "neg"}], {}, r"line 2: field 'text' must be non-empty"),
    ([{"text": "ok", "label": "pos"}, {"text": "fine"}], {}, r"line 2: missing field 'label'"),
    # A list among single labels was a class named "['pos', 'neg']"; a mapping, a class named by its repr.
    ([{"text": "ok", "label": "pos"}, {"text": "ok", "label": ["pos", "neg"]}, {"text": "no", "label": "neg"}], {},
     r"line 2: field 'label' is a list, but other rows hold one label"),
    ([{"text": "ok", "label": {"pos": 1}}, {"text": "no", "label": "neg"}], {},
     r"line 1: field 'label' is not a label \(text or a number\)"),
    ([{"text": "ok", "label": ["pos"]}, {"text": "no", "label": ["neg", ["x"]]}], {},
     r"line 2: field 'label' is not a label \(text or a number\)"),
    ([{"text": "ok", "label": "pos"}, {"text": "no", "label": "neg"}], {"problem_type": "multi_label"},
     r"line 1: field 'label' must be a list of labels"),
])
def test_bad_rows_are_named(tmp_path, tiny_bert_dir, rows, extra, message):
    with pytest.raises(DataError, match=r"run\.jsonl " + message):
        run_recipe("text_classification", config(tmp_path, tiny_bert_dir, rows, **extra))
    assert not (tmp_path / "run").exists()


def test_head_of_another_size_is_a_clear_error(tmp_path, tiny_bert_dir):
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(32), name="two",
                                             num_train_epochs=1))
    three = [{"text": r["text"], "label": lab} for r, lab in zip(sentiment_rows(30), ["a", "b", "c"] * 10)]
    with pytest.raises(UserError, match="classification head of another size.*ignore_mismatched_sizes"):
        run_recipe("text_classification", config(tmp_path, tmp_path / "two", three, name="three"))
    run_recipe("text_classification", config(tmp_path, tmp_path / "two", three, name="three",
                                             ignore_mismatched_sizes=True, num_train_epochs=1))
    assert json.loads((tmp_path / "three" / "config.json").read_text())["id2label"]["2"] == "c"


def test_predict_from_the_command_line_and_a_file(tmp_path, tiny_bert_dir, capsys):
    from finetune_kit.cli import main

    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(96)))
    capsys.readouterr()
    main(["predict", "--model", str(tmp_path / "run"), "--text", "the film was lovely overall",
          "--text", "the film was awful overall"])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["label"] for r in results] == ["pos", "neg"] and all(0.5 < r["score"] <= 1 for r in results)
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "the film was superb overall"}, {"text": "boring"}])
    main(["predict", "--model", str(tmp_path / "run"), "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(tmp_path / "run")])
    assert exit_info.value.code == 2


def test_best_checkpoint_is_kept_by_the_chosen_metric(tmp_path, tiny_bert_dir):
    run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(160), eval_split_ratio=0.25,
                                             num_train_epochs=8, eval_strategy="epoch", save_strategy="epoch",
                                             load_best_model_at_end=True, metric_for_best_model="f1_macro",
                                             save_total_limit=1))
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    evals = [(e["step"], e["eval_f1_macro"]) for e in history if "eval_f1_macro" in e]
    best_step, best = max(evals, key=lambda x: x[1])  # the first of equal bests, as transformers keeps it
    best_step = min(step for step, value in evals if value == best)
    assert len(evals) == 8 and len({v for _, v in evals}) > 1
    state = json.loads((tmp_path / "run" / f"checkpoint-{best_step}" / "trainer_state.json").read_text())
    assert state["best_metric"] == best and state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    # Checkpoints are staged and renamed (finetune_kit.checkpoints): the best one is recorded where it lives.
    assert Path(state["best_model_checkpoint"]).resolve() == (tmp_path / "run" / f"checkpoint-{best_step}").resolve()
    kept = {p.name for p in (tmp_path / "run").iterdir() if p.name.startswith((".", "checkpoint"))}
    assert kept == {f"checkpoint-{best_step}"}  # save_total_limit 1 + load_best_model_at_end: the best one only


def test_class_weights_from_yaml_train(tmp_path, tiny_bert_dir):
    from finetune_kit.config import parse_config
    from finetune_kit.config_tasks import TextClassificationConfig

    argv = config(tmp_path, tiny_bert_dir, sentiment_rows(64, minority_every=4), class_weights=[1, 3],
                  num_train_epochs=1)
    assert parse_config(TextClassificationConfig, argv).task.class_weights == ["1", "3"]
    metrics = run_recipe("text_classification", argv)
    assert metrics["train_loss"] > 0
    argv = config(tmp_path, tiny_bert_dir, sentiment_rows(64, minority_every=4), name="auto", class_weights="auto")
    assert parse_config(TextClassificationConfig, argv).task.class_weights == ["auto"]


def test_separate_validation_and_test_files_are_scored_as_given(tmp_path, tiny_bert_dir):
    """A user holding a dev and a test file (GLUE-style) scores on exactly those rows; a label only they have is a
    named error, before the model loads."""
    dev = write_jsonl(tmp_path / "dev.jsonl", sentiment_rows(24, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_rows(30, seed=2))
    metrics = run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(96), num_train_epochs=6,
                                                        eval_dataset_name=str(dev), test_dataset_name=str(test),
                                                        eval_strategy="epoch"))
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert any("eval_accuracy" in e for e in history)  # validated on the dev file while training
    assert metrics["test_accuracy"] >= 0.9 and sum(metrics["per_class"]["confusion_matrix"][0]) + \
        sum(metrics["per_class"]["confusion_matrix"][1]) == 30  # the whole test file, nothing else
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "so so", "label": "meh"}])
    with pytest.raises(DataError, match=r"odd\.jsonl line 1: .*'meh'"):
        run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(16), name="odd-run",
                                                 test_dataset_name=str(odd)))


def test_max_train_samples_caps_training_rows_after_the_split(tmp_path, tiny_bert_dir):
    """The cap means one thing in every recipe (as in SFT): it counts training rows after the validation / test
    split, so the held-out rows do not change with it."""
    from transformers import TrainerCallback

    from finetune_kit.trainer_setup import driver_callbacks

    seen = {}

    class Sizes(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            seen["train"] = len(train_dataloader.dataset)

    tests = {}
    for cap in (None, 8):
        extra = {"max_train_samples": cap} if cap else {}
        with driver_callbacks(Sizes()):
            metrics = run_recipe("text_classification", config(tmp_path, tiny_bert_dir, sentiment_rows(40),
                                                                name=f"cap{cap}", max_steps=1, test_split_ratio=0.25,
                                                                **extra))
        tests[cap] = (seen["train"], metrics["per_class"]["confusion_matrix"])
    assert tests[None][0] == 30 and tests[8][0] == 8
    assert sum(map(sum, tests[None][1])) == sum(map(sum, tests[8][1])) == 10
