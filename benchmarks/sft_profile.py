"""Where our SFT step spends its CPU time: torch.profiler over a few optimizer steps of the SFT recipe.

    python -m benchmarks sft_profile [--examples 16 --steps 2 --max_length 512]   # -> results/sft_profile.json

The bench's workload (the embedded SmolLM2, LoRA r16 all-linear, alpaca rows, effective batch 4 in micro-batches
of the bench's arms.OURS_MICRO_BATCH rows, our recipe's defaults); one optimizer step runs first unprofiled
(warm-up: oneDNN kernel choice, first allocations), then `--steps` steps are profiled, data loading and collation
included. Recorded: the top ops by self CPU time, their share of the profiled time, and a few groups (matmuls,
attention, the LM head's loss, elementwise, optimizer, data loading).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {  # op-name fragments -> group (first match wins; the rest is "other")
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn"),
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention", "softmax"),
    "loss / LM head": ("log_softmax", "logsumexp", "nll_loss", "cross_entropy", "chunked"),
    "optimizer": ("Optimizer.step", "adamw", "_foreach", "lerp", "addcdiv"),
    "data loading": ("DataLoader", "collat", "enumerate("),
    "copies / casts": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow", "aten::mean", "aten::neg",
                    "aten::sub", "aten::div", "aten::sum", "aten::where", "aten::fill_", "aten::zero_",
                    "aten::index", "aten::embedding", "aten::sigmoid", "aten::exp"),
}


def _profiler_callback(first: int, steps: int, holder: dict):
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == first:
                holder["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                holder["profiler"].__enter__()
                holder["start"] = time.perf_counter()
            elif state.global_step == first + steps and "profiler" in holder:
                self.stop(state)
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):  # an epoch shorter than warm-up + steps
            if "profiler" in holder and "seconds" not in holder:
                self.stop(state)

        def stop(self, state):
            holder["seconds"] = time.perf_counter() - holder["start"]
            holder["steps"] = state.global_step - first
            holder["profiler"].__exit__(None, None, None)

    return Profile()


def _group(name: str) -> str:
    return next((group for group, parts in GROUPS.items() if any(p.lower() in name.lower() for p in parts)), "other")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sft_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "llamafactory_demo" /
                                              "alpaca_en_demo.json"))
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps profiled, after one warm-up step")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--extra", nargs="*", default=[], help="more recipe arguments (e.g. --bf16 true)")
    opts = parser.parse_args(argv)

    import torch

    from benchmarks.arms import OURS_MICRO_BATCH, _lora_args, write_subsets
    from benchmarks.record_run import machine
    from finetune_kit import recipes
    from finetune_kit.runs import package_versions
    from finetune_kit.trainer_setup import driver_callbacks

    holder: dict = {}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        train, _ = write_subsets(Path(opts.data), opts.examples, 0, 42, Path(tmp))
        argv_recipe = ["--model_name_or_path", opts.model, "--dataset_name", str(train), "--output_dir",
                       str(Path(tmp) / "run"), "--per_device_train_batch_size", str(OURS_MICRO_BATCH),
                       "--gradient_accumulation_steps", str(4 // OURS_MICRO_BATCH), "--learning_rate", "2e-4",
                       "--seed", "42", "--max_length", str(opts.max_length),
                       "--eval_split_ratio", "0", *_lora_args(), "--num_train_epochs", "1", "--logging_steps", "1",
                       "--save_strategy", "no", "--report_to", "none", "--report", "false", "--disable_tqdm", "true",
                       *opts.extra]
        with driver_callbacks(_profiler_callback(1, opts.steps, holder)):
            recipes.get("sft").load().main(argv_recipe)
        decisions = json.loads((Path(tmp) / "run" / "run_info.json").read_text()).get("decisions")
    if "profiler" not in holder:
        raise SystemExit(f"--examples {opts.examples} made fewer than 2 optimizer steps: nothing after the warm-up")
    events = holder["profiler"].key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:opts.top]
    groups: dict[str, float] = {}
    for e in events:
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + e.self_cpu_time_total
    result = {"name": "sft_profile", "command": "python -m benchmarks sft_profile " + " ".join(argv),
              "profiled_optimizer_steps": holder["steps"], "profiled_wall_seconds": round(holder["seconds"], 2),
              "self_cpu_seconds_total": round(total / 1e6, 2), "threads": torch.get_num_threads(),
              "top_ops_by_self_cpu": [{"op": e.key, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
                                       "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
                                      for e in top],
              "groups_share_of_self_cpu": {g: round(t / total, 4) for g, t in sorted(groups.items(),
                                                                                      key=lambda kv: -kv[1])},
              "decisions": decisions, "loadavg_start": load, "loadavg_end": os.getloadavg(),
              "machine": machine(), "versions": package_versions()}
    out = Path(opts.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_profile.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("profiled_wall_seconds", "self_cpu_seconds_total",
                                             "groups_share_of_self_cpu")}, indent=2))
    for row in result["top_ops_by_self_cpu"]:
        print(f"{row['self_cpu_s']:8.3f}s {row['share']:6.1%} {row['calls']:6d}  {row['op']}")
    return result
