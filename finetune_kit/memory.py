"""Peak-memory estimate of a causal-LM training run, from the model's config alone (no weights are read).

The model is built on PyTorch's `meta` device, so parameter counts (and LoRA's trainable count) are exact while
nothing is allocated. The estimate adds up:

- weights: every parameter at the load dtype; 4-bit linear weights at ~0.5 byte (+ NF4 block scales), 8-bit at 1;
- gradients + AdamW state: 4 + 8 bytes per trainable parameter (fp32), + 4 for an fp32 master copy when full
  fine-tuning runs in 16-bit weights;
- activations kept for the backward pass: ~34 * hidden bytes per token per layer in 16-bit (Korthikanti et al.,
  2022), doubled in fp32, plus 5 * heads * length for the attention scores where no fused attention kernel keeps
  them out of memory (the CPU; on CUDA sdpa / flash attention do); with activation checkpointing one layer's worth
  plus each layer's input;
- logits: batch x length x vocabulary in fp32, about three copies (logits, log-softmax, their gradient);
- runtime: ~0.8 GiB for the Python process, torch and the CUDA context.

It is an estimate, good to a factor that the tests pin down on real runs, meant to catch "this will not fit" before
a GPU is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 2**30
RUNTIME_BYTES = int(0.8 * GIB)
# Below this share of the peak, activation checkpointing would save too little to pay for its recompute.
CHECKPOINTING_MIN_SHARE = 0.1
# On a CPU, compute is short and RAM plentiful: checkpointing (~25% more compute) only past this share of RAM.
CPU_CHECKPOINTING_MEMORY_SHARE = 0.5


@dataclass
class MemoryEstimate:
    weights: int
    optimizer: int  # gradients + optimizer state (+ master weights)
    activations: int
    logits: int
    runtime: int
    total_params: int
    trainable_params: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations + self.logits + self.runtime

    def describe(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.2f}"
                          for name in ("weights", "optimizer", "activations", "logits", "runtime"))
        return (f"estimated peak memory {self.total / GIB:.2f} GiB ({parts}; {self.total_params / 1e6:.1f}M "
                f"parameters, {self.trainable_params / 1e6:.2f}M trainable)")


def count_parameters(config, lora_r: int | None, lora_targets) -> tuple[int, int, int]:
    """(all parameters, trainable parameters, parameters in linear layers) of a causal LM built on `meta`."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings()
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output]
    linear_params = sum(m.weight.numel() for _, m in linears)
    if lora_r is None:
        return total, total, linear_params
    if lora_targets in ("all-linear", ["all-linear"]):
        chosen = linears
    else:
        targets = [lora_targets] if isinstance(lora_targets, str) else list(lora_targets or [])
        chosen = [(n, m) for n, m in linears if n.split(".")[-1] in targets]
    return total, sum(lora_r * (m.in_features + m.out_features) for _, m in chosen), linear_params


def lora_targets_problem(config, lora_targets, model_name: str) -> str | None:
    """Targets that match no module of the model (peft matches a module name or a dotted suffix of one), found on
    the `meta` device before any weights load; None when every target matches (a string is a regex: peft's)."""
    import re

    import torch
    from transformers import AutoModelForCausalLM

    if not lora_targets or lora_targets == "all-linear" or list(lora_targets) == ["all-linear"]:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [name for name, _ in model.named_modules()]
    if isinstance(lora_targets, str):  # peft: one regex, full match on the module name
        missing = [] if any(re.fullmatch(lora_targets, n) for n in names) else [lora_targets]
    else:
        missing = [t for t in lora_targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return None
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    return (f"lora_target_modules {missing} match no module of {model_name} (its linear layers: {', '.join(linear)}); "
            "use [all-linear] or those names.")


def estimate(config, model_args, batch_size: int, seq_length: int, bf16: bool, activation_checkpointing: bool,
             sequences_per_example: int = 1, fused_attention: bool | None = None) -> MemoryEstimate:
    """Peak training memory for one micro-batch of `batch_size` examples of `seq_length` tokens.

    `sequences_per_example` is 2 for preference pairs (chosen and rejected go through the model together).
    """
    text = config.get_text_config()
    lora_r = model_args.lora_r if model_args.use_peft else None
    total, trainable, linear = count_parameters(config, lora_r, model_args.lora_target_modules)
    # Weights stay in their load dtype; bf16 autocast changes the activations, not the stored weights.
    dtype_bytes = 2 if model_args.dtype in ("bfloat16", "float16") else 4
    if model_args.load_in_4bit:
        weights = (total - linear) * dtype_bytes + int(linear * (0.5 + 0.5 / 64 * 2))  # NF4 + per-block scales
    elif model_args.load_in_8bit:
        weights = (total - linear) * dtype_bytes + linear
    else:
        weights = total * dtype_bytes
    optimizer = trainable * (4 + 8 + (4 if dtype_bytes == 2 and not model_args.use_peft else 0))

    tokens = batch_size * seq_length * sequences_per_example
    act_bytes = 1 if bf16 else 2  # the formula counts 16-bit activations
    if fused_attention is None:
        import torch

        fused_attention = torch.cuda.is_available()
    scores = 0 if fused_attention else 5 * text.num_attention_heads * seq_length
    per_layer = tokens * (34 * text.hidden_size + scores) * act_bytes
    layers = text.num_hidden_layers
    if activation_checkpointing:
        activations = per_layer + layers * tokens * text.hidden_size * 2 * act_bytes
    else:
        activations = per_layer * layers
    logits = 3 * tokens * text.vocab_size * 4
    return MemoryEstimate(weights, optimizer, activations, logits, RUNTIME_BYTES, total, trainable)


def device_memory() -> int:
    """Total memory of the first GPU, else of the machine: the same figure on every rank of a node."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def activation_checkpointing(cfg, user: set[str], seq_length: int, sequences_per_example: int = 1):
    """The `activation_checkpointing` decision where the config left it unset (`user`: the keys set), or None.

    On a GPU: on, as in trl and LLaMA-Factory, unless the longest micro-batch's activations are under a tenth of the
    estimated peak without it: then recomputing them (~20-30% more compute) would cut the peak by almost nothing.
    Always on when the estimate passes 80% of the device's memory. On a CPU (no accelerator), where compute is what
    is short: off until the estimate passes half of RAM. Speed-first runs that know they fit set
    `activation_checkpointing: false`. Decided from totals, not free memory, so every rank decides the same.
    """
    from finetune_kit.decisions import Decision
    from finetune_kit.hardware import has_accelerator

    args = cfg.training
    if user & {"activation_checkpointing", "gradient_checkpointing"}:
        return None
    # FSDP recomputes block activations itself (fsdp_activation_checkpointing, set by `accelerate launch` from the
    # launcher config); transformers refuses both at once.
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true" or \
            (args.fsdp_config or {}).get("activation_checkpointing"):
        return None
    from transformers import AutoConfig

    from finetune_kit.models import resolve_checkpoint

    try:
        model_config = AutoConfig.from_pretrained(resolve_checkpoint(cfg.model.model_name_or_path),
                                                  revision=cfg.model.model_revision,
                                                  trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        return None  # unreadable config: the model load right after reports it, with the recipe's own clear error
    result = estimate(model_config, cfg.model, args.per_device_train_batch_size, seq_length, bool(args.bf16), False,
                      sequences_per_example=sequences_per_example)
    micro_batch = (f"activations of a {args.per_device_train_batch_size} x {seq_length}-token micro-batch "
                   f"~{result.activations / GIB:.2f} GiB of an estimated {result.total / GIB:.1f} GiB peak without it")
    if not has_accelerator():  # the 2-core CPU measured 25% slower with it (benchmarks/results/trl_sweep.json)
        on = result.total > CPU_CHECKPOINTING_MEMORY_SHARE * device_memory()
        return Decision("activation_checkpointing", on, f"CPU: {micro_batch}, "
                        f"{'over' if on else 'under'} half of {device_memory() / GIB:.0f} GiB RAM; set "
                        "activation_checkpointing to choose")
    on = result.activations >= CHECKPOINTING_MIN_SHARE * result.total or result.total > 0.8 * device_memory()
    return Decision("activation_checkpointing", on, f"{micro_batch}; set activation_checkpointing to choose")


def longest_sequence(dataset, max_length: int | None, packing: bool = False) -> int:
    """Length of the longest training sequence: max_length when packing, when trl tokenizes later, or for a stream
    (a stream is not read ahead)."""
    if packing or dataset.column_names is None or "input_ids" not in dataset.column_names or \
            not hasattr(dataset, "__len__"):
        return max_length or 1024
    longest = max(map(len, dataset["input_ids"]), default=1)
    return min(longest, max_length) if max_length else longest


def available_memory() -> tuple[int, str]:
    """Free memory of the first GPU when there is one, else the RAM available to new processes."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free, f"free on {torch.cuda.get_device_name(0)}"
    try:
        with open("/proc/meminfo") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        return info["MemAvailable"], "RAM available"
    except (OSError, KeyError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
