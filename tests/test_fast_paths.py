"""Correctness guards for the speed-ups: what is on by default must not change what is learned."""

from __future__ import annotations

import json
import types

import pytest
import torch
import yaml

from conftest import BF16_SKIP_REASON, PRECISIONS, bf16_decision, run_recipe, write_config, write_jsonl

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

# Tolerances per precision, each stated so that the result does not depend on the machine's default. fp32: float32
# reduction-order noise (measured ~1e-7). bf16 autocast rounds matmul inputs to 8 significant bits (unit roundoff
# u = 2**-9 ~ 2e-3) and keeps sums and the loss in fp32; other batch shapes round other intermediates. A loss, a mean
# over hundreds of tokens, stays within one u (measured 6e-5 - 8e-5 relative); an update (largest entry ~0.18) within
# 8 u of its size (measured 0.6e-3 - 1.0e-3 absolute).
LOSS_REL = {False: 1e-5, True: 2e-3}
UPDATE_TOL = {False: {"rtol": 1e-4, "atol": 1e-5}, True: {"rtol": 1.6e-2, "atol": 3e-3}}


def _rows(n: int) -> list[dict]:
    # Lengths vary (1-6 repeats), as real data does, so batches of 8 carry padding and 1x8 vs 8x1 can differ.
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]
    return [{"messages": [{"role": "user", "content": f"Say {w} {1 + i % 6} times"},
                          {"role": "assistant", "content": " ".join([w] * (1 + i % 6))}]}
            for i, w in enumerate(words[i % 8] for i in range(n))]


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_gradient_accumulation_8x1_matches_1x8(tmp_path, tiny_model_dir, bf16):
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(16))
    base = {"bf16": bf16, "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 0.5, "max_steps": 2, "max_length": 64, "save_strategy": "no", "report_to": "none",
            "disable_tqdm": True, "seed": 0, "logging_steps": 1, "report": False, "lora_dropout": 0.0,
            # SGD: the update is the gradient itself (Adam's first steps are ~lr * sign(g), which turns a 1e-9
            # rounding difference on a near-zero gradient into a full step)
            "optim": "sgd",
            # the same examples in the same order for both shapes (a length-grouped order depends on batch size)
            "train_sampling_strategy": "sequential"}
    runs = {}
    for name, batch, accumulation in (("one_by_eight", 8, 1), ("eight_by_one", 1, 8)):
        cfg = {**base, "output_dir": str(tmp_path / name), "per_device_train_batch_size": batch,
               "gradient_accumulation_steps": accumulation}
        runs[name] = run_recipe("sft", ["--config", write_config(tmp_path / f"{name}.yaml", cfg)])
    a, b = _adapter(tmp_path / "one_by_eight"), _adapter(tmp_path / "eight_by_one")
    assert a.keys() == b.keys()
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)  # LoRA B starts at zero
    assert moved > 1e-3  # the updates are real, so agreeing below is not agreeing on nothing
    # Loss normalised over the real tokens of the whole accumulated batch (trl's num_items_in_batch), so the
    # two shapes take the same steps: fp32 on CPU agrees to ~1e-6 of the weights, bf16 to its rounding.
    for key in a:
        torch.testing.assert_close(a[key], b[key], **UPDATE_TOL[bf16])
    assert runs["one_by_eight"]["train_loss"] == pytest.approx(runs["eight_by_one"]["train_loss"],
                                                               rel=max(LOSS_REL[bf16], 1e-4))


def test_packed_rows_attend_only_within_their_example_in_the_training_forward():
    # trl's padding-free collator passes position_ids and no attention mask, and compute_loss sets use_cache=False;
    # transformers then builds a block-diagonal mask from the position_ids, with sdpa and eager alike.
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    first, second = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 5))
    for implementation in ("sdpa", "eager"):
        config._attn_implementation = implementation
        model = LlamaForCausalLM(config).train()
        alone = model(second, use_cache=False).logits
        packed = model(input_ids=torch.cat([first, second], 1), use_cache=False,
                       position_ids=torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)).logits[:, 7:]
        torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
        # The guard is real: with a cache (generation) the same packed row does leak across examples.
        leaked = model(input_ids=torch.cat([first, second], 1),
                       position_ids=torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)).logits[:, 7:]
        assert (leaked - alone).abs().max() > 1e-2


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_packed_padding_free_and_padded_batches_give_the_same_loss_and_update(tmp_path, tiny_model_dir, bf16):
    """Same 8 examples in one step, as padded rows, as bfd-packed rows and as one padding-free row (sdpa on a CPU):
    per-token loss and the LoRA update agree to the precision's rounding (LOSS_REL, UPDATE_TOL)."""
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(8))
    base = {"bf16": bf16, "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 0.5, "optim": "sgd", "max_steps": 1, "max_length": 256, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "seed": 0, "logging_steps": 1, "report": False,
            "lora_dropout": 0.0, "per_device_train_batch_size": 8, "train_sampling_strategy": "sequential",
            "attn_implementation": "sdpa"}
    shapes = {"padded": {"packing": False}, "packed": {"packing": True, "packing_strategy": "bfd"},
              "padding_free": {"packing": False, "padding_free": True, "max_length": None}}  # rows are short
    losses, adapters = {}, {}
    for name, extra in shapes.items():
        out = tmp_path / name
        run_recipe("sft", ["--config", write_config(tmp_path / f"{name}.yaml", {**base, **extra,
                                                                              "output_dir": str(out)})])
        log = json.loads((out / "log_history.json").read_text())
        losses[name] = next(row["loss"] for row in log if "loss" in row)
        adapters[name] = _adapter(out)
    assert max(adapters["padded"][k].abs().max().item() for k in adapters["padded"] if "lora_B" in k) > 1e-3
    for name in ("packed", "padding_free"):
        assert losses[name] == pytest.approx(losses["padded"], rel=LOSS_REL[bf16]), name
        for key in adapters["padded"]:
            torch.testing.assert_close(adapters[name][key], adapters["padded"][key], **UPDATE_TOL[bf16])


def test_fast_paths_follow_the_hardware(tmp_path):
    """The fast paths are decisions returned as values, for the keys the user left unset only."""
    from finetune_kit.config import parse_config
    from finetune_kit.config_decoder import SFTRecipeConfig
    from finetune_kit.decisions import Decisions
    from finetune_kit.hardware import fast_path_decisions

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))

    def decide(*flags):
        argv = ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"), *flags]
        cfg = parse_config(SFTRecipeConfig, argv)
        decisions = Decisions(cfg, argv)
        decisions.add(cfg, *fast_path_decisions(cfg, decisions.user))
        return cfg, decisions.record()

    cfg, made = decide()  # this CPU: no flash attention, no Liger: sdpa with length-grouped, padded batches
    assert cfg.model.attn_implementation is None and not cfg.training.packing
    assert not cfg.training.use_liger_kernel
    assert made["packing"]["value"] is False and made["use_liger_kernel"]["value"] is False
    assert "bf16" in made and "why" in made["bf16"]  # the precision chosen for this machine, with its reason
    cfg, made = decide("--attn_implementation", "flash_attention_2")
    assert cfg.training.packing  # flash attention's varlen kernels: packed rows cost what their examples cost
    assert made["packing"]["value"] is True and "attn_implementation" not in made  # the user's key is not a decision
    cfg, made = decide("--attn_implementation", "flash_attention_2", "--packing", "false")
    assert not cfg.training.packing and "packing" not in made  # the user's choice stands


def test_lora_on_a_cpu_with_bf16_dot_products_loads_the_base_in_bf16(tmp_path, monkeypatch):
    """`dtype` is a decision for LoRA on a CPU whose matmuls run bf16 natively (hardware.cpu_bf16_matmul), never
    for full fine-tuning (fp32 master weights), a quantized base, or a dtype the user named; FINETUNE_KIT_BF16 forces
    it either way, as it does the bf16 decision."""
    from finetune_kit import hardware
    from finetune_kit.config import parse_config
    from finetune_kit.config_decoder import SFTRecipeConfig
    from finetune_kit.decisions import Decisions

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))

    def dtype(*flags):
        argv = ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"), *flags]
        cfg = parse_config(SFTRecipeConfig, argv)
        decisions = Decisions(cfg, argv)
        decisions.add(cfg, *hardware.fast_path_decisions(cfg, decisions.user))
        return cfg.model.dtype, "dtype" in decisions.record()

    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: True)
    assert dtype("--use_peft", "true") == ("bfloat16", True)
    assert dtype("--use_peft", "false") == ("float32", False)
    assert dtype("--use_peft", "true", "--dtype", "float32") == ("float32", False)  # named: the user's
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: False)
    assert dtype("--use_peft", "true") == ("float32", False)
    monkeypatch.undo()
    monkeypatch.setenv("FINETUNE_KIT_BF16", "0")
    assert not hardware.cpu_bf16_matmul()
    monkeypatch.setenv("FINETUNE_KIT_BF16", "1")
    assert hardware.cpu_bf16_matmul()


def test_lora_with_a_bf16_base_learns_like_an_fp32_base(tmp_path, tiny_model_dir, monkeypatch):
    """The guard of the bf16-base fast path: the same LoRA SFT run with the base in bf16 (the decision, adapters
    fp32) and in fp32 gives loss curves within 2% step by step (bf16 rounds each frozen matmul's output to 8 bits),
    and the decided run records float32 in its saved config, so inference and export load the base as its
    checkpoint holds it."""
    from finetune_kit import hardware

    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(16))
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 8,
            "lora_dropout": 0.0, "learning_rate": 5e-3, "max_steps": 6, "per_device_train_batch_size": 4,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
            "bf16": False, "eval_split_ratio": 0}
    curves = {}
    for bf16_base in (False, True):
        monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: bf16_base)
        out = tmp_path / str(bf16_base)
        run_recipe("sft", ["--config", write_config(tmp_path / f"{bf16_base}.yaml", {**base, "output_dir": str(out)})])
        info = json.loads((out / "run_info.json").read_text())
        assert ("dtype" in info["decisions"]) is bf16_base
        assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
        curves[bf16_base] = [row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]
    assert len(curves[False]) == 6 and curves[False][-1] < curves[False][0]
    assert curves[True] == pytest.approx(curves[False], rel=2e-2), curves
