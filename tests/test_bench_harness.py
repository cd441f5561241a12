"""The benchmark harness itself (not a benchmark): both arms of each task run on a tiny model, train the same
examples, and the JSON holds every field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(tmp_path, task: str, model: Path, data: Path, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks", task, "--model", str(model), "--data", str(data),
                          "--results", str(tmp_path / "results"), *extra], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "results" / f"bench_{task}.json").read_text())


def _check_arms(result: dict, baseline: str, steps: int) -> None:
    assert set(result["arms"]) == {baseline, "ours"} and result["steps"] == steps
    for arm in result["arms"].values():
        assert len(arm["losses"]) == steps and arm["tokens_per_second"] > 0 and arm["peak_memory_mb"]["rss"] > 100
        # the training-only peak (reset when training starts) is not above the whole process's peak (the kernel's
        # VmHWM includes the current RSS, getrusage's figure can lag it by a page or two)
        assert 0 < arm["peak_memory_mb"]["rss_training"] <= arm["peak_memory_mb"]["rss"] * 1.01
    ratios = result[f"ratios_ours_over_{baseline}"]
    assert set(ratios) >= {"tokens_per_second", "peak_memory", "mean_train_loss", "trained_tokens"}
    # One epoch over the same subset: both arms train exactly the same (non-padding) tokens.
    assert ratios["trained_tokens"] == 1.0
    assert result["command"].startswith(f"python -m benchmarks {result['settings']['task']}")
    assert result["versions"]["transformers"] and result["machine"]["cores"]


def test_sft_arms(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"Say the number {i}.", "input": "" if i % 2 else "digits please",
             "output": f"The number is {i}. " * (1 + i % 4)} for i in range(24)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    result = _bench(tmp_path, "sft", tiny_model_dir, data, "--examples", "12", "--eval_examples", "4", "--batch", "2",
                    "--accumulation", "2", "--max_length", "64")
    _check_arms(result, "trl-default", 3)
    assert all(arm["heldout_loss"] > 0 for arm in result["arms"].values())


def test_dpo_arms(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"Pick a number near {i}.", "chosen": f"{i + 1}", "rejected": "I will not."}
            for i in range(12)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(rows))
    result = _bench(tmp_path, "dpo", tiny_model_dir, data, "--examples", "8", "--eval_examples", "4", "--batch", "2",
                    "--accumulation", "2", "--max_length", "64")
    _check_arms(result, "trl-default", 2)
    assert all(arm["heldout_loss"] > 0 and 0 <= arm["heldout_accuracy"] <= 1 for arm in result["arms"].values())
    assert result["ratios_ours_over_trl-default"]["heldout_loss"] > 0


def test_preference_scores_of_the_reference_itself(tmp_path, tiny_model_dir):
    """A policy equal to the reference has every margin 0: DPO loss log 2, no pair won; a pair whose prompt fills
    max_length has no reply to score and is left out (not a NaN)."""
    import math
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from benchmarks.arms import preference_scores

    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"prompt": f"Pick {i}.", "chosen": f"{i}", "rejected": "No."} for i in range(3)]
                               + [{"prompt": "word " * 100, "chosen": "yes", "rejected": "no"}]))
    opts = SimpleNamespace(model=str(tiny_model_dir), eval_file=data, max_length=64)
    scores = preference_scores(AutoModelForCausalLM.from_pretrained(tiny_model_dir), opts)
    assert scores["heldout_accuracy"] == 0 and math.isclose(scores["heldout_loss"], math.log(2), rel_tol=1e-6)
    assert scores["heldout_pairs"] == 3


def test_text_classification_arms(tmp_path, tiny_bert_dir):
    data = tmp_path / "sst.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{'good fun film' if i % 2 else 'dull flat mess'} number {i}\t{i % 2}\n"
                                              for i in range(40)))
    result = _bench(tmp_path, "text_classification", tiny_bert_dir, data, "--examples", "32", "--eval_examples", "8",
                    "--batch", "8", "--accumulation", "1", "--max_length", "32")
    _check_arms(result, "transformers-default", 4)
    assert all(0 <= arm["heldout_accuracy"] <= 1 for arm in result["arms"].values())


def test_too_few_rows_is_a_clear_error(tmp_path, tiny_model_dir):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "a", "output": "b"}] * 3))
    out = subprocess.run([sys.executable, "-m", "benchmarks", "sft", "--model", str(tiny_model_dir), "--data",
                          str(data), "--examples", "8"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "has 3 rows" in out.stderr


@pytest.mark.parametrize("task", ["sft", "dpo", "text_classification"])
def test_default_data_is_named_when_missing(tmp_path, task):
    out = subprocess.run([sys.executable, "-m", "benchmarks", task, "--data", str(tmp_path / "none.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "benchmark data not found" in out.stderr


def test_qlora_memory_arms(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"Say the number {i}.", "output": f"The number is {i}."} for i in range(4)]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    result = _bench(tmp_path, "qlora", tiny_model_dir, data, "--examples", "2", "--eval_examples", "0",
                    "--max_length", "96")
    assert set(result["arms"]) == {"lora-fp32", "lora-bf16", "qlora-4bit", "qlora-4bit-bf16"} and result["steps"] == 2
    for arm in ("lora-bf16", "qlora-4bit", "qlora-4bit-bf16"):
        assert result[f"ratios_{arm}_over_lora-fp32"]["peak_memory"] > 0
    for arm in ("qlora-4bit", "qlora-4bit-bf16"):  # QLoRA is also compared with the bf16 LoRA run
        assert result[f"ratios_{arm}_over_lora-bf16"]["peak_memory"] > 0


def test_sst2_sentence_split_trains_on_no_text_of_a_held_out_sentence():
    from benchmarks.sst2_sentence_split import sentence_split, sentences_of

    rows = [("a fine film", "1"), ("fine film", "1"), ("film", "1"), ("a dull plot", "0"), ("dull", "0"),
            ("a dull plot and a fine cast", "0"), ("a fine cast", "1"), ("the end", "1"), ("end", "1")]
    assert sorted(sentences_of([t for t, _ in rows])) == ["a dull plot and a fine cast", "a fine film", "the end"]
    for seed in range(5):
        train, test, info = sentence_split(rows, held=1, train=100, seed=seed)
        (sentence, _), = test
        held_text = {" ".join(sentence.split()[i:j]) for i in range(len(sentence.split()))
                     for j in range(i + 1, len(sentence.split()) + 1)}
        assert not held_text & {t for t, _ in train}
        assert info["phrases_inside_heldout_sentences_dropped"] == len(rows) - len(train)
