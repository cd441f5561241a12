"""`make grpo` in both precisions and over seeds: does GRPO raise held-out accuracy every time?

The base model's greedy replies to the 64 test questions are judged once (finetune_kit/demo_grpo.py). For each
precision (FINETUNE_KIT_BF16=1: bf16 autocast, whatever the CPU; =0: fp32) and seed, the shipped config
`grpo_arithmetic_smollm2` trains once; its kept policy answers the same test questions greedily. Recorded per run:
exact / format / value accuracy before and after, trl's sampled validation reward before and after, the guard's
scores and kept step, and wall time. Writes benchmarks/results/grpo_seeds.json with the mean and spread per precision.

    python benchmarks/grpo_seeds.py [--seeds 42 43 44] [--precisions 1 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from record_run import RESULTS, machine
from rlhf_seeds import KIT, ROOT, run

DEMO = [sys.executable, "-m", "finetune_kit.demo_grpo"]
TEST = "data/generated/grpo/test.jsonl"
KEYS = ("exact_percent", "format_percent", "value_percent")


def summarise(runs: list[dict], before: dict) -> dict:
    out = {}
    for key in KEYS:
        after = [r["after"][key] for r in runs]
        out[key] = {"before": before[key], "after_mean": round(statistics.mean(after), 1),
                    "after_sd": round(statistics.stdev(after), 1) if len(after) > 1 else 0.0,
                    "improved_in": sum(a > before[key] for a in after)}
    return out | {"runs": len(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--precisions", nargs="+", default=["1", "0"], help="FINETUNE_KIT_BF16 values")
    opts = parser.parse_args()
    env = dict(os.environ)
    run([*DEMO, "data", "--out", "data/generated/grpo"], env)
    run([*DEMO, "score", "--model", "smollm2-135m-instruct", "--test", TEST, "--save", "runs/grpo-seeds-before.json"],
        env)
    before = json.loads((ROOT / "runs/grpo-seeds-before.json").read_text())
    runs = []
    for seed in opts.seeds:  # seed by seed, both precisions each: a run cut short still compares the two
        for precision in opts.precisions:
            env = {**os.environ, "FINETUNE_KIT_BF16": precision}
            out = f"runs/grpo-arithmetic-bf16{precision}-seed{seed}"
            wall = run([*KIT, "train", "grpo", "--config", "grpo_arithmetic_smollm2", "--output_dir", out,
                        "--seed", str(seed), "--overwrite_output_dir", "true"], env)
            run([*DEMO, "score", "--model", out, "--test", TEST, "--save", f"{out}/demo_score.json"], env)
            after = json.loads((ROOT / out / "demo_score.json").read_text())
            metrics = json.loads((ROOT / out / "run_info.json").read_text())["metrics"]
            runs.append({"bf16": precision == "1", "seed": seed, "grpo_seconds": round(wall, 1),
                         "after": {k: after[k] for k in KEYS},
                         "validation_reward": {"before": metrics["before"]["eval_reward"],
                                               "after": metrics["after"]["eval_reward"]},
                         "guard": metrics.get("guard")})
            print(json.dumps(runs[-1]), flush=True)
            write(runs, before)  # after every run: a cut-short benchmark keeps what finished


def write(runs: list[dict], before: dict) -> None:
    summary = {f"bf16={bf16}": summarise([r for r in runs if r["bf16"] == bf16], before)
               for bf16 in (True, False) if any(r["bf16"] == bf16 for r in runs)}
    result = {"name": "grpo_seeds", "command": "python benchmarks/grpo_seeds.py " + " ".join(sys.argv[1:]),
              "before": {k: before[k] for k in KEYS}, "summary": summary, "runs": runs, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grpo_seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
