"""The newer recipes on the embedded SmolLM2-135M-Instruct, held-out figures before and after, one run each.

- `rloo`, `online_dpo` (the `make grpo` task, configs `<recipe>_arithmetic_smollm2`): the 64 test questions
  answered greedily by the base model and by the kept policy (finetune_kit/demo_grpo.py: exact / format / value
  accuracy), and the recipe's own sampled validation reward (32 questions) before and after, with the guard's scores.
- `distill` (config `distill_smollm2`, the `make sft` data): the 4-layer student's top-1 agreement with the teacher
  and KL(teacher || student) per answer token on the held-out 10%, before and after (the recipe's `metrics`).

Writes benchmarks/results/<config>.json after each recipe (a cut-short run keeps what finished).

    python benchmarks/rl_breadth.py [--recipes online_dpo rloo distill]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from record_run import RESULTS, machine
from rlhf_seeds import KIT, ROOT, run

GRPO_DEMO = [sys.executable, "-m", "finetune_kit.demo_grpo"]
TEST = "data/generated/grpo/test.jsonl"
KEYS = ("exact_percent", "format_percent", "value_percent")


def shown(command: list[str]) -> str:
    """A command as a user types it: `python` for this interpreter."""
    return " ".join(["python", *command[1:]] if command[0] == sys.executable else command)


def arithmetic(recipe: str, env: dict) -> dict:
    config, out = f"{recipe}_arithmetic_smollm2", f"runs/{recipe}-arithmetic"
    before_file = "runs/arith-test-before.json"
    commands = [[*GRPO_DEMO, "data", "--out", "data/generated/grpo"],
                [*GRPO_DEMO, "score", "--model", "smollm2-135m-instruct", "--test", TEST, "--save", before_file],
                [*KIT, "train", recipe, "--config", config, "--output_dir", out, "--overwrite_output_dir", "true"],
                [*GRPO_DEMO, "score", "--model", out, "--test", TEST, "--save", f"{out}/demo_score.json"]]
    walls = [run(command, env) for command in commands]
    before = json.loads((ROOT / before_file).read_text())
    after = json.loads((ROOT / out / "demo_score.json").read_text())
    info = json.loads((ROOT / out / "run_info.json").read_text())
    metrics = info["metrics"]
    return {"config": config, "commands": [shown(c) for c in commands],
            "decisions": info.get("decisions"), "train_wall_seconds": round(walls[2], 1),
            "test_greedy": {"before": {k: before[k] for k in KEYS}, "after": {k: after[k] for k in KEYS}},
            "validation_reward_sampled": {"before": metrics["before"]["eval_reward"],
                                          "after": metrics["after"]["eval_reward"]},
            "guard": metrics.get("guard"), "after_answers_sample": after.get("answers", [])[:6]}


def distill(env: dict) -> dict:
    out = "runs/distill-smollm2"
    commands = [[sys.executable, "-m", "finetune_kit.demo", "data", "--out", "data/generated/identity"],
                [*KIT, "train", "distill", "--config", "distill_smollm2", "--output_dir", out,
                 "--overwrite_output_dir", "true"]]
    walls = [run(command, env) for command in commands]
    info = json.loads((ROOT / out / "run_info.json").read_text())
    metrics = info["metrics"]
    return {"config": "distill_smollm2", "commands": [shown(c) for c in commands],
            "decisions": info.get("decisions"), "train_wall_seconds": round(walls[1], 1),
            "held_out": {"before": metrics["before"], "after": metrics["after"]},
            "train_loss": metrics.get("train_loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["online_dpo", "rloo", "distill"],
                        choices=["online_dpo", "rloo", "distill"])
    opts = parser.parse_args()
    env = dict(os.environ)
    for recipe in opts.recipes:
        result = distill(env) if recipe == "distill" else arithmetic(recipe, env)
        name = result["config"]
        result = {"name": name, "command": f"python benchmarks/rl_breadth.py --recipes {recipe}", **result,
                  "machine": machine()}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "after_answers_sample"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
