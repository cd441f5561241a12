"""Reference-free preference losses on real pairs: ORPO (orpo recipe) and SimPO (cpo recipe) on the embedded
SmolLM2-135M-Instruct with LLaMA-Factory's `dpo_en_demo` (../shared/datasets), held-out reward accuracy and margin
before vs after.

Each arm is the shipped config (`orpo_lora_smollm2`, `cpo_lora_smollm2`: LoRA r16, seeded 10% held out) with the
settings of the recorded DPO measurement (benchmarks/results/dpo_dpo_en_demo_smollm2.json: max_length 256, lr 2e-4,
batch 4 x accumulation 2) but `--max_steps` optimizer steps instead of DPO's epoch: on 2 CPU cores an epoch takes
well over the few minutes a run may take here. Before / after are the recipes' own held-out evaluations (trl's
`rewards/accuracies` and `rewards/margins`: beta x the length-averaged log-probability, chosen minus rejected), as
the DPO one reports them; the log-probability margin is that margin / beta. Pairs whose prompt alone fills
max_length are dropped by the recipes (skip_invalid_rows, counted): the held-out pairs are those that fit.
Writes benchmarks/results/preference_losses.json after every arm.

    python benchmarks/preference_losses.py [--max_steps 4] [--arms orpo simpo]
    python benchmarks/preference_losses.py --data generated --max_steps 24 --arms dpo orpo simpo

`--data generated`: the preference pairs `make rlhf` generates (finetune_kit/demo_rlhf.py: short answers, the chosen
one opening with "Sure!", the rejected with another opener; 10% held out), rows short enough that an epoch-scale
budget fits on 2 cores, with DPO beside them as the reference point (its margins start at 0: policy = reference).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time

import yaml
from record_run import RESULTS, machine
from rlhf_seeds import KIT, ROOT

DATA = "../shared/datasets/llamafactory_demo/dpo_en_demo.json"
# The recorded DPO run's settings; warmup 0 so every one of the few steps trains; activation checkpointing off: the
# micro-batch fits in RAM many times over, and recomputing it would cost a quarter of the small budget.
COMMON = ["--dataset_name", DATA, "--max_length", "256", "--learning_rate", "2.0e-4", "--warmup_steps", "0",
          "--activation_checkpointing", "false", "--logging_steps", "1", "--overwrite_output_dir", "true"]
ARMS = {"orpo": ("orpo", "orpo_lora_smollm2"), "simpo": ("cpo", "cpo_lora_smollm2"), "dpo": ("dpo", "dpo_lora_smollm2")}
GENERATED = "data/generated/rlhf"
# The generated pairs: ~40 tokens each; batch 4 x 2 as above; held out 10% of the 240 pairs.
GENERATED_COMMON = ["--dataset_name", f"{GENERATED}/pairs.jsonl", "--eval_split_ratio", "0.1", "--max_length", "128",
                    "--learning_rate", "2.0e-4", "--warmup_steps", "0", "--activation_checkpointing", "false",
                    "--logging_steps", "1", "--overwrite_output_dir", "true", "--skip_invalid_rows", "false"]


def run_arm(arm: str, max_steps: int, data: str = "dpo_en_demo") -> dict:
    recipe, config = ARMS[arm]
    out = f"runs/bench-preference-{arm}"
    common = GENERATED_COMMON if data == "generated" else COMMON
    command = [*KIT, "train", recipe, "--config", config, *common, "--max_steps", str(max_steps), "--output_dir", out]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    (ROOT / out).mkdir(parents=True, exist_ok=True)
    (ROOT / out / "benchmark.log").write_text(log)
    if done.returncode:
        raise SystemExit(f"{arm} failed ({done.returncode}):\n{log[-3000:]}")
    info = json.loads((ROOT / out / "run_info.json").read_text())
    metrics, beta = info["metrics"], yaml.safe_load((ROOT / out / "config.yaml").read_text())["beta"]
    losses = [e["loss"] for e in json.loads((ROOT / out / "log_history.json").read_text()) if "loss" in e]
    dropped, held_out = re.search(r"dropped (\d+) of (\d+) pairs", log), re.search(r"on (\d+) pairs", log)

    def side(prefix: str) -> dict:
        return {"reward_accuracy": round(metrics[f"{prefix}rewards/accuracies"], 4),
                "reward_margin": round(metrics[f"{prefix}rewards/margins"], 4),
                "logp_margin": round(metrics[f"{prefix}logps/chosen"] - metrics[f"{prefix}logps/rejected"], 4),
                "loss": round(metrics[f"{prefix}loss"], 4)}

    return {"arm": arm, "recipe": recipe, "data": data, "beta": beta, "max_steps": max_steps,
            "command": " ".join(["python -m finetune_kit.cli", *command[len(KIT):]]), "wall_seconds": round(wall, 1),
            "training_pairs": int(dropped.group(2)) - int(dropped.group(1)) if dropped else None,
            "held_out_pairs": int(held_out.group(1)) if held_out else None,
            "before": side("before_"), "after": side("eval_"),
            "train_loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            "train_runtime": metrics.get("train_runtime"), "peak_memory_mb": info.get("peak_memory_mb"),
            "versions": info["versions"], "git_revision": info["git_revision"]}


def _group(run: dict) -> tuple[str, int]:
    return run.get("data", "dpo_en_demo"), run["max_steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--arms", nargs="+", default=["orpo", "simpo"], choices=list(ARMS))
    parser.add_argument("--data", choices=["dpo_en_demo", "generated"], default="dpo_en_demo")
    opts = parser.parse_args()
    if opts.data == "generated":
        subprocess.run([KIT[0], "-m", "finetune_kit.demo_rlhf", "data", "--out", GENERATED], cwd=ROOT, check=True)
    elif not (ROOT / DATA).is_file():
        raise SystemExit(f"{DATA} is not here: this benchmark needs ../shared/datasets beside the checkout.")
    path = RESULTS / "preference_losses.json"
    # Arms run by an earlier invocation (other data or budget included) are kept: each arm is its own run.
    earlier = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in earlier if not (_group(r) == (opts.data, opts.max_steps) and r["arm"] in opts.arms)]
    for arm in opts.arms:  # one at a time: the machine has 2 cores
        runs.append(run_arm(arm, opts.max_steps, opts.data))
        print(json.dumps(runs[-1], indent=2), flush=True)
        groups = sorted({_group(r) for r in runs})
        commands = [f"python benchmarks/preference_losses.py --data {data} --max_steps {steps} --arms "
                    + " ".join(r["arm"] for r in runs if _group(r) == (data, steps)) for data, steps in groups]
        result = {"name": "preference_losses", "command": "; ".join(commands),
                  "note": __doc__.split("\n\n")[1].replace("\n", " "), "runs": runs, "machine": machine()}
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
