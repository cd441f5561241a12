"""Side-by-side benchmark: plain trl / transformers with their defaults vs our recipe with its defaults, and for SFT
trl tuned by hand and the peer tools (LLaMA-Factory, ms-swift; axolotl and unsloth where they run).

    python -m benchmarks sft | dpo | text_classification [--examples N ...]     # make bench runs these three
    python -m benchmarks sft --examples 128 --eval_examples 32               # the 128-row SFT workload, every arm
    python -m benchmarks sft --arms ours,trl-tuned      # a subset (the baseline always runs): no peer environments
    python -m benchmarks sft --arms ours,trl-tuned --repeats 3   # 3 rounds in rotated order: median run per arm
    python -m benchmarks trl_sweep | sft_profile        # the trl-tuned grid; torch.profiler on our SFT step
    python -m benchmarks qlora [--arms qlora-4bit]     # fp32 / bf16 LoRA vs QLoRA (fp32 / bf16), all ours, random 1.2B
    python -m benchmarks sft --model <dir> --data <file> --examples 8 --max_length 64   # the smoke test's tiny run

Each arm runs in its own process (peak memory is per process), one after the other, on the same model, seed,
effective batch (per-device batch x accumulation) and one epoch over the same seeded subset of the data, so all
train the same examples, the same trained tokens, in the same number of steps. Reported per arm: trained
(non-padding) tokens per second over `train_runtime` (SFT: the tokens counted once by the harness from the data, the
tool's own count kept as tool_reported_tokens; DPO: trl's `num_tokens`; classification: the tokenized lengths),
peak memory (RSS on CPU: the process up to the end of training, and from train begin alone as rss_training;
max_memory_allocated on GPU), the mean training loss over the epoch, the loss (and accuracy) on held-out rows scored
by one shared function (SFT: reply loss; DPO: DPO loss against the base; classification), the load averages at the
arm's start and end, and for SFT the model FLOP/s as a share of this machine's matmul peak measured in the same run
(benchmarks/flops.py); then each arm over the baseline, and ours over every other arm. A peer arm that cannot be
installed or run holds its exact error instead of figures. Results go to benchmarks/results/bench_<task>.json with
machine, versions (each peer's own) and the command. The arms are in benchmarks/arms.py and peer_arms.py.
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
        started, load = time.time(), os.getloadavg()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        if done.returncode:
            raise SystemExit(f"{task} / {arm} failed (exit {done.returncode}): {' '.join(command)}")
        summary = json.loads(result.read_text())
        summary.update(wall_seconds=round(time.time() - started, 1), loadavg_start=[round(x, 2) for x in load],
                       loadavg_end=[round(x, 2) for x in os.getloadavg()])
        return summary


def workload(opts, train_file: Path) -> dict:
    """What every SFT arm is credited with, counted once by the harness: the training rows' token lengths (base
    chat template, cut at max_length, no padding), the model FLOPs of one epoch over them (benchmarks/flops.py), and
    this machine's matmul peaks measured now (fp32; bf16 too where the CPU has bf16 instructions)."""
    from benchmarks.arms import LORA, model_folder, training_lengths
    from benchmarks.flops import lora_shape, lora_training_flops, matmul_peak
    from finetune_kit.models import resolve_checkpoint

    lengths = training_lengths(opts.model, train_file, opts.max_length)
    shape = lora_shape(resolve_checkpoint(model_folder(opts.model)), LORA["lora_r"])
    peaks = [matmul_peak("float32")]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        peaks.append(matmul_peak("bfloat16"))
    return {"trained_tokens": sum(lengths), "rows": len(lengths), "longest": max(lengths), "model_shape": shape,
            "model_flops": lora_training_flops(lengths, **shape), "matmul_peaks": peaks}


def credit(summary: dict, work: dict) -> dict:
    """An arm's figures on the harness's token count and FLOPs (the tool's own count kept beside, to compare)."""
    from benchmarks.flops import mfu

    if "train_runtime" not in summary:
        return summary
    summary["tool_reported_tokens"] = summary.get("trained_tokens")
    summary["trained_tokens"] = work["trained_tokens"]
    summary["tokens_per_second"] = work["trained_tokens"] / summary["train_runtime"]
    for peak in work["matmul_peaks"]:
        summary.update(mfu(work["model_flops"], summary["train_runtime"], peak))
    # the share of the peak of the precision the arm trained in (bf16 autocast, or a base loaded in bf16, runs its
    # matmuls in bf16)
    bf16 = summary.get("bf16") or summary.get("dtype") == "bfloat16"
    own = f"mfu_vs_{'bfloat16' if bf16 else 'float32'}_peak"
    summary["mfu"] = summary.get(own)
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
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every arm, each round in another order; "
                        "an arm reports its median-speed run, and ours over each arm per round")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--arms", help="comma-separated subset of the task's arms (the baseline is always run; "
                        "sft: ours, trl-tuned, llamafactory, ms-swift, axolotl, unsloth; dpo: ours, llamafactory, "
                        "ms-swift)")
    for internal in ("--arm", "--result", "--out", "--train_file", "--eval_file"):  # one arm in this process
        parser.add_argument(internal, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if not Path(opts.data).is_file():
        parser.error(f"benchmark data not found: {opts.data} (the default is ../shared/datasets, next to this "
                     "clone); pass --data with a file of the task's format")
    if opts.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {opts.repeats}")
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

    # a name no task has is a typo; one of another task's arms is fine (make bench passes one --arms to every task)
    unknown = set((opts.arms or "").split(",")) - {arm for _, arms, _ in TASKS.values() for arm in arms} - {""}
    if unknown:
        raise SystemExit(f"--arms: no arm named {', '.join(sorted(unknown))}; {opts.task}'s arms: "
                         f"{', '.join(arms_of_task)}")
    with tempfile.TemporaryDirectory() as data_dir:
        files = write_subsets(Path(opts.data), opts.examples, opts.eval_examples, opts.seed, Path(data_dir))
        work = workload(opts, files[0]) if opts.task == "sft" else None
        chosen = [baseline] + [a for a in arms_of_task if a != baseline and (not opts.arms or a in opts.arms.split(","))]
        rounds = []
        for r in range(opts.repeats):  # each round in another order: no arm always runs first, or after the same one
            order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
            rounds.append(_credited({arm: run_arm(opts.task, arm, opts, files) for arm in order}, work, baseline))
    arms = {arm: _median_run([one[arm] for one in rounds]) for arm in chosen}
    ran = [arm for arm in arms if "error" not in arms[arm]]  # a peer that could not run holds its error instead
    ratios = {f"ratios_{arm}_over_{baseline}": _ratios(arms[arm], arms[baseline]) for arm in ran if arm != baseline}
    second = SECOND_BASELINES.get(opts.task)
    if second in ran:
        ratios.update({f"ratios_{arm}_over_{second}": _ratios(arms[arm], arms[second])
                       for arm in ran if arm not in (baseline, second)})
    if "ours" in ran:  # ours over every other arm that ran: the "faster than every peer"
        ratios.update({f"ratios_ours_over_{arm}": _ratios(arms["ours"], arms[arm])
                       for arm in ran if arm not in ("ours", baseline, second)})
    if "ours" in ran and opts.repeats > 1:  # paired within a round: the machine's drift hits both arms alike
        ratios.update({f"tokens_per_second_ours_over_{arm}_by_round": [
            one["ours"]["tokens_per_second"] / one[arm]["tokens_per_second"] for one in rounds
            if "tokens_per_second" in one["ours"] and "tokens_per_second" in one[arm]] for arm in ran if arm != "ours"})
    settings = {k: v for k, v in vars(opts).items()
                if k not in ("argv", "arm", "result", "out", "train_file", "eval_file")}
    result = {"name": f"bench_{opts.task}", "command": "python -m benchmarks " + " ".join(argv),
              "settings": settings, "steps": opts.examples // (opts.batch * opts.accumulation), "arms": arms,
              **({"workload": work} if work else {}), **ratios,
              "machine": machine(), "versions": package_versions(), "git_revision": git_revision()}
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{opts.task}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({**ratios, **{arm: {k: v for k, v in s.items() if k not in ("losses", "decisions", "env")}
                                   for arm, s in arms.items()}}, indent=2, default=str))
    return result


def _credited(arms: dict, work: dict | None, baseline: str) -> dict:
    """One round's arms credited with the same work: SFT the harness's token count and FLOPs; DPO a peer tool the
    tokens trl counted on the same pairs."""
    if work:
        return {arm: credit(summary, work) for arm, summary in arms.items()}
    if "trained_tokens" in arms[baseline]:
        for summary in arms.values():
            if "train_runtime" in summary and "trained_tokens" not in summary:
                summary.update(trained_tokens=arms[baseline]["trained_tokens"], tokens_credited_from=baseline,
                               tokens_per_second=arms[baseline]["trained_tokens"] / summary["train_runtime"])
    return arms


def _median_run(runs: list[dict]) -> dict:
    """An arm's run of median tokens/s over the rounds (reported whole, so its figures belong together), with
    every round's tokens/s, peak RSS and held-out loss beside it. An arm that failed in any round holds its first
    error (a round's failure is not hidden behind the other rounds' figures)."""
    failed = [run for run in runs if "tokens_per_second" not in run]
    if len(runs) == 1 or failed:
        return (failed or runs)[0]
    chosen = dict(sorted(runs, key=lambda run: run["tokens_per_second"])[(len(runs) - 1) // 2])
    chosen["rounds"] = [{"tokens_per_second": run["tokens_per_second"], "peak_rss_mb": run["peak_memory_mb"]["rss"],
                         "heldout_loss": run.get("heldout_loss")} for run in runs]
    return chosen


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
