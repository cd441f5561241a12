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
