"""Side-by-side benchmark: plain trl / transformers with their defaults vs our recipe with its defaults.

    python -m benchmarks sft [--steps 20]          # also: make bench
    python -m benchmarks sft --model <dir> --data <file> --steps 3 --max_length 64   # the smoke test's tiny run

Each arm runs in its own process (peak memory is per process), one after the other, with the same model, data,
seed, effective batch (per-device batch x accumulation) and step count. Reported per arm: trained (non-padding)
tokens per second (trl's own `num_tokens` count over `train_runtime`), peak memory (RSS on CPU,
max_memory_allocated on GPU), the mean loss of the last steps; then ours / baseline. Results go to
benchmarks/results/bench_<task>.json with machine, versions and the command.

The baseline is what a trl user writes first: `SFTTrainer(model, args=SFTConfig(...), train_dataset, peft_config)`
with only what the comparison fixes (steps, batch, max_length, LoRA shape, learning rate, seed) set, plus
`use_cpu` where there is no GPU (trl's bf16 default refuses to start on a CPU otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "datasets" / "llamafactory_demo" / "alpaca_en_demo.json"
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0}


def _summary(log_history: list[dict], runtime: float, last: int = 5) -> dict:
    losses = [row["loss"] for row in log_history if "loss" in row]
    tokens = max((row.get("num_tokens", 0) for row in log_history), default=0)
    from finetune_kit.runs import peak_memory_mb

    return {"train_runtime": runtime, "trained_tokens": tokens, "tokens_per_second": tokens / runtime,
            "final_loss": sum(losses[-last:]) / len(losses[-last:]), "losses": losses, "peak_memory_mb":
            peak_memory_mb()}


def _alpaca_messages(path: Path) -> list[dict]:
    """The rows as conversations, exactly as our recipe reads them, so both arms train on the same text."""
    from finetune_kit.data.formats import normalise

    return [normalise(row, "alpaca", f"{path} row {i}") for i, row in enumerate(json.loads(path.read_text()), 1)]


def sft_baseline(opts) -> dict:
    """trl-default: SFTTrainer with its defaults."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from finetune_kit.models import resolve_checkpoint

    args = SFTConfig(output_dir=opts.out, max_steps=opts.steps, per_device_train_batch_size=opts.batch,
                     gradient_accumulation_steps=opts.accumulation, max_length=opts.max_length,
                     learning_rate=opts.learning_rate, seed=opts.seed, logging_steps=1, save_strategy="no",
                     report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(opts.model))
    peft = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_alpaca_messages(Path(opts.data))),
                         peft_config=peft)
    result = trainer.train()
    return _summary(trainer.state.log_history, result.metrics["train_runtime"])


def sft_ours(opts) -> dict:
    """ours: recipes/sft.py with its defaults and the same fixed settings."""
    from finetune_kit.cli import load_recipe

    argv = ["--config", str(ROOT / "recipes" / "configs" / "sft_lora_smollm2.yaml"),
            "--model_name_or_path", opts.model, "--dataset_name", opts.data, "--output_dir", opts.out,
            "--max_steps", str(opts.steps), "--num_train_epochs", "1", "--per_device_train_batch_size",
            str(opts.batch), "--gradient_accumulation_steps", str(opts.accumulation), "--max_length",
            str(opts.max_length), "--learning_rate", str(opts.learning_rate), "--seed", str(opts.seed),
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--eval_split_ratio", "0",
            "--report", "false", "--disable_tqdm", "true", "--overwrite_output_dir", "true",
            *[f"--{k}={v}" for k, v in LORA.items()]]
    metrics = load_recipe("sft").main(argv)
    log_history = json.loads((Path(opts.out) / "log_history.json").read_text())
    return _summary(log_history, metrics["train_runtime"])


ARMS = {"sft": {"trl-default": sft_baseline, "ours": sft_ours}}


def run_arm(task: str, arm: str, opts) -> dict:
    """One arm in a fresh process; its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.harness", "--arm", arm, "--result", str(result),
                   "--out", str(Path(tmp) / "run"), *opts.argv]
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(f"{task} / {arm} failed (exit {done.returncode}): {' '.join(command)}")
        summary = json.loads(result.read_text())
        summary["wall_seconds"] = round(time.time() - started, 1)
        return summary


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=sorted(ARMS))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ALPACA))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if not Path(opts.data).is_file():
        parser.error(f"benchmark data not found: {opts.data} (the default is ../shared/datasets, next to this "
                     "clone); pass --data with an alpaca-style JSON file")
    opts.argv = list(argv)
    return opts


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = options(argv)
    if opts.arm:  # inside an arm's own process
        Path(opts.result).write_text(json.dumps(ARMS[opts.task][opts.arm](opts)))
        return {}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from record_run import machine

    from finetune_kit.runs import git_revision, package_versions

    arms = {arm: run_arm(opts.task, arm, opts) for arm in ARMS[opts.task]}
    base, ours = arms["trl-default"], arms["ours"]
    result = {"name": f"bench_{opts.task}", "command": "python -m benchmarks " + " ".join(argv),
              "settings": {k: v for k, v in vars(opts).items() if k not in ("argv", "arm", "result", "out")},
              "arms": arms,
              "ratios_ours_over_baseline": {
                  "tokens_per_second": ours["tokens_per_second"] / base["tokens_per_second"],
                  "peak_rss": ours["peak_memory_mb"]["rss"] / base["peak_memory_mb"]["rss"],
                  "final_loss": ours["final_loss"] / base["final_loss"],
                  "trained_tokens": ours["trained_tokens"] / max(base["trained_tokens"], 1)},
              "machine": machine(), "versions": package_versions(), "git_revision": git_revision()}
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{opts.task}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios_ours_over_baseline": result["ratios_ours_over_baseline"],
                      **{arm: {k: v for k, v in s.items() if k != "losses"} for arm, s in arms.items()}}, indent=2))
    return result


if __name__ == "__main__":
    main()
