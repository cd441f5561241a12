"""What the machine can do: fast bf16, available memory. Used to pick safe defaults."""

from __future__ import annotations

import torch


def bf16_is_fast() -> bool:
    """True where bf16 mixed precision runs natively: CUDA GPUs with bf16, CPUs with AVX512-BF16 / AMX.

    On other CPUs torch emulates bf16 and a training step gets several times slower, so fp32 is the default there.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # Not mkldnn's `_is_mkldnn_bf16_supported`: it is true on any AVX512-BW CPU, where oneDNN converts bf16 to fp32
    # in software (measured on an AVX512 Xeon without AVX512-BF16: a bf16 matmul 5x slower than fp32).
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in native)


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


FLASH = ("flash_attention_2", "flash_attention_3")


def choose_fast_paths(cfg) -> None:
    """Defaults for what the config left unset, from what is installed and the hardware (an SFT-family config).

    - attention: flash_attention_2 on a CUDA GPU with the flash-attn package and 16-bit training; else the
      library's default (sdpa).
    - packing (trl's bfd: best-fit rows of max_length, padding-free): on with flash attention, whose varlen kernels
      make a packed row cost what its examples cost alone; off otherwise (length-grouped batches instead): sdpa is
      correct on packed rows (transformers builds a block-diagonal mask from position_ids,
      tests/test_fast_paths.py) but attends over the whole row.
    - use_liger_kernel: on a CUDA GPU with liger-kernel installed (fused RMSNorm / RoPE / SwiGLU; trl keeps its own
      chunked loss).
    """
    import importlib.util

    model, args = cfg.model, cfg.training
    cuda = torch.cuda.is_available()
    if model.attn_implementation is None and cuda and (args.bf16 or args.fp16) and \
            importlib.util.find_spec("flash_attn") is not None:
        model.attn_implementation = "flash_attention_2"
    if getattr(args, "packing_auto", False):
        args.packing = str(model.attn_implementation or "").startswith(FLASH)
    if getattr(args, "use_liger_kernel_auto", False):
        args.use_liger_kernel = cuda and importlib.util.find_spec("liger_kernel") is not None


# Vocabulary columns per tile of trl's fused LM head where its tiles are folded in torch ops (no Triton: the CPU).
TORCH_LM_HEAD_TILE = 4096


def narrow_lm_head_tiles(device) -> None:
    """Narrow trl's fused-LM-head tiles (32768 vocabulary columns) to TORCH_LM_HEAD_TILE where Triton cannot run.

    There trl folds each [tokens, width] tile in torch ops whose backward holds ~8 fp32 copies of the tile: ~1 GB of
    transient peak at 1k tokens, 4 GB at 4k, the largest single term of a small model's peak. At 4096 columns the
    same step peaks 4-7x lower and runs ~25% faster, with the same loss and gradients
    (benchmarks/results/lm_head_tiles.json; the equality is a test). trl exposes no setting for it, so this sets
    its module constant; a trl without it is left alone.
    """
    try:
        import trl.trainer.utils as trl_utils
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:
        return
    wide = getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 0) > TORCH_LM_HEAD_TILE
    if wide and not _use_triton(torch.device(device)):
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = TORCH_LM_HEAD_TILE
