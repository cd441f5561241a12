"""What the machine can do: fast bf16, available memory. Used to pick safe defaults."""

from __future__ import annotations

import torch


def bf16_is_fast() -> bool:
    """True where bf16 mixed precision runs natively: CUDA GPUs with bf16, CPUs with AVX512-BF16 / AMX.

    On other CPUs torch emulates bf16 and a training step gets several times slower, so fp32 is the default there.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
