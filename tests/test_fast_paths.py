"""Correctness guards for the speed-ups: what is on by default must not change what is learned."""

from __future__ import annotations

import pytest
import torch

from conftest import run_recipe, write_config, write_jsonl


def _rows(n: int) -> list[dict]:
    # Lengths vary (1-6 repeats), as real data does, so batches of 8 carry padding and 1x8 vs 8x1 can differ.
    words = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]
    return [{"messages": [{"role": "user", "content": f"Say {w} {1 + i % 6} times"},
                          {"role": "assistant", "content": " ".join([w] * (1 + i % 6))}]}
            for i, w in enumerate(words[i % 8] for i in range(n))]


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def test_gradient_accumulation_8x1_matches_1x8(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(16))
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
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
    # two shapes take the same steps: fp32 on CPU agrees to ~1e-6 of the weights.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert runs["one_by_eight"]["train_loss"] == pytest.approx(runs["eight_by_one"]["train_loss"], rel=1e-4)


def test_packing_by_position_ids_leaks_across_examples_without_flash_attention_so_it_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune_kit.config import ConfigError, parse_config
    from finetune_kit.recipe_configs import SFTRecipeConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    first, second = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        alone = model(second).logits
        packed = model(input_ids=torch.cat([first, second], 1),
                       position_ids=torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)).logits[:, 7:]
    assert (packed - alone).abs().max() > 1e-2  # the second example saw the first: what padding_free would train on

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))
    for flag in (["--padding_free", "true"], ["--packing", "true", "--packing_strategy", "bfd"]):
        with pytest.raises(ConfigError, match="flash_attention_2"):
            parse_config(SFTRecipeConfig, ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"), *flag])
    cfg = parse_config(SFTRecipeConfig, ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"),
                                         "--padding_free", "true", "--attn_implementation", "flash_attention_2"])
    assert cfg.training.padding_free
