"""Attention for training with bf16 matmuls on a CPU: transformers' eager attention with its softmax kept in bf16
for short rows, sdpa for long ones.

sdpa on a CPU runs bf16 attention through its own flash-attention kernel, whose backward was 11.6% of our SFT step
(results/sft_profile.json), where eager attention's two matmuls go to oneDNN's bf16 kernels. transformers' eager
attention takes its softmax in fp32 and casts it back, so each layer keeps an fp32 and a bf16 copy of the
[heads, L, L] weights for the backward (+0.45 GB at 512 tokens in the bench); here the softmax runs in the input
dtype (PyTorch's CPU softmax accumulates bf16 in fp32 all the same) and keeps one bf16 copy, and rows longer than
EAGER_MAX_TOKENS go to sdpa, whose memory does not grow with L^2. Chosen by hardware.fast_path_decisions, where the
figures are.
"""

from __future__ import annotations

import torch

NAME = "eager_bf16_softmax"

# Query lengths above this go to sdpa: the memory peak is the longest batch's, and there eager's weights would cost
# what its speed gains (2.37 GB peak with this split vs 2.55 GB all-eager at the same speed, the 512-token bench).
EAGER_MAX_TOKENS = 256

# Families whose own eager attention is llama's line for line (transformers 5.24; tests/test_fast_paths.py checks
# the source), so this function computes what theirs does. Others (soft-capping, attention sinks, ...) keep sdpa.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "phi3", "olmo2", "granite")


def eager_bf16_softmax(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' llama `eager_attention_forward` with `softmax` in the input dtype instead of fp32; sdpa (with the
    same additive mask) for queries longer than EAGER_MAX_TOKENS."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.models.llama.modeling_llama import repeat_kv

    if query.shape[-2] > EAGER_MAX_TOKENS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)

    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.dropout(torch.softmax(weights, dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def register() -> None:
    """Make NAME a valid `attn_implementation` (with eager's additive mask) in this process (models._load calls it
    before loading a model that names it)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, eager_bf16_softmax)
    AttentionMaskInterface.register(NAME, eager_mask)
