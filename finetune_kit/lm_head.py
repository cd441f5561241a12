"""SFT's LM head on a device without Triton (the CPU): score only the labelled positions and keep their logits.

trl's fused LM head (`trl.trainer.utils.add_fused_lm_head`) never builds the full logits: it projects the hidden states
through the head in vocabulary tiles and, in the backward, projects them again. On a Triton device it scores only the
positions whose label is not -100; elsewhere it scores every position (prompt, padding), because a varying count would
recompile Neuron's tiles. On a CPU in eager mode nothing recompiles, and a 2 x 512-token micro-batch's logits fit in
a few hundred MB of RAM, so the head can run once per labelled token and keep the logits for the backward:

- trl on the CPU: every position, 3 head matmuls (forward, recompute, input gradient) plus its tile bookkeeping;
- here: labelled positions only, 2 head matmuls (forward, input gradient), one fused log-softmax.

The head is ~21% of SmolLM2-135M's forward multiply-adds (576 x 49,152 per token); SFT rows are ~27% prompt.
The logits are fp32 as in trl (a frozen bf16 head is copied to fp32 once). Same loss, log-probs, entropy, top-1 and
gradients as trl's path (tests/test_fast_paths.py). Batches whose labelled logits would pass LOGITS_BUDGET, a
trainable 16-bit head, soft-capped or scaled logits, MoE router losses and pre-shifted labels go to trl's path.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

# Labelled tokens x vocabulary x 4 bytes of fp32 logits one micro-batch may keep for its backward (the log-softmax
# output; the logits themselves and their gradient are transient of the same size).
LOGITS_BUDGET = 512 * 2**20


def score_label_positions(trainer):
    """Give an SFT trainer's model, patched by trl with its fused LM head, the labelled-positions path on a device
    without Triton. Returns the decision, or None when the trainer, model or device is not one it applies to."""
    from finetune_kit.decisions import Decision

    try:
        from trl import SFTTrainer
        from trl.kernels.chunked_logprob import _use_triton
        from trl.trainer.utils import FusedCausalLMOutput
    except ImportError:
        return None
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    trl_forward = getattr(model, "forward", None)
    # trl's patched forward carries the model's forward's name (functools.wraps); its code object keeps its own
    fused = getattr(getattr(getattr(trl_forward, "__func__", None), "__code__", None), "co_name", "") == "_fused_forward"
    if not isinstance(trainer, SFTTrainer) or not fused \
            or _use_triton(trainer.args.device) or not _plain_logits(model.config.get_text_config()):
        return None

    patch_forward(model, FusedCausalLMOutput)
    return Decision("lm_head_scoring", "labelled positions", f"no Triton on {trainer.args.device}: the LM head "
                    "scores only tokens with a label and keeps their fp32 logits for the backward (up to "
                    f"{LOGITS_BUDGET // 2**20} MiB of logits a micro-batch; trl's tiles beyond)")


def patch_forward(model, output_type) -> None:
    """Wrap trl's fused forward of `model`: labelled positions scored here, everything else passed to trl's."""
    trl_forward = model.forward
    copies = {}

    def fp32(tensor):
        """A frozen 16-bit head (a bf16 base on a CPU) is copied to fp32 once, not cast on every step."""
        if tensor.dtype == torch.float32:
            return tensor
        key = (tensor.data_ptr(), tensor._version)
        if key not in copies:
            copies.clear()  # one head: a changed weight replaces its copy
            copies[key] = tensor.detach().float()
        return copies[key]

    @functools.wraps(type(model).forward)  # generate validates its keyword arguments against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if not fused_lm_head or labels is None or shift_labels is not None or kwargs.get("output_router_logits") \
                or (head.weight.dtype != torch.float32 and head.weight.requires_grad) \
                or int((labels != -100).sum()) * head.weight.shape[0] * 4 > LOGITS_BUDGET:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(head.weight.device)
        mask = labels != -100
        with torch.autocast(head.weight.device.type, enabled=False):  # fp32 logits, as trl's _addmm_fp32 keeps them
            weight, bias = fp32(head.weight), None if head.bias is None else fp32(head.bias)
            log_probs = F.linear(hidden.to(head.weight.device)[mask].float(), weight, bias).log_softmax(-1)
        picked = log_probs.gather(1, labels[mask].unsqueeze(1)).squeeze(1)
        with torch.no_grad():  # trl's SFT logs these two as metrics only
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            is_top1 = log_probs.argmax(-1) == labels[mask]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        # masked_scatter keeps an all-ignored micro-batch connected to the graph (a differentiable zero), as trl does
        per_token = {"log_probs": picked, "entropy": entropy, "is_top1": is_top1}
        return output_type(loss=-picked.sum() / count, label_mask=mask,
                           **{name: values.new_zeros(mask.shape).masked_scatter(mask, values)
                              for name, values in per_token.items()})

    model.forward = types.MethodType(forward, model)


def _plain_logits(text_config) -> bool:
    """The logits are the head's output as is: no soft-capping or scale (trl's path applies those)."""
    scales = [getattr(text_config, key, None) for key in ("logit_scale", "output_multiplier", "lm_head_multiplier",
                                                          "logits_scaling")]
    return getattr(text_config, "final_logit_softcapping", None) is None and all(s in (None, 1, 1.0) for s in scales)
