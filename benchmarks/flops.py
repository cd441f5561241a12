"""Model FLOPs of a LoRA fine-tuning epoch, and this machine's matmul peak: the two halves of an MFU figure.

MFU here = (model FLOPs of the epoch / train_runtime) / (the best FLOP/s a large torch.matmul reaches in the same
run, same dtype, same threads). Model FLOPs, not hardware FLOPs: activation checkpointing's recomputed forward is
not counted, so a run that recomputes shows a lower MFU for the same work, as it should.
"""

from __future__ import annotations

import time


def lora_training_flops(lengths: list[int], frozen_params: int, lora_params: int, layers: int,
                        attention_width: int) -> int:
    """Forward + backward FLOPs of one pass over rows of these token `lengths` (padding excluded).

    - frozen weights (every linear of the decoder and the LM head; an embedding lookup is not a matmul): forward
      2 FLOPs per parameter per token, backward 2 more for the input gradient and none for the (frozen) weight
      gradient: 4 x params x tokens, not the 6 x of full training;
    - LoRA adapters (A and B of each adapted linear): trained, so forward, input and weight gradients: 6 x;
    - attention scores and the weighted sum (QK^T, AV): 2 x 2 x width FLOPs per pair of positions in a row per layer
      forward, x 3 with the backward: 12 x layers x width x T^2 per row of T tokens. Counted over the full T x T
      square (PaLM's convention), though a causal kernel may skip the masked half.
    """
    tokens = sum(lengths)
    return (4 * frozen_params + 6 * lora_params) * tokens + 12 * layers * attention_width * sum(t * t for t in lengths)


def lora_shape(model_dir: str, r: int) -> dict:
    """frozen_params / lora_params / layers / attention_width of a causal LM with LoRA rank `r` on every linear of
    its decoder layers (peft's "all-linear": the LM head excluded), counted on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            frozen += module.in_features * module.out_features
            if name != "lm_head" and not name.endswith(".lm_head"):
                lora += r * (module.in_features + module.out_features)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"frozen_params": frozen, "lora_params": lora, "layers": config.num_hidden_layers,
            "attention_width": config.num_attention_heads * head_dim}


def matmul_peak(dtype_name: str = "float32", size: int = 2048, seconds: float = 3.0) -> dict:
    """The best FLOP/s of a size x size torch.matmul in `dtype_name` with this process's threads, over repeats for
    about `seconds` (the best single repeat, so a neighbour's burst lowers it less)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up: oneDNN picks its kernel
    best, start, repeats = float("inf"), time.perf_counter(), 0
    while time.perf_counter() - start < seconds or repeats < 3:
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
        repeats += 1
    return {"dtype": dtype_name, "size": size, "threads": torch.get_num_threads(), "repeats": repeats,
            "flops_per_second": 2 * size ** 3 / best}


def mfu(flops: float, seconds: float, peak: dict) -> dict:
    achieved = flops / seconds
    return {"model_flops": flops, "achieved_flops_per_second": achieved,
            f"mfu_vs_{peak['dtype']}_peak": achieved / peak["flops_per_second"]}
