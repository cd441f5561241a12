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


# fp32 runs name dtype float32: a CPU with bf16 dot products would otherwise load a LoRA base in bf16
# (hardware.fast_path_decisions), and these tests compare at fp32 tolerances.


def _adapter(out):
    from safetensors.torch import load_file

    return load_file(out / "adapter_model.safetensors")


def _fast_path_decided(data, out, *flags):
    """The SFT config for `data` after hardware.fast_path_decisions, and the decisions recorded."""
    from finetune_kit import hardware
    from finetune_kit.config import parse_config
    from finetune_kit.config_decoder import SFTRecipeConfig
    from finetune_kit.decisions import Decisions

    argv = ["--dataset_name", str(data), "--output_dir", str(out), *flags]
    cfg = parse_config(SFTRecipeConfig, argv)
    decisions = Decisions(cfg, argv)
    decisions.add(cfg, *hardware.fast_path_decisions(cfg, decisions.user))
    return cfg, decisions.record()


@pytest.mark.parametrize("bf16", PRECISIONS)
def test_gradient_accumulation_8x1_matches_1x8(tmp_path, tiny_model_dir, bf16):
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(16))
    base = {"bf16": bf16, **({} if bf16 else {"dtype": "float32"}), "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
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
    """Same 8 examples in one step, as padded rows (to the longest, and to a multiple of 64), as bfd-packed rows and
    as one padding-free row (sdpa on a CPU):
    per-token loss and the LoRA update agree to the precision's rounding (LOSS_REL, UPDATE_TOL)."""
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(8))
    base = {"bf16": bf16, **({} if bf16 else {"dtype": "float32"}), "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 4,
            "learning_rate": 0.5, "optim": "sgd", "max_steps": 1, "max_length": 256, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "seed": 0, "logging_steps": 1, "report": False,
            "lora_dropout": 0.0, "per_device_train_batch_size": 8, "train_sampling_strategy": "sequential",
            "attn_implementation": "sdpa"}
    # padded_to_64: the CPU-bf16 decision's batch lengths (hardware.CPU_BF16_PAD), more padding, all of it masked
    shapes = {"padded": {"packing": False, "pad_to_multiple_of": None},
              "padded_to_64": {"packing": False, "pad_to_multiple_of": 64},
              "packed": {"packing": True, "packing_strategy": "bfd"},
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
    for name in ("padded_to_64", "packed", "padding_free"):
        assert losses[name] == pytest.approx(losses["padded"], rel=LOSS_REL[bf16]), name
        for key in adapters["padded"]:
            torch.testing.assert_close(adapters[name][key], adapters["padded"][key], **UPDATE_TOL[bf16])


def test_fast_paths_follow_the_hardware(tmp_path, monkeypatch):
    """The fast paths are decisions returned as values, for the keys the user left unset only."""
    from finetune_kit import hardware

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))

    def decide(*flags):
        return _fast_path_decided(data, tmp_path / "o", *flags)

    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: False)  # fp32 matmuls: the library's attention
    monkeypatch.setenv(hardware.BF16_ENV, "0")  # no bf16 autocast either (make test's second pass forces it on)
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    cfg, made = decide()  # a CPU: no flash attention, no Liger: sdpa with length-grouped, padded batches
    assert cfg.model.attn_implementation is None and not cfg.training.packing
    assert not cfg.training.use_liger_kernel
    assert made["packing"]["value"] is False and made["use_liger_kernel"]["value"] is False
    assert "bf16" in made and "why" in made["bf16"]  # the precision chosen for this machine, with its reason
    cfg, made = decide("--attn_implementation", "flash_attention_2")
    assert cfg.training.packing  # flash attention's varlen kernels: packed rows cost what their examples cost
    assert made["packing"]["value"] is True and "attn_implementation" not in made  # the user's key is not a decision
    cfg, made = decide("--attn_implementation", "flash_attention_2", "--packing", "false")
    assert not cfg.training.packing and "packing" not in made  # the user's choice stands


def test_activation_checkpointing_follows_the_memory_estimate(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from finetune_kit.config import parse_config
    from finetune_kit.config_decoder import SFTRecipeConfig
    from finetune_kit.decisions import Decisions
    from finetune_kit.memory import activation_checkpointing

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))

    def decide(*flags, seq=512):
        argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(data), "--output_dir",
                str(tmp_path / "o"), *flags]
        cfg = parse_config(SFTRecipeConfig, argv)
        decisions = Decisions(cfg, argv)
        decisions.add(cfg, activation_checkpointing(cfg, decisions.user, seq))
        return cfg.training.activation_checkpointing, cfg.training.gradient_checkpointing

    monkeypatch.setattr("finetune_kit.hardware.has_accelerator", lambda: True)  # the GPU rule first
    monkeypatch.setattr("finetune_kit.memory.device_memory", lambda: 1024 * 2**30)  # the share decides, not room
    # 2 x 512 tokens of a hidden-32 model: activations ~3% of the ~1.4 GiB peak, recomputing would save nothing
    assert decide("--per_device_train_batch_size", "2") == (False, False)
    assert "decision: activation_checkpointing = False (auto: " in capsys.readouterr().out
    # 2 x 4096: ~20% of the peak (the attention scores grow with the square of the length): on, as trl's default
    assert decide("--per_device_train_batch_size", "2", seq=4096) == (True, True)
    assert "decision: activation_checkpointing = True (auto: " in capsys.readouterr().out
    monkeypatch.setattr("finetune_kit.memory.device_memory", lambda: 2**30)  # a run that would not fit: always on
    assert decide("--per_device_train_batch_size", "2") == (True, True)
    monkeypatch.setattr("finetune_kit.memory.device_memory", lambda: 1024 * 2**30)
    assert decide("--per_device_train_batch_size", "512", "--activation_checkpointing", "false") == (False, False)
    assert decide("--per_device_train_batch_size", "2", "--gradient_checkpointing", "true") == (True, True)
    # A CPU: compute is short, so off even where the activations are a large share, until the estimated peak passes
    # half of RAM (2 x 4096 tokens of the tiny model: a peak between 1.5 and 12 GiB)
    capsys.readouterr()
    monkeypatch.setattr("finetune_kit.hardware.has_accelerator", lambda: False)
    monkeypatch.setattr("finetune_kit.memory.device_memory", lambda: 24 * 2**30)
    assert decide("--per_device_train_batch_size", "2", seq=4096) == (False, False)
    assert "decision: activation_checkpointing = False (auto: CPU: " in capsys.readouterr().out
    monkeypatch.setattr("finetune_kit.memory.device_memory", lambda: 3 * 2**30)
    assert decide("--per_device_train_batch_size", "2", seq=4096) == (True, True)
    assert "over half of 3 GiB RAM" in capsys.readouterr().out
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")  # FSDP recomputes blocks itself
    assert decide("--per_device_train_batch_size", "512") == (False, False)


def test_bf16_default_needs_amx_on_a_cpu(monkeypatch):
    """bf16 is chosen on a CPU only with AMX: oneDNN's own "bf16 supported" is true on any AVX512-BW CPU, where bf16
    is converted in software, and with AVX512-BF16 alone bf16 autocast still measured ~1.7x slower than fp32."""
    import torch

    from finetune_kit.hardware import BF16_ENV, bf16_is_fast

    monkeypatch.delenv(BF16_ENV, raising=False)  # the hardware's answer, not a forced one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not bf16_is_fast()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bf16_is_fast()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert not bf16_is_fast()


def test_bf16_decision_can_be_forced_either_way(monkeypatch, tmp_path):
    """FINETUNE_KIT_BF16 answers before the hardware, so the suite can run as the other kind of machine would; the
    recipes' configs follow it, and an unreadable value is a named error, not a silent default."""
    from finetune_kit.config import parse_config
    from finetune_kit.errors import UserError
    from finetune_kit.hardware import BF16_ENV, bf16_is_fast
    from finetune_kit.config_decoder import SFTRecipeConfig

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))
    for value, expected in (("1", True), ("on", True), ("0", False), ("false", False)):
        monkeypatch.setenv(BF16_ENV, value)
        assert bf16_is_fast() is expected
        cfg = parse_config(SFTRecipeConfig, ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o")])
        assert cfg.training.bf16 is expected
        cfg = parse_config(SFTRecipeConfig, ["--dataset_name", str(data), "--output_dir", str(tmp_path / "o"),
                                             "--bf16", str(not expected).lower()])
        assert cfg.training.bf16 is not expected  # an explicit key beats the forced default
    monkeypatch.setenv(BF16_ENV, "maybe")
    with pytest.raises(UserError, match=BF16_ENV):
        bf16_is_fast()


@pytest.mark.skipif(not bf16_decision(), reason=BF16_SKIP_REASON)
def test_a_short_bf16_run_learns_as_fp32_does(tmp_path, tiny_model_dir):
    """bf16 autocast on purpose: 12 steps from the same start, each precision's loss falls, and the bf16 curve stays
    within 3% of fp32's at every step (a few roundoffs of 2**-9 per step, compounding over 12 steps; a real
    precision bug - bf16 master weights, a bf16 loss - drifts or stalls by far more)."""
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(32))
    curves = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}"
        cfg = {"bf16": bf16, "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True,
               "lora_r": 8, "lora_dropout": 0.0, "learning_rate": 2e-2, "max_steps": 12, "max_length": 64,
               "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
               "seed": 0, "logging_steps": 1, "report": False, "train_sampling_strategy": "sequential",
               "output_dir": str(out)}
        run_recipe("sft", ["--config", write_config(tmp_path / f"{bf16}.yaml", cfg)])
        curves[bf16] = [row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]
        assert yaml.safe_load((out / "config.yaml").read_text())["bf16"] is bf16  # the precision it trained in
    for bf16, curve in curves.items():
        assert len(curve) == 12 and curve[-1] < 0.8 * curve[0], (bf16, curve)
    assert curves[True] == pytest.approx(curves[False], rel=3e-2), curves


def test_narrow_lm_head_tiles_keep_loss_and_gradients(monkeypatch):
    """The CPU's narrower tiles for trl's fused LM head give the same log-probs, entropy and gradients as trl's
    default width (several tiles and a partial last one here: vocabulary 10,000 at 4,096 vs one 32,768 tile)."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from finetune_kit.hardware import TORCH_LM_HEAD_TILE, narrow_lm_head_tiles

    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    narrow_lm_head_tiles("cpu")
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == TORCH_LM_HEAD_TILE == 4096

    torch.manual_seed(0)
    hidden0, weight0 = torch.randn(300, 64), torch.randn(10_000, 64) * 0.1
    labels = torch.randint(0, 10_000, (300,))

    def run(width):
        hidden, weight = hidden0.clone().requires_grad_(True), weight0.clone().requires_grad_(True)
        log_probs, entropy, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, labels, 1.0, width, None, 1.0,
                                                              ("log_probs", "entropy"))
        (-log_probs.sum() + 0.1 * entropy.sum()).backward()
        return log_probs.detach(), entropy.detach(), hidden.grad, weight.grad

    for narrow, wide in zip(run(TORCH_LM_HEAD_TILE), run(32768)):
        torch.testing.assert_close(narrow, wide, rtol=1e-5, atol=1e-6)


def test_tokenizing_in_several_processes_gives_the_same_rows(tokenizer):
    from datasets import Dataset

    from finetune_kit.data import tokenize_sft_dataset

    dataset = Dataset.from_list(_rows(12))
    one, two = tokenize_sft_dataset(dataset, tokenizer), tokenize_sft_dataset(dataset, tokenizer, num_proc=2)
    assert one["input_ids"] == two["input_ids"] and one["assistant_masks"] == two["assistant_masks"]
    assert any(any(mask) for mask in one["assistant_masks"])


def test_lora_on_a_cpu_with_bf16_dot_products_loads_the_base_in_bf16(tmp_path, monkeypatch):
    """`dtype` is a decision for LoRA on a CPU whose matmuls run bf16 natively (hardware.cpu_bf16_matmul), never
    for full fine-tuning (fp32 master weights), a quantized base, or a dtype the user named; FINETUNE_KIT_BF16 forces
    it either way, as it does the bf16 decision. Wherever a CPU's matmuls run in bf16, padded batch lengths are
    rounded up to hardware.CPU_BF16_PAD (CPU_BF16_PAD_SHORT under max_length 512; oneDNN's per-shape kernels)."""
    from finetune_kit import hardware

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))

    def decided(*flags):  # the config after fast_path_decisions, and what was decided
        return _fast_path_decided(data, tmp_path / "o", *flags)

    def dtype(*flags):
        cfg, made = decided(*flags)
        return cfg.model.dtype, "dtype" in made

    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: True)
    assert dtype("--use_peft", "true") == ("bfloat16", True)
    assert dtype("--use_peft", "false") == ("float32", False)
    assert dtype("--use_peft", "true", "--dtype", "float32") == ("float32", False)  # named: the user's
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: False)
    assert dtype("--use_peft", "true") == ("float32", False)
    monkeypatch.undo()
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)

    def padding(*flags):  # the pad_to_multiple_of decision: bf16 matmuls on a CPU, padded batches, key unset
        return decided("--use_peft", "true", *flags)[0].training.pad_to_multiple_of

    for bf16_matmul, flags, expected in [
            (True, ["--bf16", "false"], hardware.CPU_BF16_PAD),            # the bf16 base decision
            (False, ["--bf16", "true"], hardware.CPU_BF16_PAD),            # bf16 autocast
            (False, ["--bf16", "false", "--dtype", "bfloat16"], hardware.CPU_BF16_PAD),  # a bf16 base named
            (False, ["--bf16", "false"], None),                            # fp32 matmuls: MKL, nothing cached
            (True, ["--bf16", "false", "--packing", "true"], None),        # packed rows are max_length already
            (True, ["--bf16", "false", "--padding_free", "true"], None),
            (True, ["--bf16", "false", "--max_length", "256"], hardware.CPU_BF16_PAD_SHORT),  # short rows
            (True, ["--bf16", "false", "--pad_to_multiple_of", "8"], 8)]:  # the user's value stands
        monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda v=bf16_matmul: v)
        assert padding(*flags) == expected, flags
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lm_head_on_labelled_positions_matches_trls_fused_head(tiny_model_dir, monkeypatch, dtype):
    """SFT's CPU LM head (labelled positions only, logits kept: finetune_kit.lm_head) gives trl's fused head's loss,
    per-token log-probs, entropy, top-1 and LoRA gradients: prompt and padding positions, a row without labels,
    num_items_in_batch as gradient accumulation passes it; with an fp32 base and with a bf16 base (fp32 adapters, the
    `dtype` decision on a CPU with bf16 dot products), where both heads compute fp32 logits. Tolerance: fp32 sums in
    another order (1e-5)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import FusedCausalLMOutput, add_fused_lm_head

    from finetune_kit import lm_head
    from finetune_kit.lm_head import patch_forward

    projections = []  # our head ran (not trl's path it falls back to)
    monkeypatch.setattr(lm_head, "F", types.SimpleNamespace(
        linear=lambda *args: projections.append(args[0].shape) or torch.nn.functional.linear(*args)))

    def model(ours: bool):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype))
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
        if ours:
            patch_forward(base, FusedCausalLMOutput)
        torch.manual_seed(0)
        peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        for name, param in peft.named_parameters():  # B starts at zero: give the adapters something to differentiate
            if "lora_B" in name:
                param.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
        return peft

    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (3, 40))
    attention = torch.ones_like(ids)
    attention[1, 30:] = 0  # padding
    labels = ids.clone()
    labels[:, :12] = -100  # prompt
    labels[1, 30:] = -100
    labels[2] = -100  # a row with nothing to learn
    results = []
    for ours in (False, True):
        peft = model(ours)
        out = peft(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True, num_items_in_batch=50)
        out.loss.backward()
        grads = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
        results.append((out, grads))
    (trl_out, trl_grads), (our_out, our_grads) = results
    assert projections == [(28 + 18, 32)]  # the labelled positions only (hidden size 32)
    assert our_out.label_mask.sum() == trl_out.label_mask.sum() == 28 + 18  # labels 12..39 and 12..29, shifted by one
    # trl hands back its per-token fields in the hidden states' dtype: under a bf16 base they are rounded to bf16
    # (8 bits: ~4e-3 relative), ours stay fp32. Same values at that resolution; gradients (fp32 adapters) alike.
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 8e-3, "atol": 1e-2}
    for field in ("loss", "log_probs", "entropy"):
        torch.testing.assert_close(getattr(our_out, field).float(), getattr(trl_out, field).float(), **tolerance)
    assert torch.equal(our_out.is_top1.bool(), trl_out.is_top1.bool())
    assert trl_grads.keys() == our_grads.keys() and any(g.abs().sum() > 0 for g in our_grads.values())
    for name in trl_grads:
        ours_, trls = our_grads[name].flatten(), trl_grads[name].flatten()
        if dtype == "float32":
            torch.testing.assert_close(ours_, trls, rtol=1e-5, atol=1e-6, msg=name)
        else:  # the bf16 backbone rounds the two heads' (equal to ~1e-6) input gradients differently on the way down
            assert torch.nn.functional.cosine_similarity(ours_, trls, dim=0) > 0.9995, name
            assert ours_.norm() / trls.norm() == pytest.approx(1, abs=0.01), name
    # every row ignored: a differentiable zero, as in trl
    empty = model(True)(input_ids=ids, labels=torch.full_like(ids, -100), fused_lm_head=True)
    empty.loss.backward()
    assert empty.loss.item() == 0.0


def test_cpu_attention_families_share_llamas_eager_attention():
    """cpu_attention is chosen only for families whose eager attention is llama's line for line, so that swapping
    it computes what theirs does; a transformers release that changes one of them fails here."""
    import importlib
    import inspect

    from finetune_kit.cpu_attention import FAMILIES

    def body(family):
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        return inspect.getsource(module.eager_attention_forward)

    assert "llama" in FAMILIES and all(body(family) == body("llama") for family in FAMILIES)


@pytest.mark.parametrize("eager_max_tokens", [256, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_attention_matches_sdpa_in_outputs_and_gradients(dtype, eager_max_tokens, monkeypatch):
    """finetune_kit.cpu_attention against transformers' sdpa on the same grouped-query inputs and additive mask
    (causal, two padded keys), 12 tokens: below EAGER_MAX_TOKENS (eager) and above it (handed to sdpa): outputs and
    the gradients of query, key and value. fp32: equal to 1e-5. bf16: the softmax kept in bf16 rounds the weights to
    8 bits, so both are compared with an fp32 reference and ours may be off by at most twice sdpa's own bf16 error
    (+1e-3)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from finetune_kit import cpu_attention
    from finetune_kit.cpu_attention import eager_bf16_softmax

    monkeypatch.setattr(cpu_attention, "EAGER_MAX_TOKENS", eager_max_tokens)
    torch.manual_seed(0)
    batch, heads, groups, length, width = 2, 4, 2, 12, 8
    module = types.SimpleNamespace(num_key_value_groups=groups, training=True, is_causal=True)
    q, k, v = (torch.randn(batch, h, length, width) for h in (heads, heads // groups, heads // groups))
    mask = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)[None, None].repeat(batch, 1, 1, 1)
    mask[1, :, :, -2:] = torch.finfo(torch.float32).min  # the second row's last two tokens are padding

    def run(attention, dt):
        inputs = [t.detach().to(dt).clone().requires_grad_() for t in (q, k, v)]
        out, _ = attention(module, *inputs, mask.to(dt), scaling=width ** -0.5, dropout=0.0)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.float()] + [t.grad.float() for t in inputs]

    reference = run(sdpa_attention_forward, torch.float32)
    ours, theirs = run(eager_bf16_softmax, dtype), run(sdpa_attention_forward, dtype)
    for name, mine, sdpa, ref in zip(["output", "d query", "d key", "d value"], ours, theirs, reference):
        if dtype == torch.float32:
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert (mine - ref).abs().max() <= 2 * (sdpa - ref).abs().max() + 1e-3, name


def test_cpu_attention_is_decided_only_where_it_was_measured(tmp_path, tiny_model_dir, monkeypatch):
    """attn_implementation becomes cpu_attention's where a CPU multiplies in bf16 and batches are padded rows of a
    llama-like family; elsewhere, and wherever the user named it, it stays."""
    from transformers import GPT2Config

    from finetune_kit import cpu_attention, hardware

    data = write_jsonl(tmp_path / "rows.jsonl", _rows(4))
    other = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(other)
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)

    def attention(*flags, model=tiny_model_dir):
        cfg, made = _fast_path_decided(data, tmp_path / "o", "--use_peft", "true", "--model_name_or_path",
                                       str(model), *flags)
        assert ("attn_implementation" in made) is (cfg.model.attn_implementation == cpu_attention.NAME)
        return cfg.model.attn_implementation

    for bf16_matmul, flags, expected in [
            (True, [], cpu_attention.NAME),                                  # the bf16 base decision
            (False, ["--bf16", "true"], cpu_attention.NAME),                 # bf16 autocast
            (False, ["--bf16", "false"], None),                              # fp32: not measured
            (True, ["--attn_implementation", "sdpa"], "sdpa"),               # the user's value stands
            (True, ["--packing", "true"], None),                             # packed / padding-free rows: long
            (True, ["--padding_free", "true"], None)]:
        monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda v=bf16_matmul: v)
        assert attention(*flags) == expected, flags
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: True)
    assert attention(model=other) is None  # gpt2's attention is not llama's


def test_cpu_attention_trains_as_sdpa_does(tmp_path, tiny_model_dir, monkeypatch):
    """The guard of the CPU-attention fast path: one LoRA step on the same 8 padded rows with the base in bf16,
    attention decided (cpu_attention) and sdpa named: the same loss and LoRA update to bf16's rounding (LOSS_REL,
    UPDATE_TOL for bf16), and the decision is recorded in run_info.json."""
    from finetune_kit import cpu_attention, hardware

    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: True)
    data = write_jsonl(tmp_path / "rows.jsonl", _rows(8))
    base = {"bf16": False, "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True,
            "lora_r": 4, "lora_dropout": 0.0, "learning_rate": 0.5, "optim": "sgd", "max_steps": 1,
            "max_length": 256, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
            "logging_steps": 1, "report": False, "per_device_train_batch_size": 8,
            "train_sampling_strategy": "sequential", "eval_split_ratio": 0}
    losses, adapters = {}, {}
    for name, extra in {"decided": {}, "sdpa": {"attn_implementation": "sdpa"}}.items():
        out = tmp_path / name
        run_recipe("sft", ["--config", write_config(tmp_path / f"{name}.yaml", {**base, **extra,
                                                                              "output_dir": str(out)})])
        decided = json.loads((out / "run_info.json").read_text())["decisions"].get("attn_implementation", {})
        assert decided.get("value") == (cpu_attention.NAME if name == "decided" else None)
        losses[name] = next(row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row)
        adapters[name] = _adapter(out)
    assert max(adapters["sdpa"][k].abs().max().item() for k in adapters["sdpa"] if "lora_B" in k) > 1e-3
    assert losses["decided"] == pytest.approx(losses["sdpa"], rel=LOSS_REL[True])
    for key in adapters["sdpa"]:
        torch.testing.assert_close(adapters["decided"][key], adapters["sdpa"][key], **UPDATE_TOL[True])
