"""The non-finite guard: a NaN gradient stops training before the update, with the last good checkpoint named."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import chat_rows, run_recipe, write_config, write_jsonl
from finetune_kit.guards import NonFiniteGuard, TrainingDiverged

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


class Args:
    output_dir = "/nonexistent"


class State:
    global_step = 6
    log_history: list = []


def test_nan_gradient_raises_with_the_step_and_parameter():
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[0.0, float("nan")], [0.0, 0.0]])
    model.bias.grad = torch.zeros(2)
    with pytest.raises(TrainingDiverged, match="non-finite gradient in weight at step 7"):
        NonFiniteGuard().on_pre_optimizer_step(Args(), State(), None, model=model)
    model.weight.grad = torch.zeros(2, 2)
    NonFiniteGuard().on_pre_optimizer_step(Args(), State(), None, model=model)  # finite: no complaint


def test_diverging_run_stops_and_keeps_its_last_checkpoint(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
        "use_peft": False, "learning_rate": 1e12, "max_grad_norm": 0.0, "per_device_train_batch_size": 8,
        "max_steps": 20, "save_steps": 1, "report_to": "none", "disable_tqdm": True, "seed": 0})
    with pytest.raises(TrainingDiverged, match=r"non-finite gradient .* Newest good checkpoint: .*checkpoint-\d+"):
        run_recipe("sft", ["--config", cfg])
    assert not (out / "run_info.json").exists()
    newest = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    state = json.loads((newest / "trainer_state.json").read_text())
    assert state["global_step"] < 20


def test_skip_mode_drops_the_bad_update_and_counts_it():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model.weight.grad = torch.tensor([[0.0, float("inf")], [0.0, 0.0]])
    model.bias.grad = torch.ones(2)
    guard = NonFiniteGuard("skip")
    guard.on_pre_optimizer_step(Args(), State(), None, model=model)
    optimizer.step()  # what the trainer does next: with no gradients, AdamW leaves every parameter alone
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logs = {}
    guard.on_log(Args(), State(), None, logs=logs)
    assert guard.skipped == 1 and logs["nonfinite_skipped_steps"] == 1


def test_diverging_run_with_skip_finishes_and_reports_the_skipped_steps(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
        "use_peft": False, "learning_rate": 1e12, "max_grad_norm": 0.0, "per_device_train_batch_size": 8,
        "max_steps": 8, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "seed": 0, "on_nonfinite": "skip"})
    run_recipe("sft", ["--config", cfg])
    logs = [e for e in json.loads((out / "log_history.json").read_text()) if "nonfinite_skipped_steps" in e]
    assert (out / "run_info.json").is_file() and logs[-1]["nonfinite_skipped_steps"] > 0
