"""Slow tests on the real embedded checkpoints: GGUF conversion fidelity, and SFT steps on SmolLM2-135M."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import chat_rows, run_recipe, write_jsonl
from finetune_kit.errors import UserError
from finetune_kit.models import embedded_path, resolve_checkpoint

pytestmark = pytest.mark.slow


def test_gguf_conversion_matches_the_gguf_model_and_is_cached(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path / "cache"))
    gguf = embedded_path("smollm2-135m-instruct")
    converted = resolve_checkpoint("smollm2-135m-instruct")
    assert converted.startswith(str(tmp_path / "cache")) and (tmp_path / "cache").is_dir()
    mtime = os.stat(converted + "/model.safetensors").st_mtime_ns
    assert resolve_checkpoint(str(gguf)) == converted  # same file by path: the cache answers, no second conversion
    assert os.stat(converted + "/model.safetensors").st_mtime_ns == mtime

    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 28, 2]])
    with torch.no_grad():
        diff = (model(ids).logits - reference(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff  # same fp32 weights, same graph: equal up to float noise


def test_not_a_gguf_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_KIT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match=r"fake\.gguf: not a GGUF file \(it does not start with the GGUF magic"):
        resolve_checkpoint(str(fake))
    # The right header, then nothing: the parser's own error (a struct.error) comes back as one named line.
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(UserError, match=r"fake\.gguf: transformers cannot load this GGUF file .*cut short"):
        resolve_checkpoint(str(fake))
    assert not any((tmp_path / "cache" / "gguf").glob("fake*"))


def test_a_few_sft_steps_on_the_real_smollm2(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    out = tmp_path / "smol"
    cfg = tmp_path / "smol.yaml"
    cfg.write_text(f"dataset_name: {data}\noutput_dir: {out}\nuse_peft: true\nlora_r: 8\nmax_steps: 4\n"
                   "per_device_train_batch_size: 4\nlearning_rate: 1.0e-3\nlogging_steps: 1\nmax_length: 64\n"
                   "save_strategy: 'no'\nreport_to: none\ndisable_tqdm: true\n")
    run_recipe("sft", ["--config", str(cfg)])
    losses = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "smollm2-135m-instruct"  # portable: not a cache path
