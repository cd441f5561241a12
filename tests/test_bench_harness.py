"""The benchmark harness itself (not a benchmark): both arms of each task run on a tiny model, train the same
examples, and the JSON holds every field."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(tmp_path, task: str, model: Path, data: Path, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks", task, "--model", str(model), "--data", str(data),
                          "--results", str(tmp_path / "results"), *extra], cwd=ROOT, capture_output=True, text=True, check=False,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads((tmp_path / "results" / f"bench_{task}.json").read_text())


def _check_arms(result: dict, baseline: str, steps: int, others: tuple[str, ...] = ()) -> None:
    assert set(result["arms"]) == {baseline, "ours", *others} and result["steps"] == steps
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
                    "--accumulation", "2", "--max_length", "64", "--arms", "ours,trl-tuned")
    _check_arms(result, "trl-default", 3, ("trl-tuned",))
    assert all(arm["heldout_loss"] > 0 for arm in result["arms"].values())
    # every arm is credited with the harness's own token count, which is what trl counts (non-padding inputs)
    work = result["workload"]
    assert work["rows"] == 12 and work["longest"] <= 64
    for arm in result["arms"].values():
        assert arm["trained_tokens"] == work["trained_tokens"] == arm["tool_reported_tokens"]
        assert 0 < arm["mfu_vs_float32_peak"] < 1 and arm["loadavg_start"] and arm["loadavg_end"]
    from benchmarks.arms import trl_tuned_settings  # the sweep's recorded best (results/trl_sweep.json)

    assert result["arms"]["trl-tuned"]["settings"] == {k: str(v) for k, v in trl_tuned_settings().items()}
    assert result["ratios_ours_over_trl-tuned"]["trained_tokens"] == 1.0
    from benchmarks.arms import OURS_MICRO_BATCH

    # ours trains OURS_MICRO_BATCH rows per micro-batch at the comparison's effective batch: the same optimizer steps
    assert result["arms"]["ours"]["settings"] == {"micro_batch": OURS_MICRO_BATCH}
    assert len(result["arms"]["ours"]["losses"]) == len(result["arms"]["trl-default"]["losses"]) == 3


def test_dpo_arms(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"Pick a number near {i}.", "chosen": f"{i + 1}", "rejected": "I will not."}
            for i in range(12)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(rows))
    result = _bench(tmp_path, "dpo", tiny_model_dir, data, "--examples", "8", "--eval_examples", "4", "--batch", "2",
                    "--accumulation", "2", "--max_length", "64", "--arms", "ours",  # peers: their own test
                    "--repeats", "2")
    _check_arms(result, "trl-default", 2)
    assert all(arm["heldout_loss"] > 0 and 0 <= arm["heldout_accuracy"] <= 1 for arm in result["arms"].values())
    assert result["ratios_ours_over_trl-default"]["heldout_loss"] > 0
    # two rounds: each arm reports its slower run (the median of two, rounded down) with both rounds beside it, and
    # ours over the baseline is paired within each round
    for arm in result["arms"].values():
        speeds = [one["tokens_per_second"] for one in arm["rounds"]]
        assert len(speeds) == 2 and arm["tokens_per_second"] == min(speeds)
    by_round = result["tokens_per_second_ours_over_trl-default_by_round"]
    ours, base = result["arms"]["ours"]["rounds"], result["arms"]["trl-default"]["rounds"]
    assert by_round == pytest.approx([o["tokens_per_second"] / b["tokens_per_second"] for o, b in zip(ours, base)])


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
                          str(data), "--examples", "8"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode != 0 and "has 3 rows" in out.stderr


@pytest.mark.parametrize("task", ["sft", "dpo", "text_classification"])
def test_default_data_is_named_when_missing(tmp_path, task):
    out = subprocess.run([sys.executable, "-m", "benchmarks", task, "--data", str(tmp_path / "none.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
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


def test_lora_training_flops_by_hand():
    """Rows of 2 and 3 tokens, 10 frozen parameters, 1 LoRA parameter, 1 layer of attention width 4:
    (4 x 10 + 6 x 1) x 5 tokens = 230, attention 12 x 1 x 4 x (2^2 + 3^2) = 624."""
    from benchmarks.flops import lora_training_flops, mfu

    assert lora_training_flops([2, 3], frozen_params=10, lora_params=1, layers=1, attention_width=4) == 854
    assert mfu(854, 2.0, {"dtype": "float32", "flops_per_second": 854.0})["mfu_vs_float32_peak"] == 0.5


def test_lora_shape_counts_the_tiny_llama(tiny_model_dir):
    """Hidden 32, MLP 64, 4 heads of 8 (2 KV heads), 2 layers: per layer q 32x32, k and v 32x16, o 32x32, gate /
    up 32x64, down 64x32 = 9,216 frozen; LoRA r16 on each: 16 x (in + out) = 8,192; the LM head is frozen only."""
    from transformers import AutoConfig

    from benchmarks.flops import lora_shape, matmul_peak

    vocab = AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    assert lora_shape(str(tiny_model_dir), 16) == {"frozen_params": 2 * 9216 + vocab * 32, "lora_params": 2 * 8192,
                                                   "layers": 2, "attention_width": 32}
    peak = matmul_peak("float32", size=128, seconds=0.05)
    assert peak["flops_per_second"] > 1e6 and peak["repeats"] >= 3


def test_trl_sweep_points_are_valid_sft_configs(tmp_path):
    import torch
    from trl import SFTConfig

    from transformers import AttentionInterface

    from benchmarks.arms import MODEL_LOAD_KEYS, TRL_TUNED, _trl_args
    from benchmarks.trl_sweep import GRID

    opts = argparse.Namespace(out=str(tmp_path), batch=2, accumulation=2, max_length=64, learning_rate=2e-4, seed=0)
    for settings in [*GRID.values(), TRL_TUNED]:
        # `dtype` and `attn_implementation` are the model's load arguments (arms._sft_trl passes them to
        # from_pretrained), `micro_batch` the rows per micro-batch (the effective batch kept), the rest SFTConfig fields
        assert isinstance(getattr(torch, settings.get("dtype", "float32")), torch.dtype)
        assert settings.get("attn_implementation", "eager") in ["eager", *AttentionInterface().valid_keys()]
        fields = {k: v for k, v in settings.items() if k not in MODEL_LOAD_KEYS}
        args = _trl_args(SFTConfig, opts, **{"bf16": False, **fields})
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 4, settings
        assert args.per_device_train_batch_size == settings.get("micro_batch", 2)


def test_trl_sweep_only_names_its_points():
    from benchmarks.trl_sweep import sweep

    with pytest.raises(SystemExit, match="no sweep point named no-such-point"):
        sweep(["--only", "defaults,no-such-point"])
    with pytest.raises(SystemExit, match="--only needs comma-separated sweep points"):
        sweep(["--only"])


STAND_IN_CLI = """#!{python}
# A stand-in for llamafactory-cli: checks the YAML and dataset registration the arm wrote, saves an untrained LoRA
# adapter (B = 0: the base model's own outputs) and a Trainer state, as the real tool does.
import json, sys
from pathlib import Path
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
assert sys.argv[1] == "train"
cfg = yaml.safe_load(Path(sys.argv[2]).read_text())
info = json.loads((Path(cfg["dataset_dir"]) / "dataset_info.json").read_text())[cfg["dataset"]]
rows = json.loads((Path(cfg["dataset_dir"]) / info["file_name"]).read_text())
if cfg["stage"] == "sft":
    assert rows and "instruction" in rows[0]
else:  # dpo: LLaMA-Factory's sharegpt ranking layout, trl's beta and loss
    assert cfg["stage"] == "dpo" and info["ranking"] and info["formatting"] == "sharegpt"
    assert {{"conversations", "chosen", "rejected"}} <= set(rows[0]) and rows[0]["conversations"][0]["from"] == "human"
    assert cfg["pref_beta"] == 0.1 and cfg["pref_loss"] == "sigmoid"
assert cfg["lora_target"] == "all" and cfg["num_train_epochs"] == 1
model = get_peft_model(AutoModelForCausalLM.from_pretrained(cfg["model_name_or_path"]),
                       LoraConfig(r=cfg["lora_rank"], lora_alpha=cfg["lora_alpha"], target_modules="all-linear"))
out = Path(cfg["output_dir"])
model.save_pretrained(out)
history = [{{"loss": 2.0, "step": 1}}, {{"loss": 1.0, "step": 2}}, {{"train_runtime": 4.0, "step": 2}}]
(out / "trainer_state.json").write_text(json.dumps({{"log_history": history}}))
"""


def _stand_in_llamafactory(tmp_path, monkeypatch) -> None:
    """A built LLaMA-Factory environment in a fresh cache whose CLI is STAND_IN_CLI."""
    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path / "cache"))
    env = tmp_path / "cache" / "bench-envs" / "llamafactory"
    (env / "bin").mkdir(parents=True)
    (env / "build.json").write_text(json.dumps({"ok": True, "versions": {"llamafactory": "stand-in"}}))
    cli = env / "bin" / "llamafactory-cli"
    cli.write_text(STAND_IN_CLI.format(python=sys.executable))
    cli.chmod(0o755)


def _four_and_two(tmp_path, rows, model_dir):
    """A peer arm's options: the first 4 rows to train on, the last 2 held out."""
    from types import SimpleNamespace

    (tmp_path / "train.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "eval.json").write_text(json.dumps(rows[4:6]))
    return SimpleNamespace(model=str(model_dir), train_file=tmp_path / "train.json", eval_file=tmp_path / "eval.json",
                           out=str(tmp_path / "run"), max_length=64, batch=2, accumulation=1, learning_rate=1e-4,
                           seed=1)


def test_peer_arm_plumbing_with_a_stand_in_tool(tmp_path, tiny_model_dir, monkeypatch):
    """The LLaMA-Factory arm end to end with a stand-in for its CLI (the real one needs its own environment and
    minutes; `python -m benchmarks sft` runs it): the adapter it saves is loaded onto the same base and scored by
    the shared held-out scorer, the tool's trainer state read, its process's peak RSS taken."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.arms import _alpaca, response_loss
    from benchmarks.peer_arms import sft_llamafactory

    _stand_in_llamafactory(tmp_path, monkeypatch)
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} {i}"} for i in range(6)]
    opts = _four_and_two(tmp_path, rows, tiny_model_dir)
    summary = sft_llamafactory(opts)
    assert "error" not in summary, summary.get("error")
    assert summary["train_runtime"] == 4.0 and summary["losses"] == [2.0, 1.0] and summary["mean_train_loss"] == 1.5
    assert summary["peak_memory_mb"]["rss"] > 100 and summary["settings"]["template"] == "smollm2"
    base = response_loss(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         AutoTokenizer.from_pretrained(tiny_model_dir), _alpaca(tmp_path / "eval.json"), 64)
    assert abs(summary["heldout_loss"] - base) < 1e-5  # an untrained adapter scores as the base model


@pytest.mark.parametrize("layout", ["sharegpt", "plain_text"])
def test_dpo_peer_arm_plumbing_with_a_stand_in_tool(tmp_path, tiny_model_dir, monkeypatch, layout):
    """The LLaMA-Factory DPO arm with the stand-in CLI: pairs written in its ranking layout, the saved adapter scored
    by the shared preference scorer (an untrained adapter: policy = reference, so the DPO loss is log 2 and no pair
    is won)."""
    import math

    from benchmarks.peer_arms import dpo_llamafactory

    _stand_in_llamafactory(tmp_path, monkeypatch)
    rows = [{"conversations": [{"from": "human", "value": f"Pick a number near {i}."}],
             "chosen": {"from": "gpt", "value": f"{i + 1}"}, "rejected": {"from": "gpt", "value": "No."}}
            if layout == "sharegpt" else {"prompt": f"Pick a number near {i}.", "chosen": f"{i + 1}", "rejected": "No."}
            for i in range(6)]
    opts = _four_and_two(tmp_path, rows, tiny_model_dir)
    summary = dpo_llamafactory(opts)
    assert "error" not in summary, summary.get("error")
    assert summary["settings"]["stage"] == "dpo" and summary["train_runtime"] == 4.0
    assert summary["heldout_pairs"] == 2 and summary["heldout_accuracy"] == 0
    assert summary["heldout_loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_a_peer_that_cannot_be_installed_reports_its_error(tmp_path, monkeypatch):
    """A failed environment build is recorded once, then every run of that arm returns the error, not a figure;
    the harness leaves such an arm out of the ratios."""
    from types import SimpleNamespace

    from benchmarks.harness import credit
    from benchmarks.peer_arms import sft_ms_swift

    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path))
    (tmp_path / "bench-envs" / "ms-swift").mkdir(parents=True)
    (tmp_path / "bench-envs" / "ms-swift" / "build.json").write_text(json.dumps(
        {"ok": False, "command": "pip install ms-swift==4.6.0", "error": "No matching distribution"}))
    summary = sft_ms_swift(SimpleNamespace(out=str(tmp_path / "run")))
    assert "No matching distribution" in summary["error"] and "pip install ms-swift" in summary["error"]
    assert credit(dict(summary), {"trained_tokens": 10}) == summary


def test_trl_tuned_runs_the_best_point_swept_on_its_kind_of_machine(tmp_path, monkeypatch):
    """What pays differs between CPUs whose bf16 is native (AMX) and the others: each kind has its sweep, and the
    arm runs the best point exactly as swept (fp32 unless it names bf16), or trl's defaults tuned where none."""
    import finetune_kit.hardware
    from benchmarks import arms

    monkeypatch.setattr(arms, "RESULTS", tmp_path)
    (tmp_path / "trl_sweep.json").write_text(json.dumps({"best": "a", "points": {"a": {"settings": {
        "padding_free": True}}}}))
    (tmp_path / "trl_sweep_native_bf16.json").write_text(json.dumps({"best": "b", "points": {"b": {"settings": {
        "bf16": True, "micro_batch": 1}}}}))
    monkeypatch.setattr(finetune_kit.hardware, "bf16_is_fast", lambda: False)
    assert arms.trl_tuned_settings() == {"bf16": False, "padding_free": True}
    monkeypatch.setattr(finetune_kit.hardware, "bf16_is_fast", lambda: True)
    assert arms.trl_tuned_settings() == {"bf16": True, "micro_batch": 1}
    (tmp_path / "trl_sweep_native_bf16.json").unlink()
    assert arms.trl_tuned_settings() == {"bf16": True, **arms.TRL_TUNED}
