"""The three ways in: `accelerate launch recipes/sft.py`, `finetune-kit train sft`, and QLoRA through the recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, chat_rows, run_recipe, write_config, write_jsonl


def sft_config(tmp_path, model_dir, out, **extra) -> str:
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(16))
    cfg = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(out),
           "use_peft": True, "lora_r": 4, "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64,
           "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
    cfg.update(extra)
    return write_config(tmp_path / f"{out.name}.yaml", cfg)


def venv_tool(python: str, name: str) -> str:
    tool = Path(python).parent / name
    return str(tool) if tool.exists() else shutil.which(name)


def test_accelerate_launch_single_process(tmp_path, tiny_model_dir, python):
    out = tmp_path / "accel"
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    result = subprocess.run(
        [venv_tool(python, "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no",
         str(ROOT / "recipes" / "sft.py"), "--config", sft_config(tmp_path, tiny_model_dir, out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "run_info.json").is_file()


def test_console_script_trains(tmp_path, tiny_model_dir, python):
    out = tmp_path / "cli"
    result = subprocess.run([venv_tool(python, "finetune-kit"), "train", "sft", "--config",
                             sft_config(tmp_path, tiny_model_dir, out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run_info.json").read_text())["recipe"] == "sft"


def test_console_script_unknown_recipe(python):
    result = subprocess.run([venv_tool(python, "finetune-kit"), "train", "nope"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "unknown recipe 'nope'; available: " in result.stderr
    assert "sft" in result.stderr and "text_classification" in result.stderr


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_base_trains_adapters_and_stays_quantized(tmp_path, tiny_model_dir, bits):
    bnb = pytest.importorskip("bitsandbytes")
    import torch
    from safetensors.torch import load_file

    from finetune_kit.config import ModelArguments
    from finetune_kit.models import load_causal_lm

    quant = {"load_in_4bit": True, "use_bnb_nested_quant": True} if bits == 4 else {"load_in_8bit": True}
    model = load_causal_lm(ModelArguments(model_name_or_path=str(tiny_model_dir), use_peft=True, **quant))
    layer = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert any(isinstance(m, layer) for m in model.modules())

    out = tmp_path / f"q{bits}"
    run_recipe("sft", ["--config", sft_config(tmp_path, tiny_model_dir, out, learning_rate=3e-2, max_steps=12,
                                               logging_steps=1, **quant)])
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert all(torch.isfinite(v).all() for v in adapter.values())
    losses = [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_quantized_base_keeps_unquantized_weights_in_the_load_dtype(tmp_path, tiny_model_dir):
    """QLoRA in bf16: embeddings, LM head and norms stay bf16 (peft's prepare_model_for_kbit_training would upcast
    them to fp32, the largest unquantized part of the model), copied out of the checkpoint's memory map so that the
    file's pages do not stay resident."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_kit.config import ModelArguments
    from finetune_kit.models import load_causal_lm

    # a bf16 checkpoint (weights loaded in their stored dtype are the ones that alias the file) no other test maps
    folder = tmp_path / "bf16-copy"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(folder)
    model = load_causal_lm(ModelArguments(model_name_or_path=str(folder), use_peft=True, load_in_4bit=True,
                                          dtype="bfloat16"))
    unquantized = [p for p in model.parameters() if p.__class__.__name__ != "Params4bit"]
    assert unquantized and all(p.dtype == torch.bfloat16 for p in unquantized)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(folder / "model.safetensors") not in maps.read_text()


def test_the_script_example_runs(tmp_path, tiny_model_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sft_script", ROOT / "examples" / "sft_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "script"
    trainer = module.main(["--config", sft_config(tmp_path, tiny_model_dir, out)])
    assert trainer.state.global_step == 2 and (out / "adapter_model.safetensors").is_file()


def test_dora_adapter_trains(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    out = tmp_path / "dora"
    run_recipe("sft", ["--config", sft_config(tmp_path, tiny_model_dir, out, use_dora=True, learning_rate=1e-2)])
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in k for k in adapter)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
