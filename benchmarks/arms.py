"""The arms of `python -m benchmarks`: for each task, the plain library baseline and our recipe, plus the shared
data subset and held-out scoring that make the two comparable.

Each arm trains one epoch over the same training subset (so the same examples, trained tokens and step count), then
is scored by the same function on the same held-out rows. A baseline is what a user of the library writes first:
only what the comparison fixes (data, epoch, batch, accumulation, max length, LoRA shape, learning rate, seed) is
set, plus `use_cpu` where there is no GPU (trl's bf16 default refuses to start on a CPU otherwise).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}


# ---- data: one seeded subset, written once, read by both arms ----

def _read_rows(path: Path) -> list[dict]:
    """The rows as our recipes read them (finetune_kit's reader: unquoted TSV, JSON / JSON lines)."""
    from finetune_kit.data.readers import read_file

    return [row for _, row in read_file(path)]


def write_subsets(data: Path, examples: int, eval_examples: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """The first `examples` rows of a seeded shuffle for training, the next `eval_examples` held out."""
    rows = _read_rows(data)
    random.Random(seed).shuffle(rows)
    if len(rows) < examples + eval_examples:
        raise SystemExit(f"{data} has {len(rows)} rows; --examples {examples} + --eval_examples {eval_examples} "
                         "do not fit")
    paths = []
    for name, part in (("train", rows[:examples]), ("eval", rows[examples:examples + eval_examples])):
        path = folder / f"{name}{data.suffix}"
        if data.suffix == ".tsv":  # unquoted, as read: a field holding a tab or newline is an error, not a quote
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", quoting=csv.QUOTE_NONE,
                                        quotechar=None, lineterminator="\n")
                writer.writeheader()
                writer.writerows(part)
        else:
            path.write_text(json.dumps(part))
        paths.append(path)
    return paths[0], paths[1]


def _normalised(path: Path, normaliser) -> list[dict]:
    """Rows exactly as our recipes read them, so both arms train on the same text."""
    return [normaliser(row, f"{path} row {i}") for i, row in enumerate(_read_rows(path), 1)]


def _alpaca(path: Path) -> list[dict]:
    from finetune_kit.data.formats import normalise

    return _normalised(path, lambda row, where: normalise(row, "alpaca", where))


def _pairs(path: Path) -> list[dict]:
    from finetune_kit.data import normalise_pair

    return _normalised(path, normalise_pair)


_PEAK_BEFORE_TRAINING: list[float] = []


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS count (VmHWM) so that it covers training only, not loading: a load reads the
    whole checkpoint (16-bit on disk, then quantized) and that transient would hide what training holds. The peak
    so far is kept: on Linux getrusage's ru_maxrss follows the reset too, so it is the only record of loading."""
    before = training_peak_rss_mb()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return
    if before is not None:
        _PEAK_BEFORE_TRAINING.append(before)


def training_peak_rss_mb() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return round(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024, 1)


def _reset_callback():
    """A Trainer callback for the recipe arms: the training peak starts with training."""
    from transformers import TrainerCallback

    class ResetPeakAtTrainBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_rss()

    return ResetPeakAtTrainBegin()


def _log(log_history: list[dict], runtime: float, trained_tokens: float | None = None) -> dict:
    losses = [row["loss"] for row in log_history if "loss" in row]
    tokens = trained_tokens or max((row.get("num_tokens", 0) for row in log_history), default=0)
    from finetune_kit.runs import peak_memory_mb

    # rss: the whole process up to the end of training (loading included); rss_training: from train begin
    memory = {**peak_memory_mb(), "rss_training": training_peak_rss_mb(),
              "rss_before_training": max(_PEAK_BEFORE_TRAINING, default=None)}
    memory["rss"] = max(memory["rss"], memory["rss_training"] or 0, memory["rss_before_training"] or 0)
    return {"train_runtime": runtime, "trained_tokens": tokens, "tokens_per_second": tokens / runtime,
            "mean_train_loss": sum(losses) / len(losses), "losses": losses, "peak_memory_mb": memory}


def micro_batched(opts, micro_batch: int):
    """`opts` with micro-batches of `micro_batch` rows and the accumulation that keeps the effective batch (rows per
    optimizer step) the comparison fixes. The micro-batch is each tuned arm's own setting: a careful user picks it
    (ours and trl-tuned); the peers keep the harness's."""
    effective = opts.batch * opts.accumulation
    if effective % micro_batch:
        raise SystemExit(f"micro-batch {micro_batch} does not divide the effective batch {effective}")
    return argparse.Namespace(**{**vars(opts), "batch": micro_batch, "accumulation": effective // micro_batch})


def _trl_args(config_class, opts, **settings):
    """A trl config with only what the comparison fixes set (and use_cpu without a GPU: trl's bf16 needs it), plus
    `settings` (a tuned arm's; `micro_batch` rows per micro-batch, same effective batch)."""
    import torch

    if "micro_batch" in settings:
        opts = micro_batched(opts, int(settings.pop("micro_batch")))
    return config_class(output_dir=opts.out, num_train_epochs=1, per_device_train_batch_size=opts.batch,
                        gradient_accumulation_steps=opts.accumulation, max_length=opts.max_length,
                        learning_rate=opts.learning_rate, seed=opts.seed, logging_steps=1, save_strategy="no",
                        report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                        **settings)


def _ours(recipe: str, argv: list[str]) -> tuple[dict, list[dict]]:
    from finetune_kit import recipes
    from finetune_kit.trainer_setup import driver_callbacks

    with driver_callbacks(_reset_callback()):
        metrics = recipes.get(recipe).load().main([*argv, "--num_train_epochs", "1", "--logging_steps", "1", "--save_strategy",
                                        "no", "--report_to", "none", "--report", "false", "--disable_tqdm", "true",
                                            "--overwrite_output_dir", "true"])
    out = argv[argv.index("--output_dir") + 1]
    return metrics, json.loads((Path(out) / "log_history.json").read_text())


def _fixed(opts) -> list[str]:
    """Recipe arguments every arm of ours shares: what the comparison fixes, all rows trained (no held-out split).
    model_folder builds the bench's random model on first use; any other name passes through."""
    return ["--model_name_or_path", model_folder(opts.model), "--dataset_name", str(opts.train_file), "--output_dir",
            opts.out, "--per_device_train_batch_size", str(opts.batch), "--gradient_accumulation_steps",
            str(opts.accumulation), "--learning_rate", str(opts.learning_rate), "--seed", str(opts.seed),
            "--max_length", str(opts.max_length), "--eval_split_ratio", "0"]


def _lora_args() -> list[str]:
    return ["--use_peft", "true", "--lora_target_modules", "all-linear", *[f"--{k}={v}" for k, v in LORA.items()]]


def _peft():
    from peft import LoraConfig

    return LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")


def _sft_lora(opts, *extra: str) -> dict:
    """Our SFT recipe with LoRA (the SFT arm, and the QLoRA task's arms with their `extra` settings)."""
    import yaml

    metrics, log_history = _ours("sft", [*_fixed(opts), *_lora_args(), *extra])
    config = yaml.safe_load((Path(opts.out) / "config.yaml").read_text())
    return {**_log(log_history, metrics["train_runtime"]), "bf16": bool(config.get("bf16")),
            "dtype": config.get("dtype") or "float32",
            "decisions": json.loads((Path(opts.out) / "run_info.json").read_text()).get("decisions")}


# ---- SFT: SFTTrainer defaults vs recipes/sft.py ----

def reply_logprob(model, tokenizer, prompt, reply, max_length: int) -> tuple[float, int]:
    """Summed log-probability of `reply` given `prompt` (both text, or both chat turns rendered with the chat
    template), truncated to max_length, and its token count."""
    import torch

    if isinstance(prompt, str):
        full = tokenizer(prompt + reply)["input_ids"][:max_length]
        prompt_ids = tokenizer(prompt)["input_ids"]
    else:
        full = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"][:max_length]
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
    labels = list(full)
    labels[:len(prompt_ids)] = [-100] * min(len(prompt_ids), len(full))
    n = sum(1 for t in labels[1:] if t != -100)
    if n == 0:  # max_length cut the whole reply: nothing to score (the model's mean over no tokens would be NaN)
        return 0.0, 0
    device = next(model.parameters()).device  # a trained baseline is still on its GPU, the reference on the CPU
    with torch.no_grad():
        out = model(input_ids=torch.tensor([full], device=device), labels=torch.tensor([labels], device=device))
    return -out.loss.item() * n, n


def response_loss(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """Mean per-token loss on the assistant replies of held-out conversations (the prompt given), fp32."""
    model.eval()
    scored = [reply_logprob(model, tokenizer, row["messages"][:-1], row["messages"][-1:], max_length) for row in rows]
    return -sum(logp for logp, _ in scored) / max(sum(n for _, n in scored), 1)


def sft_baseline(opts) -> dict:
    return _sft_trl(opts)


# trl-tuned: the best of the documented SFTConfig settings swept by `python -m benchmarks trl_sweep` on a machine of
# this kind (trl_sweep_file: CPUs whose bf16 is native, i.e. AMX, and the others differ in what pays), run exactly as
# swept ("best"'s settings, fp32 unless they name bf16); TRL_TUNED where no sweep of this kind was recorded, with bf16
# where hardware.py calls it native (AMX or a bf16 GPU).
TRL_TUNED = {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}
RESULTS = ROOT / "benchmarks" / "results"


def trl_sweep_file(native_bf16: bool) -> Path:
    return RESULTS / ("trl_sweep_native_bf16.json" if native_bf16 else "trl_sweep.json")


def trl_tuned_settings() -> dict:
    from finetune_kit.hardware import bf16_is_fast

    path = trl_sweep_file(bf16_is_fast())
    sweep = json.loads(path.read_text()) if path.is_file() else {}
    best = sweep.get("points", {}).get(sweep.get("best"), {}).get("settings")
    return {"bf16": bf16_is_fast(), **TRL_TUNED} if best is None else {"bf16": False, **best}


# Settings of a trl arm that are the model's load arguments (model_init_kwargs for a model named by string)
MODEL_LOAD_KEYS = ("dtype", "attn_implementation")


def sft_trl_tuned(opts) -> dict:
    return _sft_trl(opts, **trl_tuned_settings())


def _sft_trl(opts, **settings) -> dict:
    """trl's SFTTrainer on the subset, with its defaults except what the comparison fixes and `settings`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from finetune_kit.models import resolve_checkpoint

    # `dtype`, `attn_implementation`: the model loaded so (what `model_init_kwargs` does for a model named by
    # string); the rest are SFTConfig fields
    load = {k: settings[k] for k in MODEL_LOAD_KEYS if k in settings}
    args = _trl_args(SFTConfig, opts, **{k: v for k, v in settings.items() if k not in load})
    rows = _alpaca(opts.train_file)
    if args.padding_free and not args.packing:  # trl then wants rows already cut at max_length (its own message)
        tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(opts.model))
        rows = [{"input_ids": tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)[
            "input_ids"][:opts.max_length]} for row in rows]
        args.max_length = None
    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(opts.model), **{"dtype": "auto", **load})
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), peft_config=_peft())
    reset_peak_rss()
    result = trainer.train()
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(opts.model))
    summary = _log(trainer.state.log_history, result.metrics["train_runtime"])
    summary["heldout_loss"] = response_loss(trainer.model.float(), tokenizer, _alpaca(opts.eval_file), opts.max_length)
    return {**summary, "settings": {k: str(v) for k, v in settings.items()}, "bf16": bool(args.bf16),
            "dtype": load.get("dtype") or "float32"}


def training_lengths(model: str, train_file: Path, max_length: int) -> list[int]:
    """Tokens of each training row as every arm is credited with them: the conversation rendered with the base
    model's chat template, cut at max_length (no padding). One count for all arms, whatever each tool logs."""
    from transformers import AutoTokenizer

    from finetune_kit.models import resolve_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(model_folder(model)))
    return [min(len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]),
                max_length) for row in _alpaca(train_file)]


# Rows per micro-batch of our SFT arm (the effective batch stays the comparison's): one row carries no padding and
# half the activations of two; with the CPU's bf16 batch lengths rounded to 64 (hardware.fast_path_decisions) it ran
# as fast as 2 x 2 (189 vs 193 tokens/s, 128 rows) at 2.38 GB peak RSS instead of 3.26 (session 13).
OURS_MICRO_BATCH = 1


def sft_ours(opts) -> dict:
    from finetune_kit.models import load_for_inference

    summary = {**_sft_lora(micro_batched(opts, OURS_MICRO_BATCH)), "settings": {"micro_batch": OURS_MICRO_BATCH}}
    model, tokenizer = load_for_inference(opts.out)  # base (an embedded name too) + the adapter
    summary["heldout_loss"] = response_loss(model, tokenizer, _alpaca(opts.eval_file), opts.max_length)
    return summary


# ---- DPO: DPOTrainer defaults vs recipes/dpo.py (both LoRA: the reference is the adapter-free base) ----

def preference_scores(model, opts) -> dict:
    """Held-out DPO loss (sigmoid, beta 0.1: trl's default) and reward accuracy of the trained policy against the
    untrained base as the reference, on the same pairs for every arm; none without held-out pairs."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_kit.models import resolve_checkpoint

    pairs = _pairs(opts.eval_file)
    if not pairs:
        return {}
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(opts.model))
    reference = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(opts.model)).eval()
    model.float().eval()
    losses, wins = [], 0
    for pair in pairs:
        margin, counts = 0.0, []
        for side, sign in (("chosen", 1), ("rejected", -1)):
            policy, n = reply_logprob(model, tokenizer, pair["prompt"], pair[side], opts.max_length)
            margin += sign * (policy - reply_logprob(reference, tokenizer, pair["prompt"], pair[side],
                                                     opts.max_length)[0])
            counts.append(n)
        if 0 in counts:  # a side cut off entirely by max_length: trl drops such pairs from training too
            continue
        x = 0.1 * margin  # -log sigmoid(x), written so that no exp overflows
        losses.append(max(-x, 0.0) + math.log1p(math.exp(-abs(x))))
        wins += margin > 0
    if not losses:
        return {}
    return {"heldout_loss": sum(losses) / len(losses), "heldout_accuracy": wins / len(losses),
            "heldout_pairs": len(losses)}


def dpo_baseline(opts) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from finetune_kit.models import resolve_checkpoint

    args = _trl_args(DPOConfig, opts)
    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(opts.model))
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(opts.model))
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(_pairs(opts.train_file)),
                         processing_class=tokenizer, peft_config=_peft())
    reset_peak_rss()
    result = trainer.train()
    summary = _log(trainer.state.log_history, result.metrics["train_runtime"])
    return {**summary, **preference_scores(trainer.model, opts)}


def dpo_ours(opts) -> dict:
    from finetune_kit.models import load_for_inference

    metrics, log_history = _ours("dpo", [*_fixed(opts), *_lora_args()])
    summary = _log(log_history, metrics["train_runtime"])
    return {**summary, **preference_scores(load_for_inference(opts.out)[0], opts)}


# ---- QLoRA memory: our SFT recipe with fp32 / bf16 LoRA vs 4-bit NF4 QLoRA on the same ~1B model ----

RANDOM_1B = "random-llama-1b"


def model_folder(name: str) -> str:
    """`random-llama-1b`: a TinyLlama-1.1B-shaped Llama with random weights and SmolLM2's tokenizer (its chat
    template), built once into ~/.cache/finetune_kit/bench (bf16 on disk, 2.4 GB); anything else is passed on."""
    if name != RANDOM_1B:
        return name
    folder = Path.home() / ".cache" / "finetune_kit" / "bench" / RANDOM_1B
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from finetune_kit.models import resolve_checkpoint

        tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("smollm2-135m-instruct"))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                             tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder.with_suffix(".partial"))
        tokenizer.save_pretrained(folder.with_suffix(".partial"))
        folder.with_suffix(".partial").rename(folder)
    return str(folder)


_NF4 = ("--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true")
QLORA_ARMS = {"lora-fp32": lambda opts: _sft_lora(opts, "--dtype", "float32"),
              "lora-bf16": lambda opts: _sft_lora(opts, "--dtype", "bfloat16"),
              # fp32 compute and unquantized parts (embeddings, norms), as the fp32 arm: only the 4-bit linears differ
              "qlora-4bit": lambda opts: _sft_lora(opts, *_NF4, "--dtype", "float32"),
              # the QLoRA paper's setup: bf16 unquantized parts and bf16 compute (bnb_4bit_compute_dtype = dtype)
              "qlora-4bit-bf16": lambda opts: _sft_lora(opts, *_NF4, "--dtype", "bfloat16")}
# Arms also compared with a second reference: task -> that arm (its ratios are written beside the baseline's).
SECOND_BASELINES = {"qlora": "lora-bf16"}


PEERS = ("llamafactory", "ms-swift", "axolotl", "unsloth")  # other tools, in their own environments (peer_arms.py)


def _peer_arm(peer: str, task: str = "sft"):
    def arm(opts) -> dict:
        from benchmarks.peer_arms import DPO_PEER_ARMS, PEER_ARMS

        return {"sft": PEER_ARMS, "dpo": DPO_PEER_ARMS}[task][peer](opts)

    return arm


DPO_PEERS = ("llamafactory", "ms-swift")  # the peers with a DPO arm (peer_arms.DPO_PEER_ARMS)


from benchmarks.text_arms import text_classification_baseline, text_classification_ours  # imports the above

# task: (baseline name, arms, default settings)
TASKS = {
    "sft": ("trl-default", {"trl-default": sft_baseline, "ours": sft_ours, "trl-tuned": sft_trl_tuned,
                            **{peer: _peer_arm(peer) for peer in PEERS}},
            dict(model="smollm2-135m-instruct", data=SHARED / "llamafactory_demo" / "alpaca_en_demo.json",
                 examples=16, eval_examples=16, batch=2, accumulation=2, max_length=512, learning_rate=2e-4)),
    "dpo": ("trl-default", {"trl-default": dpo_baseline, "ours": dpo_ours,
                            **{peer: _peer_arm(peer, "dpo") for peer in DPO_PEERS}},
            dict(model="smollm2-135m-instruct", data=SHARED / "llamafactory_demo" / "dpo_en_demo.json",
                 examples=8, eval_examples=32, batch=2, accumulation=2, max_length=512, learning_rate=5e-5)),
    "text_classification": ("transformers-default", {"transformers-default": text_classification_baseline,
                                                     "ours": text_classification_ours},
                            dict(model="minilm-l6", data=SHARED / "sst2" / "train.tsv", examples=4096,
                                 eval_examples=1024, batch=32, accumulation=1, max_length=128, learning_rate=1e-4)),
    "qlora": ("lora-fp32", QLORA_ARMS,
              dict(model=RANDOM_1B, data=SHARED / "llamafactory_demo" / "alpaca_en_demo.json", examples=2,
                   eval_examples=0, batch=1, accumulation=1, max_length=256, learning_rate=2e-4)),
}
