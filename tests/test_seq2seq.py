"""Seq2seq on a tiny T5 built from a config (with a byte-level BPE trained on the rows, as the dates demo does):
learning, label padding, generation-based metrics, LoRA, predict / generate / inspect on the run, bad input."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import run_recipe, write_config, write_jsonl
from finetune_kit import cli
from finetune_kit import demo_seq2seq as demo
from finetune_kit.tasks import seq2seq as s2s

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

TINY = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2}


@pytest.fixture(scope="module")
def dates(tmp_path_factory) -> Path:
    """train / test rows of the dates task, and a tiny random T5 with a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("dates")
    split = demo.split_dates(seed=1)
    rng = random.Random(1)
    rows = {"train": demo.rows_for(split["train"][:96], rng), "test": demo.rows_for(split["test"][:12], rng)}
    for name, part in rows.items():
        write_jsonl(root / f"{name}.jsonl", part)
    tokenizer = demo.train_tokenizer([t for r in rows["train"] for t in (r["source"], r["target"])], vocab_size=300)
    demo.t5_from_config(tokenizer, root / "t5", seed=0, **TINY)
    return root


def config(tmp_path, dates, name="run", **extra) -> list[str]:
    cfg = {"model_name_or_path": str(dates / "t5"), "dataset_name": str(dates / "train.jsonl"),
           "test_dataset_name": str(dates / "test.jsonl"), "output_dir": str(tmp_path / name),
           "max_source_length": 24, "max_target_length": 12, "max_steps": 24, "per_device_train_batch_size": 16,
           "per_device_eval_batch_size": 16, "learning_rate": 1e-2, "logging_steps": 3, "save_strategy": "no",
           "report_to": "none", "disable_tqdm": True, "seed": 0, "report": False}
    cfg.update(extra)
    return ["--config", write_config(tmp_path / f"{name}.yaml", cfg)]


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dates) -> tuple[Path, dict]:
    """A full fine-tune of the tiny T5, evaluated on the test file by generation: (run folder, metrics)."""
    tmp = tmp_path_factory.mktemp("seq2seq-run")
    return tmp / "run", run_recipe("seq2seq", config(tmp, dates))


def test_trains_with_falling_loss_and_evaluates_by_generation(trained):
    out, metrics = trained
    assert losses(out)[-1] < 0.7 * losses(out)[0]
    for key in ("test_exact_match", "test_bleu", "test_chrf", "test_rouge1", "test_rougeL", "test_gen_len"):
        assert key in metrics, sorted(metrics)
    assert 0 <= metrics["test_exact_match"] <= 1 and 0 <= metrics["test_chrf"] <= 100
    info = json.loads((out / "run_info.json").read_text())
    assert info["decisions"]["generation_max_length"]["value"] == 13  # max_target_length + the decoder start


def test_the_run_predicts_generates_and_is_inspected(trained, dates, tmp_path, capsys):
    out, _ = trained
    capsys.readouterr()
    cli.main(["predict", "--model", str(out), "--text", "5 March 2021", "--text", "2021/03/05"])
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in results] == ["5 March 2021", "2021/03/05"]
    assert all(isinstance(r["output"], str) for r in results)
    # generate reads each prompt as a source and, greedy, writes what predict gives
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "5 March 2021"}])
    cli.main(["generate", "--model", str(out), "--input", str(prompts), "--output", str(tmp_path / "gen.jsonl"),
              "--temperature", "0", "--max_new_tokens", "12"])
    assert json.loads((tmp_path / "gen.jsonl").read_text())["answer"] == results[0]["output"]

    from finetune_kit.inspect_model import describe

    assert describe(str(dates / "t5"))["recipes"] == ["seq2seq"]
    assert describe(str(out))["training"]["recipe"] == "seq2seq"


def test_lora_trains_adapters_and_loads_back(tmp_path, dates):
    run_recipe("seq2seq", config(tmp_path, dates, use_peft=True, lora_r=8, lora_alpha=16, learning_rate=2e-2,
                                 max_steps=12, predict_with_generate=False, test_dataset_name=None))
    out = tmp_path / "run"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM"
    assert losses(out)[-1] < losses(out)[0]
    from finetune_kit.models import load_for_inference

    model, tokenizer = load_for_inference(str(out), merge=True)
    assert model.config.is_encoder_decoder
    assert len(s2s.generate_texts(model, tokenizer, ["5 March 2021"], max_new_tokens=4)) == 1


def test_labels_are_padded_with_minus_100_and_the_loss_counts_real_tokens_only(dates):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

    tokenizer = AutoTokenizer.from_pretrained(dates / "t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(dates / "t5").eval()
    task = type("Task", (), {"source_prefix": None, "max_source_length": 32, "max_target_length": 16})
    batch = s2s.encoder(tokenizer, task)({"source": ["5 March 2021", "the 21st of September 1999"],
                                          "target": ["2021-03-05", "1999"]})
    collated = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)(
        [{k: batch[k][i] for k in batch} for i in range(2)])
    short = len(batch["labels"][1])
    assert short < len(batch["labels"][0])
    assert (collated["labels"][1, short:] == -100).all() and (collated["labels"][1, :short] >= 0).all()
    with torch.no_grad():
        output = model(**collated)
    real = collated["labels"] != -100
    by_hand = torch.nn.functional.cross_entropy(output.logits[real], collated["labels"][real])
    assert torch.allclose(output.loss, by_hand, atol=1e-5)
    # the decoder reads the labels shifted right behind the start token, the pad id where labels are -100
    assert collated["decoder_input_ids"][0, 0] == model.config.decoder_start_token_id


def test_translation_pairs_and_column_mapping_are_read(tmp_path):
    from types import SimpleNamespace

    task = SimpleNamespace(source_lang="en", target_lang="fr", source_column="source", target_column="target")
    assert s2s.pair_of({"translation": {"en": "a cat", "fr": "un chat"}}, task, "t line 1") == \
        {"source": "a cat", "target": "un chat"}
    with pytest.raises(s2s.DataError, match=r"t line 2: missing field 'translation.fr'"):
        s2s.pair_of({"translation": {"en": "a cat"}}, task, "t line 2")
    data = write_jsonl(tmp_path / "news.jsonl", [{"document": "long text", "summary": "short"}])
    cfg = SimpleNamespace(data=SimpleNamespace(dataset_name=str(data), eval_dataset_name=None, dataset_config=None,
                                               dataset_train_split="train", column_mapping={"source": "document",
                                                                                            "target": "summary"},
                                               skip_invalid_rows=False),
                          task=SimpleNamespace(source_lang=None, target_lang=None, source_column="source",
                                               target_column="target", test_dataset_name=None))
    assert s2s.pair_rows(cfg)["train"][0][1] == {"source": "long text", "target": "short"}


def test_generation_metrics_score_texts():
    scores = s2s.score_texts(["2021-03-05", "1999-09-21"], ["2021-03-05", "1999-09-12"])
    assert scores["exact_match"] == 0.5 and 0 < scores["chrf"] < 100 and 0 < scores["rouge1"] <= 1
    assert s2s.score_texts(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100)


def _fails(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("case", ["missing target", "missing source column (csv)", "empty target"])
def test_a_bad_row_is_named_before_training(case, tmp_path, dates, capsys):
    rows = [{"source": "5 March 2021", "target": "2021-03-05"}] * 3
    if case == "missing target":
        data = write_jsonl(tmp_path / "bad.jsonl", [*rows, {"source": "6 March 2021"}])
        expected = "bad.jsonl line 4: missing field 'target'"
    elif case == "empty target":
        data = write_jsonl(tmp_path / "bad.jsonl", [*rows, {"source": "6 March 2021", "target": " "}])
        expected = "bad.jsonl line 4: field 'target' (the target) must be non-empty text"
    else:
        data = tmp_path / "bad.csv"
        with data.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerows([["text", "target"], ["5 March 2021", "2021-03-05"]])
        expected = "bad.csv line 2: missing field 'source'"
    argv = config(tmp_path, dates, dataset_name=str(data), test_dataset_name=None)
    assert expected in _fails(["train", "seq2seq", *argv], capsys)
    assert not (tmp_path / "run").exists()


def test_a_target_over_the_limit_is_refused_unless_accepted(tmp_path, dates, capsys):
    rows = [{"source": "5 March 2021", "target": "2021-03-05"}] * 4
    data = write_jsonl(tmp_path / "long.jsonl", [*rows, {"source": "a long one", "target": "2021-03-05 " * 6}])
    argv = config(tmp_path, dates, dataset_name=str(data), test_dataset_name=None)
    argv = ["--recipe", "seq2seq", *argv]  # the config file does not name its recipe
    err = _fails(["check", *argv], capsys)  # check refuses what train refuses
    assert "long.jsonl line 5: the target is" in err and "over max_target_length=12" in err
    assert "truncate_targets" in err
    assert "long.jsonl line 5" in _fails(["train", "seq2seq", *argv[2:]], capsys)

    with pytest.raises(SystemExit) as accepted:
        cli.main(["check", *argv, "--truncate_targets", "true"])
    assert accepted.value.code == 0
    assert "1 of 5 targets are cut to max_target_length=12" in capsys.readouterr().out
    with pytest.raises(SystemExit) as skipped:
        cli.main(["check", *argv, "--skip_invalid_rows", "true"])
    assert skipped.value.code == 0 and "dropped 1 of 5 rows" in capsys.readouterr().out


def test_languages_go_together(tmp_path, dates, capsys):
    err = _fails(["train", "seq2seq", *config(tmp_path, dates, source_lang="en")], capsys)
    assert "source_lang and target_lang go together" in err


def test_missing_metric_packages_are_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from finetune_kit.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rouge_score" else real(name, *a))
    with pytest.raises(UserError, match=r"need rouge_score: pip install 'finetune-kit\[seq2seq\]'"):
        s2s.require_metric_packages()
