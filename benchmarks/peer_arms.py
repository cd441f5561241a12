"""The peer arms of `python -m benchmarks sft`: other fine-tuning tools, each run through its own command line in its
own environment (benchmarks/peer_envs.py), on the same model folder, training rows, LoRA shape, effective batch,
learning rate, seed and one epoch as our recipe. The arm then loads the adapter the tool saved onto the same base
with peft (in this project's environment) and scores it with the shared held-out reply loss (arms.response_loss).

What each arm reports is read the same way for every tool: train_runtime from the HF Trainer the tool drives (all of
them save `trainer_state.json` / `train_results.json`), the losses from its log history, the peak RSS of the tool's
process tree (the largest waited-for descendant: getrusage(RUSAGE_CHILDREN), loading included; no training-only
figure, since the tool's process cannot be reset at train begin). Trained tokens come from the harness, not the tool.
A peer that cannot be installed or run returns {"error": ...} with the exact message instead of figures.
The tools' own CPU problems worked around here are named where each arm is built.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from benchmarks.arms import LORA, _alpaca, model_folder, response_loss
from benchmarks.peer_envs import PEERS, ensure_env, env_python
from finetune_kit.hardware import has_accelerator

# Without a GPU the peers' HF TrainingArguments want `use_cpu` for bf16 ("Your setup doesn't support bf16/gpu. You need
# to assign use_cpu if you want to train the model on CPU.", transformers' own message on an AMX CPU), which a user
# meeting that message sets: LLaMA-Factory and ms-swift get it; axolotl passes none, so it runs bf16 on a GPU only.

TOOL_TIMEOUT_S = int(os.environ.get("BENCH_PEER_TIMEOUT_S", "3600"))  # one peer run, then its process group is ended
# SmolLM2-Instruct's own chat template opens with this system turn when a conversation has none (our recipe and trl
# render with that template); LLaMA-Factory's `smollm2` template has the same text plus a full stop, so it is named.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def llamafactory_config(opts, model: str, dataset_dir: Path, out: Path, bf16: bool) -> dict:
    """LLaMA-Factory's LoRA SFT example (examples/train_lora/llama3_lora_sft.yaml in its repository: stage sft,
    finetuning_type lora, lora_target all, cosine schedule with 10% warmup, its default gradient checkpointing), with
    what the comparison fixes put in: model, data, LoRA r / alpha / dropout, cutoff, batch, learning rate, seed, one
    epoch. bf16 follows the hardware decision (the example's `bf16: true` is for a GPU); worker counts fit 2 cores."""
    return {"model_name_or_path": model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "lora_rank": LORA["lora_r"], "lora_alpha": LORA["lora_alpha"], "lora_dropout": LORA["lora_dropout"],
            "lora_target": "all", "dataset": "bench_alpaca", "dataset_dir": str(dataset_dir), "template": "smollm2",
            "default_system": SMOLLM2_SYSTEM, "cutoff_len": opts.max_length, "overwrite_cache": True,
            "preprocessing_num_workers": min(os.cpu_count() or 1, 16), "dataloader_num_workers": 0,
            "output_dir": str(out), "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
            "report_to": "none", "per_device_train_batch_size": opts.batch,
            "gradient_accumulation_steps": opts.accumulation, "learning_rate": opts.learning_rate,
            "num_train_epochs": 1.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": bf16,
            "use_cpu": not has_accelerator(), "seed": opts.seed, "disable_tqdm": True}


def swift_arguments(opts, model: str, data: Path, out: Path, bf16: bool) -> list[str]:
    """`swift sft` with ms-swift's documented LoRA options (its README's LoRA quick start: tuner_type lora,
    target_modules all-linear), with what the comparison fixes put in; no held-out split (split_dataset_ratio 0).
    ms-swift has no SmolLM2 entry: a local Llama folder matches several of its model types and it asks for one, so
    `llama`, with its `chatml` template (SmolLM2's format) and SmolLM2's default system turn."""
    return ["--model", model, "--model_type", "llama", "--template", "chatml", "--system", SMOLLM2_SYSTEM,
            "--tuner_type", "lora", "--lora_rank", str(LORA["lora_r"]), "--lora_alpha",
            str(LORA["lora_alpha"]), "--lora_dropout", str(LORA["lora_dropout"]), "--target_modules", "all-linear",
            "--dataset", str(data), "--split_dataset_ratio", "0", "--max_length", str(opts.max_length),
            "--torch_dtype", "bfloat16" if bf16 else "float32", "--use_cpu", str(not has_accelerator()).lower(),
            "--num_train_epochs", "1",
            "--per_device_train_batch_size", str(opts.batch), "--gradient_accumulation_steps", str(opts.accumulation),
            "--learning_rate", str(opts.learning_rate), "--seed", str(opts.seed), "--logging_steps", "1",
            # its default truncation deletes rows over max_length; cut them at the end as the other arms do
            "--truncation_strategy", "right",
            # it saves no adapter without a checkpoint: one at the end of the epoch, the adapter only (< 1 s here)
            "--save_strategy", "epoch", "--save_only_model", "true",
            "--report_to", "none", "--output_dir", str(out), "--add_version", "false",
            "--dataloader_num_workers", "0", "--dataset_num_proc", str(min(os.cpu_count() or 1, 4))]


def _run_tool(peer: str, command: list[str], cwd: Path) -> dict:
    """Run a peer's command line; its wall time and the peak RSS of its process tree, or the error it gave."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{env_python(peer).parent}:{env.get('PATH', '')}", DISABLE_VERSION_CHECK="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MODELSCOPE_OFFLINE="1",
               USE_HF="1", AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1")
    started, log = time.time(), cwd / "tool.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        # a tool that hangs after an error (axolotl's worker processes did) is ended with its whole group
        timer = threading.Timer(TOOL_TIMEOUT_S, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage: its tree's peak RSS, nothing else's
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-12:]
        return {"error": f"{' '.join(command[:3])} ... exited {process.returncode}: " + "\n".join(tail)}
    return {"wall_seconds_tool": round(time.time() - started, 1), "rss_mb": round(usage.ru_maxrss / 1024, 1)}


def _trainer_summary(out: Path, tool: dict) -> dict:
    """train_runtime and losses from the HF Trainer log history the tool saved: ms-swift's logging.jsonl (its last
    line holds the whole history), else trainer_state.json."""
    swift_log = out / "logging.jsonl"
    state = next(out.rglob("trainer_state.json"), None)
    if swift_log.is_file():
        history = json.loads(swift_log.read_text().strip().splitlines()[-1]).get("log_history", [])
    else:
        history = json.loads(state.read_text())["log_history"] if state else []
    runtime = next((row["train_runtime"] for row in history if "train_runtime" in row), None)
    if runtime is None:
        results = next(out.rglob("train_results.json"), None) or next(out.rglob("all_results.json"), None)
        runtime = json.loads(results.read_text())["train_runtime"] if results else None
    if runtime is None:  # axolotl saves no trainer state without a checkpoint: the Trainer's printed log lines
        history = _printed_logs(out.parent / "tool.log")
        runtime = next((row["train_runtime"] for row in history if "train_runtime" in row), None)
    losses = [row["loss"] for row in history if "loss" in row]
    if runtime is None or not losses:
        raise SystemExit(f"no trainer_state.json / train_runtime under {out}")
    return {"train_runtime": runtime, "mean_train_loss": sum(losses) / len(losses), "losses": losses,
            "peak_memory_mb": {"rss": tool["rss_mb"], "rss_training": None}, "wall_seconds_tool":
            tool["wall_seconds_tool"]}


def _printed_logs(log: Path) -> list[dict]:
    """The dicts a HF Trainer prints (`{'loss': '11.81', ...}`, values as 4-significant-digit strings), as floats."""
    import ast
    import re

    rows = []
    for match in re.finditer(r"\{'(?:loss|train_runtime)'[^{}]*\}", log.read_text() if log.is_file() else ""):
        try:
            row = ast.literal_eval(match.group(0))
            rows.append({k: float(v) for k, v in row.items() if k in ("loss", "train_runtime")})
        except (ValueError, SyntaxError):
            continue
    return rows


def _adapted(opts, adapter: Path):
    """The tool's adapter loaded with peft onto the same base folder, fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune_kit.models import resolve_checkpoint

    base = resolve_checkpoint(model_folder(opts.model))
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).float()


def _score_adapter(opts, adapter: Path) -> dict:
    """The shared held-out reply loss of the tool's adapter."""
    from transformers import AutoTokenizer

    from finetune_kit.models import resolve_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(model_folder(opts.model)))
    return {"heldout_loss": response_loss(_adapted(opts, adapter), tokenizer, _alpaca(opts.eval_file),
                                          opts.max_length)}


def _score_preference_adapter(opts, adapter: Path) -> dict:
    """The shared held-out DPO loss and reward accuracy of the tool's adapter (arms.preference_scores)."""
    from benchmarks.arms import preference_scores

    return preference_scores(_adapted(opts, adapter), opts)


def _peer(peer: str, opts, build, score=_score_adapter) -> dict:
    """Shared frame of a peer arm: environment, run, summary, score; errors recorded, not raised."""
    from finetune_kit.hardware import bf16_is_fast
    from finetune_kit.models import resolve_checkpoint

    env = ensure_env(peer)
    if not env["ok"]:
        return {"error": f"environment build failed: {env['command']}: {env['error'][-1500:]}", "env": env}
    work = Path(opts.out)
    work.mkdir(parents=True, exist_ok=True)
    bf16 = bf16_is_fast()
    command, settings = build(resolve_checkpoint(model_folder(opts.model)), work, bf16)
    tool = _run_tool(peer, command, work)
    if isinstance(settings, dict):  # what the tool was given (axolotl takes bf16 on a GPU only): MFU's precision
        bf16 = bool(settings.get("bf16", bf16))
    base = {"settings": settings, "bf16": bf16, "versions": env.get("versions"), "command": " ".join(command),
            "placeholders": env.get("placeholders", [])}
    if "error" in tool:
        return {**tool, **base}
    summary = {**_trainer_summary(work / "out", tool), **base}
    adapter = next((p.parent for p in (work / "out").rglob("adapter_config.json")), None)
    summary.update(score(opts, adapter) if adapter else {"heldout_loss": None})
    return summary


def sft_llamafactory(opts) -> dict:
    def build(model: str, work: Path, bf16: bool):
        import yaml

        data = work / "data"
        data.mkdir(exist_ok=True)
        (data / "train.json").write_text(Path(opts.train_file).read_text())
        # alpaca columns (instruction / input / output) are LLaMA-Factory's defaults for a file dataset
        (data / "dataset_info.json").write_text(json.dumps({"bench_alpaca": {"file_name": "train.json"}}))
        config = llamafactory_config(opts, model, data, work / "out", bf16)
        (work / "train.yaml").write_text(yaml.safe_dump(config))
        return [str(env_python("llamafactory").parent / PEERS["llamafactory"][1]), "train",
                str(work / "train.yaml")], config

    return _peer("llamafactory", opts, build)


def sft_ms_swift(opts) -> dict:
    def build(model: str, work: Path, bf16: bool):
        rows = json.loads(Path(opts.train_file).read_text())  # alpaca: ms-swift reads instruction / input / output
        (work / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        arguments = swift_arguments(opts, model, work / "train.jsonl", work / "out", bf16)
        return [str(env_python("ms-swift").parent / PEERS["ms-swift"][1]), "sft", *arguments], arguments

    return _peer("ms-swift", opts, build)


def axolotl_config(opts, model: str, data: Path, out: Path, bf16: bool) -> dict:
    """axolotl's LoRA example (examples/llama-3/lora-1b.yml in its repository: adapter lora, lora_target_linear,
    cosine schedule, gradient checkpointing) with what the comparison fixes put in. Changed for a CPU: no flash
    attention, so no sample packing (its multipack needs it); torch AdamW instead of bitsandbytes' 8-bit AdamW (the
    optimizer every other arm uses); bf16 from the hardware decision on a GPU only (axolotl passes no `use_cpu` to
    transformers, which then refuses bf16 on a CPU: "Your setup doesn't support bf16/gpu", seen on an AMX CPU, where
    the others run bf16). The rows are the harness's conversations,
    rendered with the checkpoint's own chat template (`chat_template: tokenizer_default`), as the other arms do."""
    return {"base_model": model, "load_in_8bit": False, "load_in_4bit": False, "adapter": "lora",
            "lora_r": LORA["lora_r"], "lora_alpha": LORA["lora_alpha"], "lora_dropout": LORA["lora_dropout"],
            "lora_target_linear": True,
            "datasets": [{"path": str(data), "ds_type": "json", "type": "chat_template",
                          "chat_template": "tokenizer_default", "field_messages": "messages"}],
            "dataset_prepared_path": str(out.parent / "prepared"), "val_set_size": 0.0, "output_dir": str(out),
            "sequence_len": opts.max_length, "sample_packing": False, "pad_to_sequence_len": False,
            "micro_batch_size": opts.batch, "gradient_accumulation_steps": opts.accumulation, "num_epochs": 1,
            "optimizer": "adamw_torch", "lr_scheduler": "cosine", "learning_rate": opts.learning_rate,
            "warmup_ratio": 0.1, "weight_decay": 0.0, "bf16": bf16 and has_accelerator(), "fp16": False, "tf32": False,
            "gradient_checkpointing": True, "flash_attention": False, "sdp_attention": True, "logging_steps": 1,
            "save_strategy": "no", "seed": opts.seed, "dataset_processes": min(os.cpu_count() or 1, 4),
            # its fused LoRA kernels are on by default for dropout-0 LoRA and allocate on "cuda" unconditionally
            # ("AssertionError: Torch not compiled with CUDA enabled" in kernels/swiglu.py on a CPU)
            "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False,
            "excess_length_strategy": "truncate"}  # its default drops rows over sequence_len; cut them as the others do


def sft_axolotl(opts) -> dict:
    def build(model: str, work: Path, bf16: bool):
        import yaml

        (work / "train.jsonl").write_text("".join(json.dumps({"messages": row["messages"]}) + "\n"
                                                  for row in _alpaca(opts.train_file)))
        config = axolotl_config(opts, model, work / "train.jsonl", work / "out", bf16)
        (work / "train.yml").write_text(yaml.safe_dump(config))
        return [str(env_python("axolotl").parent / PEERS["axolotl"][1]), "train", str(work / "train.yml"),
                "--launcher", "python"], config

    return _peer("axolotl", opts, build)


UNSLOTH_SCRIPT = """# unsloth's documented LoRA SFT recipe (its README / notebooks: FastLanguageModel.from_pretrained, get_peft_model
# with use_gradient_checkpointing="unsloth", trl's SFTTrainer), run by the harness in unsloth's own environment.
import json, sys
from pathlib import Path

from unsloth import FastLanguageModel  # first, as unsloth asks: it patches transformers / trl on import
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

cfg = json.loads(Path(sys.argv[1]).read_text())
model, tokenizer = FastLanguageModel.from_pretrained(cfg["model"], max_seq_length=cfg["max_length"],
                                                     dtype=torch.bfloat16 if cfg["bf16"] else torch.float32,
                                                     load_in_4bit=False)
model = FastLanguageModel.get_peft_model(model, r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"], bias="none",
                                         use_gradient_checkpointing="unsloth", random_state=cfg["seed"])
rows = [json.loads(line) for line in Path(cfg["data"]).read_text().splitlines()]
args = SFTConfig(output_dir=cfg["out"], num_train_epochs=1, per_device_train_batch_size=cfg["batch"],
                 gradient_accumulation_steps=cfg["accumulation"], learning_rate=cfg["learning_rate"],
                 max_length=cfg["max_length"], seed=cfg["seed"], logging_steps=1, save_strategy="no",
                 report_to="none", bf16=cfg["bf16"], fp16=False, optim="adamw_torch", disable_tqdm=True)
trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows), args=args)
trainer.train()
model.save_pretrained(cfg["out"])
trainer.state.save_to_json(str(Path(cfg["out"]) / "trainer_state.json"))
"""


def sft_unsloth(opts) -> dict:
    def build(model: str, work: Path, bf16: bool):
        (work / "train.jsonl").write_text("".join(json.dumps({"messages": row["messages"]}) + "\n"
                                                  for row in _alpaca(opts.train_file)))
        config = {"model": model, "data": str(work / "train.jsonl"), "out": str(work / "out"), "bf16": bf16,
                  "max_length": opts.max_length, "r": LORA["lora_r"], "alpha": LORA["lora_alpha"],
                  "dropout": LORA["lora_dropout"], "batch": opts.batch, "accumulation": opts.accumulation,
                  "learning_rate": opts.learning_rate, "seed": opts.seed}
        (work / "config.json").write_text(json.dumps(config))
        (work / "train_unsloth.py").write_text(UNSLOTH_SCRIPT)
        return [str(env_python("unsloth")), str(work / "train_unsloth.py"), str(work / "config.json")], config

    return _peer("unsloth", opts, build)


# ---- DPO: the same pairs, LoRA, beta 0.1 and sigmoid loss (trl's defaults, our recipe's), the adapter-free base
# as the reference in every tool; scored by arms.preference_scores ----

def _sharegpt_pairs(opts) -> list[dict]:
    """The training pairs (_chat_pairs) in LLaMA-Factory's sharegpt ranking form (its dpo_en_demo layout):
    conversations, then chosen / rejected replies."""
    speaker = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"conversations": [{"from": speaker[t["role"]], "value": t["content"]} for t in pair["prompt"]],
             "chosen": {"from": "gpt", "value": pair["chosen"][0]["content"]},
             "rejected": {"from": "gpt", "value": pair["rejected"][0]["content"]}} for pair in _chat_pairs(opts)]


def _chat_pairs(opts) -> list[dict]:
    """The training pairs as our recipe reads them (arms._pairs), a plain-text prompt / reply as one user / assistant
    turn (what a chat template makes of it)."""
    from benchmarks.arms import _pairs

    def turns(value, role):
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    return [{"prompt": turns(p["prompt"], "user"), "chosen": turns(p["chosen"], "assistant"),
             "rejected": turns(p["rejected"], "assistant")} for p in _pairs(opts.train_file)]


def dpo_llamafactory(opts) -> dict:
    """LLaMA-Factory's LoRA DPO example (examples/train_lora/llama3_lora_dpo.yaml: stage dpo, pref_beta 0.1,
    pref_loss sigmoid) on the SFT arm's frame."""
    def build(model: str, work: Path, bf16: bool):
        import yaml

        data = work / "data"
        data.mkdir(exist_ok=True)
        (data / "train.json").write_text(json.dumps(_sharegpt_pairs(opts)))
        (data / "dataset_info.json").write_text(json.dumps({"bench_pairs": {
            "file_name": "train.json", "ranking": True, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}))
        config = {**llamafactory_config(opts, model, data, work / "out", bf16), "stage": "dpo",
                  "dataset": "bench_pairs", "pref_beta": 0.1, "pref_loss": "sigmoid"}
        (work / "train.yaml").write_text(yaml.safe_dump(config))
        return [str(env_python("llamafactory").parent / PEERS["llamafactory"][1]), "train",
                str(work / "train.yaml")], config

    return _peer("llamafactory", opts, build, _score_preference_adapter)


def dpo_ms_swift(opts) -> dict:
    """`swift rlhf --rlhf_type dpo` (ms-swift's DPO docs: messages ending in the chosen reply, rejected_response)
    with the SFT arm's LoRA options, beta 0.1, sigmoid loss."""
    def build(model: str, work: Path, bf16: bool):
        rows = [{"messages": pair["prompt"] + pair["chosen"][:1], "rejected_response": pair["rejected"][0]["content"]}
                for pair in _chat_pairs(opts)]
        (work / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        arguments = ["--rlhf_type", "dpo", "--beta", "0.1", "--loss_type", "sigmoid",
                     *swift_arguments(opts, model, work / "train.jsonl", work / "out", bf16)]
        return [str(env_python("ms-swift").parent / PEERS["ms-swift"][1]), "rlhf", *arguments], arguments

    return _peer("ms-swift", opts, build, _score_preference_adapter)


PEER_ARMS = {"llamafactory": sft_llamafactory, "ms-swift": sft_ms_swift,
             "axolotl": sft_axolotl,
             "unsloth": sft_unsloth}
DPO_PEER_ARMS = {"llamafactory": dpo_llamafactory, "ms-swift": dpo_ms_swift}
