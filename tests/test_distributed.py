"""Two processes on the CPU (gloo) through `accelerate launch`, and the shipped accelerate configs.

DESIGN.md: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` runs two gloo processes here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import PRECISIONS, ROOT, chat_rows, write_config, write_jsonl

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


def launch(python: str, recipe: str, config: str, processes: int, timeout: int = 600):
    command = [str(Path(python).parent / "accelerate"), "launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(29500 + os.getpid() % 1000)]
    if processes > 1:
        command.insert(2, "--multi_gpu")
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    return subprocess.run([*command, str(ROOT / "recipes" / f"{recipe}.py"), "--config", config],
                          capture_output=True, text=True, timeout=timeout, env=env)


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_sft_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, python, bf16):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(64))
    # fp32: the base too (a CPU with bf16 dot products would otherwise load it in bf16: hardware.fast_path_decisions)
    base = {"bf16": bf16, **({} if bf16 else {"dtype": "float32"}), "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 8,
            "lora_dropout": 0.0, "learning_rate": 1e-2, "max_steps": 6, "logging_steps": 1, "max_length": 64, "save_strategy": "steps",
            "save_steps": 6, "report_to": "none", "disable_tqdm": True, "seed": 0, "shuffle_dataset": False}
    runs = {}
    for processes, per_device in ((1, 8), (2, 4)):
        out = tmp_path / f"p{processes}"
        cfg = write_config(tmp_path / f"p{processes}.yaml", {**base, "output_dir": str(out),
                                                            "per_device_train_batch_size": per_device})
        result = launch(python, "sft", cfg, processes)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = out
    one, two = losses(runs[1]), losses(runs[2])
    assert len(one) == len(two) == 6
    # Same samples per step and the loss averaged over all tokens of the global batch (no dropout, so no
    # per-process randomness): the curves agree to float32 reduction-order noise, or in bf16 to about two of its
    # roundoffs (u = 2**-9 ~ 2e-3: batches of 4 and 8 round different intermediates, six steps compound them;
    # seen: 6e-4).
    assert two == pytest.approx(one, rel=4e-3 if bf16 else 1e-4), (one, two)
    assert [p.name for p in runs[2].glob("checkpoint-*")] == ["checkpoint-6"]
    assert (runs[2] / "adapter_model.safetensors").is_file() and (runs[2] / "run_info.json").is_file()


def test_text_classification_two_processes_gathers_metrics(tmp_path, tiny_bert_dir, python):
    rows = [{"text": f"the film was {w} overall", "label": "pos" if w in ("great", "lovely") else "neg"}
            for w in ["great", "lovely", "awful", "dull"] * 15]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = write_config(tmp_path / "c.yaml", {
        "model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "test_split_ratio": 0.25, "num_train_epochs": 1, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 4, "save_strategy": "no", "report_to": "none", "disable_tqdm": True})
    result = launch(python, "text_classification", cfg, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    support = sum(metrics["per_class"][label]["support"] for label in ("neg", "pos"))
    assert support == 15  # both ranks' predictions gathered: the whole test split, each row once


def test_a_data_error_stops_both_processes(tmp_path, tiny_model_dir, python):
    data = write_jsonl(tmp_path / "bad.jsonl", chat_rows(4) + [{"messages": [{"role": "user", "content": "x"}]}])
    cfg = write_config(tmp_path / "c.yaml", {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data),
                                             "output_dir": str(tmp_path / "o"), "use_peft": True, "report_to": "none"})
    start = time.time()
    result = launch(python, "sft", cfg, 2, timeout=300)
    assert result.returncode != 0 and time.time() - start < 120
    assert "bad.jsonl line 5: field 'messages': the conversation ends with a 'user' turn" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_parse_and_validate(path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    raw = yaml.safe_load(path.read_text())
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: unknown keys are an error
    assert config.distributed_type in set(DistributedType)
    if config.distributed_type == DistributedType.FSDP:
        from accelerate import FullyShardedDataParallelPlugin

        fsdp = raw["fsdp_config"]
        # `accelerate launch` hands these to the processes as FSDP_* variables; build the plugin the same way.
        assert not fsdp.get("fsdp_cpu_ram_efficient_loading") or fsdp.get("fsdp_sync_module_states"), \
            "accelerate refuses cpu_ram_efficient_loading without sync_module_states"
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        for key, value in fsdp.items():
            monkeypatch.setenv("FSDP_" + key.removeprefix("fsdp_").upper(), str(value).lower() if isinstance(value, bool)
                               else str(value))
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.activation_checkpointing is True and "SHARDED" in str(plugin.state_dict_type)
    if config.distributed_type == DistributedType.DEEPSPEED:
        pytest.importorskip("deepspeed", reason="deepspeed is not installed here; the config parsed but its plugin "
                                                "cannot be built without it")
        from accelerate import DeepSpeedPlugin

        DeepSpeedPlugin(zero_stage=raw["deepspeed_config"]["zero_stage"])


def test_dpo_two_processes_with_a_4bit_base(tmp_path, tiny_model_dir, python):
    """QLoRA under DDP: each process loads its own 4-bit copy; one adapter and one run record come out."""
    pytest.importorskip("bitsandbytes")
    rows = [{"prompt": f"Say {w}", "chosen": f"Sure! {w}", "rejected": f"No. {w}"}
            for w in ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"] * 2]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "dpo"
    cfg = write_config(tmp_path / "dpo.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
        "use_peft": True, "lora_r": 8, "load_in_4bit": True, "learning_rate": 3e-2, "max_steps": 4,
        "per_device_train_batch_size": 4, "logging_steps": 1, "report_to": "none", "disable_tqdm": True})
    result = launch(python, "dpo", cfg, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses(out)
    assert len(curve) == 4 and curve[-1] < curve[0], curve
    assert (out / "adapter_model.safetensors").is_file() and (out / "run_info.json").is_file()
