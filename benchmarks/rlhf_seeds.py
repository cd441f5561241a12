"""`make rlhf` in both precisions and over seeds: does PPO improve held-out reward and rule-following every time?

For each precision (FINETUNE_KIT_BF16=1: bf16 autocast, whatever the CPU; =0: fp32) the SFT model and the reward
model (from the base, as `make rlhf` trains it) are trained once (seed 42), then PPO runs from them once per seed. Each PPO run is
summarised by `finetune_kit.demo_rlhf report` (held-out mean reward, rule-following and KL, before and after).
Writes benchmarks/results/rlhf_seeds.json: every run, and the mean and spread over seeds per precision.

    python benchmarks/rlhf_seeds.py [--seeds 42 43 44] [--precisions 1 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record_run import RESULTS, machine

ROOT = Path(__file__).resolve().parent.parent
KIT = [sys.executable, "-m", "finetune_kit.cli"]


def run(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--precisions", nargs="+", default=["1", "0"], help="FINETUNE_KIT_BF16 values")
    opts = parser.parse_args()
    run([sys.executable, "-m", "finetune_kit.demo_rlhf", "data", "--out", "data/generated/rlhf"], dict(os.environ))
    runs, summary = [], {}
    for precision in opts.precisions:
        env = {**os.environ, "FINETUNE_KIT_BF16": precision}
        sft, reward = f"runs/rlhf-sft-bf16{precision}", f"runs/rlhf-reward-bf16{precision}"
        stages = run([*KIT, "train", "sft", "--config", "sft_rlhf_smollm2", "--output_dir", sft,
                      "--overwrite_output_dir", "true"], env)
        stages += run([*KIT, "train", "reward", "--config", "reward_lora_smollm2", "--output_dir", reward,
                       "--overwrite_output_dir", "true"], env)
        for seed in opts.seeds:
            out = f"runs/rlhf-ppo-bf16{precision}-seed{seed}"
            wall = run([*KIT, "train", "ppo", "--config", "ppo_lora_smollm2", "--model_name_or_path", sft,
                        "--reward_model", reward, "--output_dir", out, "--seed", str(seed),
                        "--overwrite_output_dir", "true"], env)
            run([sys.executable, "-m", "finetune_kit.demo_rlhf", "report", "--ppo", out, "--reward", reward], env)
            result = json.loads((ROOT / out / "demo_summary.json").read_text())
            guard = json.loads((ROOT / out / "run_info.json").read_text())["metrics"].get("guard")
            runs.append({"bf16": precision == "1", "seed": seed, "ppo_seconds": round(wall, 1),
                         "sft_and_reward_seconds": round(stages, 1), **result, "guard": guard})
            print(json.dumps(runs[-1]["before"]), "->", json.dumps(runs[-1]["after"]), flush=True)
        mine = [r for r in runs if r["bf16"] == (precision == "1")]
        summary[f"bf16={precision == '1'}"] = {
            key: {"before_mean": statistics.mean(r["before"][key] for r in mine),
                  "after_mean": statistics.mean(r["after"][key] for r in mine),
                  "after_sd": statistics.stdev(r["after"][key] for r in mine) if len(mine) > 1 else 0.0,
                  "improved_in": sum(r["after"][key] > r["before"][key] for r in mine)}
            for key in ("reward_mean", "follows_rule", "kl")} | {"runs": len(mine)}
    result = {"name": "rlhf_seeds", "command": "python benchmarks/rlhf_seeds.py " + " ".join(sys.argv[1:]),
              "summary": summary, "runs": runs, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rlhf_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
