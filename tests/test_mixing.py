"""Dataset mixtures (`datasets:` + `mix_strategy`) and streaming: the ratio is the ratio, the order is a function of
the seed, each source keeps its own format, a stream trains and resumes exactly. Bad mixtures: test_bad_input_suite."""

from __future__ import annotations

import json

import pytest
from conftest import chat_rows, run_recipe, write_config, write_jsonl
from transformers import TrainerCallback

from finetune_kit.config_plain import DataArguments
from finetune_kit.data import load_sft_datasets, normalise_pair
from finetune_kit.trainer_setup import driver_callbacks


def _tagged(tmp_path, name: str, n: int) -> str:
    """n alpaca rows whose instruction names their source."""
    return str(write_jsonl(tmp_path / f"{name}.jsonl", [{"instruction": f"{name} {i}", "output": f"ok {i}"}
                                                        for i in range(n)]))


def _sources(rows: list[dict]) -> list[str]:
    return [r["messages"][0]["content"].split()[0] for r in rows]


def test_interleaving_by_ratio_yields_the_ratio_in_a_seeded_order(tmp_path):
    a, b = _tagged(tmp_path, "a", 600), _tagged(tmp_path, "b", 600)

    def mixed(seed=0, **shares):
        data = DataArguments(datasets=[{"dataset_name": a, **shares["a"]}, {"dataset_name": b, **shares["b"]}],
                             mix_strategy="interleave_under")
        return _sources(load_sft_datasets(data, seed=seed)[0])

    by_ratio = mixed(a={"ratio": 0.75}, b={"ratio": 0.25})
    first = by_ratio[:400]
    # Binomial(400, 0.75): mean 300, sd 8.7; 4 sd either side.
    assert abs(first.count("a") - 300) < 35, first.count("a")
    assert len(by_ratio) < 1000 and by_ratio.count("a") == 600  # under: ends when the first source (a) runs out
    assert mixed(a={"weight": 3}, b={"weight": 1}) == by_ratio  # weights 3:1 are the ratio 0.75 / 0.25
    assert mixed(a={"ratio": 0.75}, b={"ratio": 0.25}) == by_ratio  # a function of the seed: the same on a rerun
    assert mixed(seed=1, a={"ratio": 0.75}, b={"ratio": 0.25}) != by_ratio
    over = DataArguments(datasets=[{"dataset_name": a, "ratio": 0.75}, {"dataset_name": b, "ratio": 0.25}],
                         mix_strategy="interleave_over")
    assert _sources(load_sft_datasets(over)[0]).count("b") >= 600  # over: until the last source has given every row


def test_concat_keeps_every_row_once_with_each_sources_own_format(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_rows(6))
    renamed = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    data = DataArguments(datasets=[
        {"dataset_name": str(chat), "max_samples": 4},
        {"dataset_name": str(renamed), "dataset_format": "alpaca",
         "column_mapping": {"instruction": "question", "output": "answer"}}])
    train, _ = load_sft_datasets(data)
    users = [r["messages"][0]["content"] for r in train]
    assert users == ["Say apple", "Say river", "Say stone", "Say cloud", "q0", "q1", "q2", "q3", "q4"]
    assert train[4]["messages"][1] == {"role": "assistant", "content": "a0"}
    # Preference recipes mix pairs the same way.
    pairs = [write_jsonl(tmp_path / f"p{k}.jsonl", [{"prompt": f"{k}{i}", "chosen": "y", "rejected": "n"}
                                                    for i in range(3)]) for k in "xy"]
    mixed, _ = load_sft_datasets(DataArguments(datasets=[{"dataset_name": str(p)} for p in pairs]),
                                 normaliser=normalise_pair)
    assert [r["prompt"] for r in mixed] == ["x0", "x1", "x2", "y0", "y1", "y2"]


class _StopAt(TrainerCallback):
    """Ends a run at a step, as a killed process would (a checkpoint saved before it stays)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _losses(out) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


def _stopped_then_resumed(tmp_path, cfg: dict) -> tuple[dict, dict]:
    run_recipe("sft", ["--config", write_config(tmp_path / "full.yaml", {**cfg, "output_dir": str(tmp_path / "full")})])
    part = write_config(tmp_path / "part.yaml", {**cfg, "output_dir": str(tmp_path / "part")})
    with driver_callbacks(_StopAt(5)), pytest.raises(KeyboardInterrupt):
        run_recipe("sft", ["--config", part])
    assert (tmp_path / "part" / "checkpoint-4").is_dir() and not (tmp_path / "part" / "run_info.json").exists()
    run_recipe("sft", ["--config", part, "--resume_from_checkpoint", "latest"])
    return _losses(tmp_path / "full"), _losses(tmp_path / "part")


def test_a_streamed_mixture_resumes_in_the_same_order(tmp_path, tiny_model_dir):
    """The harder case: a stream is not indexed, so the resumed trainer reads and skips what it had consumed. (An
    in-memory mixture is a Dataset fixed by the seed, which the Trainer's own resume handles: test_resume.py.)"""
    words = write_jsonl(tmp_path / "words.jsonl", chat_rows(48))
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [
        {"messages": [{"role": "user", "content": f"Count to {n}"},
                      {"role": "assistant", "content": " ".join(map(str, range(1, n + 1)))}]} for n in range(2, 50)])
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": None, "mix_strategy": "interleave_under",
           "datasets": [{"dataset_name": str(words), "weight": 2}, {"dataset_name": str(numbers), "weight": 1}],
           "streaming": True, "use_peft": True, "lora_r": 8, "learning_rate": 1e-2,
           "per_device_train_batch_size": 4, "max_steps": 8, "save_steps": 4, "logging_steps": 1, "max_length": 96,
           "report_to": "none", "disable_tqdm": True, "seed": 0}
    full, resumed = _stopped_then_resumed(tmp_path, cfg)
    assert full[8] < full[1]  # it learns
    assert [resumed[s] for s in range(5, 9)] == [full[s] for s in range(5, 9)]  # fp32 on CPU: the same batches


def test_streaming_pretraining_on_text_files_trains(tmp_path, tiny_model_dir):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"the {w} is near the {w} and the {w} is far\n" for w in ["river", "stone"] * 40))
    out = tmp_path / "out"
    metrics = run_recipe("pretrain", ["--config", write_config(tmp_path / "p.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(text), "streaming": True, "max_steps": 6,
        "use_peft": True, "lora_r": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 2, "max_length": 32,
        "logging_steps": 1, "report_to": "none", "output_dir": str(out)})])
    losses = _losses(out)
    assert metrics["train_runtime"] > 0 and len(losses) == 6 and losses[6] < losses[1]
