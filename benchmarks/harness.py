"""Side-by-side benchmark: plain trl / transformers with their defaults vs our recipe with its defaults.

    python -m benchmarks sft | dpo | text_classification [--examples N ...]     # make bench runs these three
    python -m benchmarks qlora [--arms qlora-4bit]     # fp32 / bf16 LoRA vs QLoRA (fp32 / bf16), all ours, random 1.2B
    python -m benchmarks sft --model <dir> --data <file> --examples 8 --max_length 64   # the smoke test's tiny run

Each arm runs in its own process (peak memory is per process), one after the other, on the same model, seed,
effective batch (per-device batch x accumulation) and one epoch over the same seeded subset of the data, so both
train the same examples, the same trained tokens, in the same number of steps. Reported per arm: trained
(non-padding) tokens per second (trl's own `num_tokens`; for classification the tokenized lengths) over
`train_runtime`, peak memory (RSS on CPU: the process up to the end of training, and from train begin alone as
rss_training; max_memory_allocated on GPU), the mean training loss over the epoch, and the loss (and accuracy)
on held-out rows scored by one shared function (SFT: reply loss; DPO: DPO loss against the base; classification);
then ours / baseline. Results go to benchmarks/results/bench_<task>.json with machine, versions and the command.
The arms themselves are in benchmarks/arms.py.
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

from benchmarks.arms import SECOND_BASELINES, TASKS, write_subsets

ROOT = Path(__file__).resolve().parent.parent


def run_arm(task: str, arm: str, opts, files: tuple[Path, Path]) -> dict:
    """One arm in a fresh process; its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.harness", *opts.argv, "--arm", arm, "--result", str(result),
                   "--out", str(Path(tmp) / "run"), "--train_file", str(files[0]), "--eval_file", str(files[1])]
        started = time.time()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(f"{task} / {arm} failed (exit {done.returncode}): {' '.join(command)}")
        summary = json.loads(result.read_text())
        summary["wall_seconds"] = round(time.time() - started, 1)
        return summary


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    task = next((a for a in argv if a in TASKS), None)
    defaults = TASKS[task][2] if task else {}
    parser.add_argument("--model", default=defaults.get("model"))
    parser.add_argument("--data", default=str(defaults.get("data")), help="the task's data (default: ../shared)")
    parser.add_argument("--examples", type=int, default=defaults.get("examples"), help="training rows (one epoch)")
    parser.add_argument("--eval_examples", type=int, default=defaults.get("eval_examples"), help="held-out rows")
    parser.add_argument("--batch", type=int, default=defaults.get("batch"))
    parser.add_argument("--accumulation", type=int, default=defaults.get("accumulation"))
    parser.add_argument("--max_length", type=int, default=defaults.get("max_length"))
    parser.add_argument("--learning_rate", type=float, default=defaults.get("learning_rate"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--arms", help="comma-separated subset of the task's arms (the baseline is always run)")
    for internal in ("--arm", "--result", "--out", "--train_file", "--eval_file"):  # one arm in this process
        parser.add_argument(internal, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if not Path(opts.data).is_file():
        parser.error(f"benchmark data not found: {opts.data} (the default is ../shared/datasets, next to this "
                     "clone); pass --data with a file of the task's format")
    opts.argv = list(argv)
    return opts


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = options(argv)
    baseline, arms_of_task, _ = TASKS[opts.task]
    if opts.arm:  # inside an arm's own process
        opts.train_file, opts.eval_file = Path(opts.train_file), Path(opts.eval_file)
        Path(opts.result).write_text(json.dumps(arms_of_task[opts.arm](opts)))
        return {}
    from benchmarks.record_run import machine
    from finetune_kit.runs import git_revision, package_versions

    with tempfile.TemporaryDirectory() as data_dir:
        files = write_subsets(Path(opts.data), opts.examples, opts.eval_examples, opts.seed, Path(data_dir))
        chosen = [baseline] + [a for a in arms_of_task if a != baseline and (not opts.arms or a in opts.arms.split(","))]
        arms = {arm: run_arm(opts.task, arm, opts, files) for arm in chosen}
    ratios = {f"ratios_{arm}_over_{baseline}": _ratios(arms[arm], arms[baseline]) for arm in arms if arm != baseline}
    second = SECOND_BASELINES.get(opts.task)
    if second in arms:
        ratios.update({f"ratios_{arm}_over_{second}": _ratios(arms[arm], arms[second])
                       for arm in arms if arm not in (baseline, second)})
    settings = {k: v for k, v in vars(opts).items()
                if k not in ("argv", "arm", "result", "out", "train_file", "eval_file")}
    result = {"name": f"bench_{opts.task}", "command": "python -m benchmarks " + " ".join(argv),
              "settings": settings, "steps": opts.examples // (opts.batch * opts.accumulation), "arms": arms,
              **ratios,
              "machine": machine(), "versions": package_versions(), "git_revision": git_revision()}
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{opts.task}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({**ratios,
                      **{arm: {k: v for k, v in s.items() if k != "losses"} for arm, s in arms.items()}}, indent=2))
    return result


def _ratios(arm: dict, base: dict) -> dict:
    ratios = {"tokens_per_second": arm["tokens_per_second"] / base["tokens_per_second"],
              "peak_memory": _peak(arm) / _peak(base),
              "trained_tokens": arm["trained_tokens"] / max(base["trained_tokens"], 1),
              "mean_train_loss": arm["mean_train_loss"] / base["mean_train_loss"]}
    if arm["peak_memory_mb"].get("rss_training") and base["peak_memory_mb"].get("rss_training"):
        ratios["peak_rss_training"] = arm["peak_memory_mb"]["rss_training"] / base["peak_memory_mb"]["rss_training"]
    if "heldout_loss" in base:
        ratios["heldout_loss"] = arm["heldout_loss"] / base["heldout_loss"]
    return ratios


def _peak(summary: dict) -> float:
    memory = summary["peak_memory_mb"]
    return memory.get("cuda_allocated", memory["rss"])


if __name__ == "__main__":
    main()
