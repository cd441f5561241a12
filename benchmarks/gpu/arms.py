"""The kit's training arms: SFT (full, LoRA, QLoRA NF4) as ours, trl-default and trl-tuned; DPO LoRA as ours and
trl-default. Each trains a few steps on a random model built from a config and returns tokens/s, peak memory and MFU.

The arms are those of the CPU benchmark (benchmarks/arms.py: the same recipe call, trl baseline settings, LoRA
shape and data readers), plus trl-tuned: what a user who read trl's docs sets on a GPU (bf16, bfd packing, which is
padding-free, Liger where installed, no activation checkpointing, flash attention where installed). All run in one
process, one after the other, so the matrix fits a short device lease; `liger_undone` puts back what Liger patches
into transformers' Llama module, so an arm without Liger never runs Liger's kernels.

MFU (model FLOPs utilisation) = achieved model FLOP/s / peak bf16 matmul FLOP/s measured in the same run, where
    model FLOPs per trained token = 4 P + 2 P_trainable + 12 L d c   (+ 2 P + 4 L d c per extra forward: DPO's reference)
    P: weights of every matmul a token passes (nn.Linear, bitsandbytes' 4-bit ones by shape, the LM head; not the
       embedding lookup), P_trainable: those that get a weight gradient (all for full fine-tuning, LoRA's alone
       otherwise): forward 2 P, backward 2 P for activation gradients + 2 P_trainable for weight gradients;
    L layers, d attention width (heads x head_dim), c the mean causal context of a trained token (sum l(l+1)/2 / sum l
       over the examples' lengths l): QK^T and AV cost 4 d c forward, twice that backward;
    recomputation under activation checkpointing is not counted (it is MFU, not hardware FLOPs utilisation).
Trained tokens are trl's `num_tokens` (non-padding tokens seen); the rate leaves the first WARMUP steps out.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from benchmarks.arms import (
    _alpaca,
    _fixed,
    _lora_args,
    _ours,
    _pairs,
    _peft,
    _trl_args,
    reset_peak_rss,
    training_peak_rss_mb,
)

WORDS = ("the river stone cloud maple tiger lemon piano green quiet house garden light water north city market "
         "paper window music winter summer story friend number little open morning road field").split()


@dataclass
class Setting:
    """What one arm trains on: model folder, data file, shape of the batches, steps."""

    model: str  # a folder
    data: Path
    context: float  # mean causal context per token of the data (see the module docstring)
    out: str
    max_length: int
    batch: int
    steps: int
    warmup: int
    accumulation: int = 1
    learning_rate: float = 2e-4
    seed: int = 42

    @property
    def train_file(self) -> Path:  # the names benchmarks.arms' helpers read
        return self.data

    @property
    def eval_file(self) -> Path:
        return self.data


# ---- data: random words, lengths spread from max_length / 8 to max_length tokens ----

def sft_rows(tokenizer, n: int, max_length: int, seed: int) -> tuple[list[dict], float]:
    """Alpaca rows whose replies run to a spread of lengths, and their mean causal context (tokens, capped)."""
    rng = random.Random(seed)
    rows = [{"instruction": "Continue the list: " + " ".join(rng.choices(WORDS, k=8)),
             "output": " ".join(rng.choices(WORDS, k=rng.randint(max_length // 8, max_length)))} for _ in range(n)]
    return rows, mean_context(tokenizer, [r["instruction"] + " " + r["output"] for r in rows], max_length)


def dpo_rows(tokenizer, n: int, max_length: int, seed: int) -> tuple[list[dict], float]:
    rng = random.Random(seed)
    rows = [{"prompt": "Continue the list: " + " ".join(rng.choices(WORDS, k=8)),
             "chosen": " ".join(rng.choices(WORDS, k=rng.randint(max_length // 8, max_length // 2))),
             "rejected": " ".join(rng.choices(WORDS, k=rng.randint(max_length // 8, max_length // 2)))}
            for _ in range(n)]
    texts = [r["prompt"] + " " + r[side] for r in rows for side in ("chosen", "rejected")]
    return rows, mean_context(tokenizer, texts, max_length)


def mean_context(tokenizer, texts: list[str], max_length: int) -> float:
    lengths = [min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"]]
    return sum(l * (l + 1) / 2 for l in lengths) / sum(lengths)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


# ---- measurement ----

def matmul_counts(model) -> tuple[int, int]:
    """(P, P_trainable) of the MFU formula."""
    total = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            weights = module.in_features * module.out_features
            total += weights
            trainable += weights if module.weight.requires_grad else 0
    return total, trainable


def flops_per_token(model, context: float, extra_forwards: int = 0) -> float:
    config = model.config
    layers = config.num_hidden_layers
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head
    total, trainable = matmul_counts(model)
    attention = 4 * layers * width * context
    return 4 * total + 2 * trainable + 3 * attention + extra_forwards * (2 * total + attention)


class StepClock(TrainerCallback):
    """Step end times (after a device sync), trl's cumulative `num_tokens`, the model's FLOPs per token, and the
    training peak memory (the peak counter reset when training begins: loading is not training)."""

    def __init__(self, context: float, extra_forwards: int = 0):
        self.context, self.extra_forwards = context, extra_forwards
        self.ends: dict[int, float] = {}
        self.tokens: dict[int, float] = {}
        self.flops = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.flops = flops_per_token(model, self.context, self.extra_forwards)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends[state.global_step] = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens[state.global_step] = float(logs["num_tokens"])

    def summary(self, warmup: int, peak_flops: float | None, losses: list[float]) -> dict:
        last = max(self.ends)
        first = min(warmup, last - 1)  # the rate covers steps first+1 .. last
        tokens = self.tokens[last] - self.tokens.get(first, 0.0)
        seconds = self.ends[last] - self.ends.get(first, min(self.ends.values()))
        rate = tokens / seconds
        memory = {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)} \
            if torch.cuda.is_available() else {"peak_rss_training_mib": training_peak_rss_mb()}
        # significant digits, not decimals: a CPU dry run's MFU is ~1e-3, where 4 decimals lost up to 5% of it
        return {"steps": last, "timed_steps": last - first, "tokens_per_second": float(f"{rate:.5g}"),
                "tokens_per_step": round(tokens / (last - first), 1), "seconds_per_step": round(seconds / (last - first), 4),
                "flops_per_token": self.flops,
                "mfu": float(f"{rate * self.flops / peak_flops:.4g}") if peak_flops else None,
                **memory, "losses": losses}


@contextlib.contextmanager
def liger_undone():
    """Put back what Liger patches: it rebinds functions and classes of transformers' Llama module (RoPE, RMSNorm,
    the MLP, the causal-LM forward), so without this every later arm in this process would run Liger too."""
    from transformers.models.llama import modeling_llama

    classes = {name: dict(vars(value)) for name, value in vars(modeling_llama).items() if isinstance(value, type)
               and value.__module__ == modeling_llama.__name__}
    module = dict(vars(modeling_llama))
    try:
        yield
    finally:
        for name, saved in classes.items():
            cls = module[name]
            for key in set(vars(cls)) - set(saved):
                delattr(cls, key)
            for key, value in saved.items():
                if vars(cls).get(key) is not value and key not in ("__dict__", "__weakref__", "__doc__"):
                    setattr(cls, key, value)
        for key in set(vars(modeling_llama)) - set(module):
            delattr(modeling_llama, key)
        for key, value in module.items():
            if getattr(modeling_llama, key) is not value:
                setattr(modeling_llama, key, value)


def liger_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def flash_attention() -> str | None:
    return "flash_attention_2" if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") else None


def freed() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _losses(log_history: list[dict]) -> list[float]:
    return [round(row["loss"], 5) for row in log_history if "loss" in row]


# ---- the arms ----

NF4 = ("--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true", "--dtype",
       "bfloat16")  # the QLoRA paper's setup: bf16 compute and unquantized parts
METHOD_ARGS = {"full": [], "lora": _lora_args(), "qlora": [*_lora_args(), *NF4]}


def ours(recipe: str, method: str, setting: Setting, peak_flops: float | None, *extra: str) -> dict:
    """Our recipe with its defaults (the decisions it makes on this machine are returned too)."""
    from finetune_kit.trainer_setup import driver_callbacks

    clock = StepClock(setting.context, extra_forwards=1 if recipe == "dpo" else 0)
    with liger_undone(), driver_callbacks(clock):
        _, log_history = _ours(recipe, [*_fixed(setting), *METHOD_ARGS[method], "--max_steps", str(setting.steps),
                                        *extra])
    decisions = json.loads((Path(setting.out) / "run_info.json").read_text()).get("decisions", {})
    freed()
    return {**clock.summary(setting.warmup, peak_flops, _losses(log_history)),
            "decisions": {k: v["value"] for k, v in decisions.items()}, "extra_args": list(extra)}


def _trl_model(setting: Setting, method: str, tuned: bool):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"attn_implementation": flash_attention()} if tuned and flash_attention() else {}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(setting.model, **kwargs)


def trl_sft(method: str, setting: Setting, peak_flops: float | None, tuned: bool = False) -> dict:
    """trl's SFTTrainer with its defaults (the CPU benchmark's baseline), or tuned for a GPU."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = _trl_args(SFTConfig, _opts(setting))
    args.max_steps = setting.steps
    if tuned:
        args.packing, args.packing_strategy = True, "bfd"
        args.gradient_checkpointing = False
        args.use_liger_kernel = liger_available()
    clock = StepClock(setting.context)
    with liger_undone():
        trainer = SFTTrainer(model=_trl_model(setting, method, tuned), args=args, callbacks=[clock],
                             train_dataset=Dataset.from_list(_alpaca(setting.data)),
                             peft_config=_peft() if method != "full" else None)
        trainer.train()
        losses = _losses(trainer.state.log_history)
    settings = {"packing": args.packing, "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16,
                "use_liger_kernel": args.use_liger_kernel}
    del trainer
    freed()
    return {**clock.summary(setting.warmup, peak_flops, losses), "settings": settings}


def trl_dpo(setting: Setting, peak_flops: float | None) -> dict:
    """trl's DPOTrainer with its defaults and LoRA (the reference: the base with the adapter off)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = _trl_args(DPOConfig, _opts(setting))
    args.max_steps = setting.steps
    clock = StepClock(setting.context, extra_forwards=1)
    with liger_undone():
        trainer = DPOTrainer(model=_trl_model(setting, "lora", False), args=args, callbacks=[clock],
                             train_dataset=Dataset.from_list(_pairs(setting.data)),
                             processing_class=AutoTokenizer.from_pretrained(setting.model), peft_config=_peft())
        trainer.train()
        losses = _losses(trainer.state.log_history)
    del trainer
    freed()
    return clock.summary(setting.warmup, peak_flops, losses)


def _opts(setting: Setting):
    """The fields `benchmarks.arms._trl_args` reads."""
    from types import SimpleNamespace

    return SimpleNamespace(out=setting.out, batch=setting.batch, accumulation=setting.accumulation,
                           max_length=setting.max_length, learning_rate=setting.learning_rate, seed=setting.seed)

