"""What the machine can do: fast bf16, available memory. Used to pick safe defaults."""

from __future__ import annotations

import os

import torch

from finetune_kit import cpu_attention
from finetune_kit.errors import UserError

# Forces the bf16 decision (1 = on, 0 = off) whatever the hardware says: how the test suite runs as a machine of the
# other kind would (Makefile `test`), and how a user overrides a wrong guess for every recipe at once.
BF16_ENV = "FINETUNE_KIT_BF16"
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def bf16_is_fast() -> bool:
    """The bf16 default of every recipe: FINETUNE_KIT_BF16 when set, else `native_bf16()`."""
    forced = os.environ.get(BF16_ENV, "").strip().lower()
    if forced in _ON or forced in _OFF:
        return forced in _ON
    if forced:
        raise UserError(f"{BF16_ENV}={os.environ[BF16_ENV]!r}: use 1 (bf16 on) or 0 (off), or unset it to let the "
                        "hardware decide.")
    return native_bf16()


def bf16_reason() -> str:
    """Why `bf16_is_fast()` answered as it did, for the run's record."""
    if os.environ.get(BF16_ENV, "").strip():
        return f"{BF16_ENV}={os.environ[BF16_ENV]}"
    if torch.cuda.is_available():
        return "CUDA GPU " + ("with" if torch.cuda.is_bf16_supported() else "without") + " bf16"
    return "AMX on this CPU: bf16 matmuls in hardware tiles" if native_bf16() else \
        "no AMX on this CPU: fp32, bf16 autocast measured slower here (emulated, or AVX512-BF16 alone)"


def native_bf16() -> bool:
    """True where bf16 mixed precision is the faster choice: CUDA GPUs with bf16, CPUs with AMX tiles.

    Elsewhere on a CPU fp32 is the default, because bf16 autocast measured slower:
    - without AVX512-BF16, oneDNN converts bf16 in software (a bf16 matmul 5x slower than fp32 on an AVX512 Xeon);
    - with AVX512-BF16 but no AMX, the dot-product instructions do not pay for autocast's casts: LoRA SFT on the
      embedded SmolLM2, 12 steps, 42-44 s in bf16 vs 23-26 s in fp32 on a 2-core Xeon (session 8); SFT + reward
      model 623 s vs 224 s, PPO 535 s vs 383 s (benchmarks/results/rlhf_seeds.json).
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # Not mkldnn's `_is_mkldnn_bf16_supported`: it is true on any AVX512-BW CPU.
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_bf16_matmul() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): a bf16 matmul there ran 2-3x the fp32 FLOP/s of
    the same shapes (SmolLM2's MLP and LM head, 2-core EPYC, session 12), where emulated bf16 is ~5x slower than
    fp32. FINETUNE_KIT_BF16 forces it like the bf16 decision."""
    forced = os.environ.get(BF16_ENV, "").strip().lower()
    if forced in _ON or forced in _OFF:
        return forced in _ON
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and " avx512_bf16" in line for line in info)
    except OSError:  # not Linux: no claim
        return False


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


FLASH = ("flash_attention_2", "flash_attention_3")
# Batch lengths on a CPU with bf16 matmuls are rounded up to these (fast_path_decisions: oneDNN's per-shape kernels):
# 64 from max_length 512 (the 128-row alpaca bench: 189 tokens/s at 2.38 GB peak; 16 gave 185 at 2.83 GB), 16 below
# (make sft's ~40-token rows, max_length 256: 118 s of training at 16, 134 s at 64, 112 s unpadded).
CPU_BF16_PAD, CPU_BF16_PAD_SHORT = 64, 16


def _model_type(model_args) -> str | None:
    """The checkpoint's `model_type` from its config, or None where it cannot be read here (loading says why)."""
    from transformers import AutoConfig

    from finetune_kit.models import resolve_checkpoint

    try:
        return AutoConfig.from_pretrained(resolve_checkpoint(model_args.model_name_or_path),
                                          revision=model_args.model_revision).model_type
    except (OSError, ValueError, UserError):
        return None


def fast_path_decisions(cfg, user: set[str]) -> list:
    """Defaults for the keys an SFT-family config left unset (`user`: the keys set), from what is installed and the
    hardware; returned as decisions (finetune_kit.decisions), applied by the caller.

    - attention: flash_attention_2 on a CUDA GPU with the flash-attn package and 16-bit training; else the
      library's default (sdpa).
    - packing (trl's bfd: best-fit rows of max_length, padding-free): on with flash attention, whose varlen kernels
      make a packed row cost what its examples cost alone; off otherwise (length-grouped batches instead): sdpa is
      correct on packed rows (transformers builds a block-diagonal mask from position_ids,
      tests/test_fast_paths.py) but attends over the whole row.
    - dtype (LoRA on a CPU with bf16 dot products, `cpu_bf16_matmul`): the frozen base loaded in bf16, adapters in
      fp32 (peft's default); the SFT LM head then runs in bf16 too (finetune_kit.lm_head).
    - pad_to_multiple_of (CPU, bf16 matmuls: a bf16 base or bf16 autocast, padded batches): 64 (16 under max_length
      512, where rows are short and 64 would be mostly padding). oneDNN runs the CPU's bf16 matmuls and builds a
      kernel for every new shape and caches it; length-grouped batches of every length from 1 to max_length make
      hundreds of shapes. Lengths rounded up to 64 leave a few: the 128-row SFT bench at
      micro-batch 1 went from 148 to 189 tokens/s and its peak RSS from 3.26 to 2.38 GB, where the cache and the
      heap had grown every step (no gain in fp32: MKL's fp32 kernels keep no per-shape state). trl does the same
      for Neuron's compiled shapes (`pad_to_multiple_of: auto` -> 128 there). Padding is masked: same loss.
    - attn_implementation (CPU, bf16 matmuls, padded batches, a family whose attention is llama's):
      finetune_kit.cpu_attention, eager attention with its softmax in bf16 up to EAGER_MAX_TOKENS, sdpa above. sdpa's
      CPU flash-attention backward was 11.6% of our step (results/sft_profile.json); eager attention's matmuls run
      on oneDNN's bf16 kernels. On the 128-row alpaca bench at 512 tokens (results/sft_fast_path_probe.json)
      transformers' eager beat sdpa by 1.05-1.13x in four paired rounds but kept +0.45 GB (an fp32 and a bf16 copy
      of the [heads, L, L] weights); the bf16 softmax 1.08x at +0.15 GB; with sdpa above 256 tokens the same speed
      (168.6 / 159.5 tokens/s against 168.9 / 153.0 in two paired rounds) at 2.37 / 2.47 GB against 2.55 / 2.53.
    - use_liger_kernel: on a CUDA GPU with liger-kernel installed (fused RMSNorm / RoPE / SwiGLU; trl keeps its own
      chunked loss).
    """
    import importlib.util

    from finetune_kit.decisions import Decision

    model, args = cfg.model, cfg.training
    cuda = torch.cuda.is_available()
    made = []
    attention = model.attn_implementation
    if "attn_implementation" not in user and cuda and (args.bf16 or args.fp16) and \
            importlib.util.find_spec("flash_attn") is not None:
        attention = "flash_attention_2"
        made.append(Decision("attn_implementation", attention, "CUDA, 16-bit training, flash-attn installed"))
    if "packing" not in user:
        flash = str(attention or "").startswith(FLASH)
        made.append(Decision("packing", flash, "flash attention: packed rows cost what their examples cost" if flash
                             else "no flash attention: length-grouped padded batches instead"))
    if "dtype" not in user and model.use_peft and not (model.load_in_4bit or model.load_in_8bit) \
            and model.dtype in (None, "float32") and not has_accelerator() and cpu_bf16_matmul():
        made.append(Decision("dtype", "bfloat16", "LoRA on a CPU with bf16 dot-product instructions: the frozen base "
                             "weights in bf16 multiply ~2x faster than fp32 and need no cast per step (autocast "
                             "recasts frozen weights on every call); adapters, gradients and optimizer stay fp32"))
    bf16_matmuls = args.bf16 or any(d.key == "dtype" for d in made) or model.dtype == "bfloat16"
    packing = next((d.value for d in made if d.key == "packing"), args.packing)
    # CPU bf16 matmuls on padded batches: where eager attention and rounded batch lengths both pay
    cpu_bf16_padded = bf16_matmuls and not has_accelerator() and not packing and not args.padding_free
    if "attn_implementation" not in user and attention is None and cpu_bf16_padded \
            and _model_type(model) in cpu_attention.FAMILIES:
        made.append(Decision("attn_implementation", cpu_attention.NAME, "bf16 matmuls on a CPU: eager "
                             "attention's matmuls run on oneDNN's bf16 kernels, faster than sdpa's CPU flash "
                             "attention here; softmax kept in bf16 (one copy of the weights a layer), and sdpa for "
                             f"rows over {cpu_attention.EAGER_MAX_TOKENS} tokens, where eager's [L, L] weights cost "
                             "memory"))
    if "pad_to_multiple_of" not in user and cpu_bf16_padded:
        pad = CPU_BF16_PAD if (args.max_length or 0) >= 512 else CPU_BF16_PAD_SHORT
        made.append(Decision("pad_to_multiple_of", pad, "bf16 matmuls on a CPU: oneDNN builds and caches a kernel "
                             f"per shape, so batch lengths are rounded up to {pad} (a few shapes, not hundreds; "
                             f"padding is masked out of the loss; {CPU_BF16_PAD_SHORT} under max_length 512, where "
                             "rows are short)"))
    if "use_liger_kernel" not in user:
        liger = cuda and importlib.util.find_spec("liger_kernel") is not None
        made.append(Decision("use_liger_kernel", liger, "CUDA with liger-kernel installed" if liger
                             else "needs a CUDA GPU and the liger-kernel package"))
    return made


# Vocabulary columns per tile of trl's fused LM head where its tiles are folded in torch ops (no Triton: the CPU).
TORCH_LM_HEAD_TILE = 4096


def narrow_lm_head_tiles(device):
    """Narrow trl's fused-LM-head tiles (32768 vocabulary columns) to TORCH_LM_HEAD_TILE where Triton cannot run.

    There trl folds each [tokens, width] tile in torch ops whose backward holds ~8 fp32 copies of the tile: ~1 GB of
    transient peak at 1k tokens, 4 GB at 4k, the largest single term of a small model's peak. At 4096 columns the
    same step peaks 4-7x lower and runs ~25% faster, with the same loss and gradients
    (benchmarks/results/lm_head_tiles.json; the equality is a test). trl exposes no setting for it, so this sets
    its module constant; a trl without it is left alone. Returns the decision, or None when nothing changed.
    """
    from finetune_kit.decisions import Decision

    try:
        import trl.trainer.utils as trl_utils
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:
        return None
    wide = getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 0) > TORCH_LM_HEAD_TILE
    if wide and not _use_triton(torch.device(device)):
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = TORCH_LM_HEAD_TILE
        return Decision("lm_head_tile_columns", TORCH_LM_HEAD_TILE, f"no Triton on {device}: trl's fused LM head "
                        "folds its tiles in torch ops, and narrower tiles hold less memory")
    return None
