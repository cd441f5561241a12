"""Vision-language SFT on the shapes demo: the tiny SmolVLM-shaped model (random weights) before and after training.

    python -m benchmarks.vision_chat_shapes [--max_steps 1000] [--data data/generated/shapes]

Draws the pictures and writes the untrained model when the data folder has none (finetune_kit/demo_vision_chat.py),
answers the 200 held-out questions greedily with the untrained model, trains with the shipped config
sft_vision_tiny_shapes in its own `finetune-kit train` process, and answers again. Reports answer accuracy (overall,
colour questions, shape questions; chance 1/6 and 1/4), the training loss first / last logged, the train and wall
time, versions and the command. Writes benchmarks/results/vision_chat_shapes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "sft_vision_tiny_shapes"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vision_chat_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "generated" / "shapes")
    parser.add_argument("--max_steps", type=int, default=None, help="default: the shipped config's")
    parser.add_argument("--name", default="vision_chat_shapes")
    opts = parser.parse_args(argv)
    from benchmarks.record_run import RESULTS, machine
    from finetune_kit import demo_vision_chat as demo

    model = opts.data / "smolvlm-tiny-from-config"
    if not (model / "config.json").is_file():
        demo.make_dataset(opts.data)
    test = opts.data / "test.jsonl"
    before = demo.score(str(model), test)
    print(f"before: {demo._figures(before)}", flush=True)

    out = ROOT / "runs" / "bench-vision-chat-shapes"
    command = [sys.executable, "-m", "finetune_kit.cli", "train", "sft_vision", "--config", CONFIG,
               "--model_name_or_path", str(model), "--dataset_name", str(opts.data / "train.jsonl"),
               "--eval_dataset_name", str(opts.data / "validation.jsonl"), "--output_dir", str(out),
               "--overwrite_output_dir", "true", *(["--max_steps", str(opts.max_steps)] if opts.max_steps else [])]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    after = demo.score(str(out), test)
    print(f"after:  {demo._figures(after)}", flush=True)

    history = json.loads((out / "log_history.json").read_text())
    info = json.loads((out / "run_info.json").read_text())
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    keep = ("accuracy", "accuracy_by_question")
    result = {"name": opts.name, "command": "python -m benchmarks.vision_chat_shapes " + " ".join(argv or sys.argv[1:]),
              "train_command": " ".join(["finetune-kit", *command[3:]]), "config": CONFIG,
              "model": "smolvlm-tiny-from-config (Idefics3 from a config, random weights: vision 2 x 64, text 2 x 64, "
                       "SmolLM2 tokenizer + SmolVLM image tokens, 4 image tokens a picture)",
              "held_out_rows": after["rows"], "chance": {"colour": round(1 / len(demo.COLOURS), 4),
                                                         "shape": round(1 / len(demo.SHAPES), 4)},
              "before": {k: before[k] for k in keep}, "after": {k: after[k] for k in keep},
              "loss_first": losses[0], "loss_last": losses[-1], "eval_loss": info["metrics"].get("eval_loss"),
              "train_seconds": round(info["metrics"]["train_runtime"], 1), "wall_seconds": round(wall, 1),
              "decisions": {k: v["value"] for k, v in info["decisions"].items()},
              "examples_after": after["examples"], "versions": info["versions"], "machine": machine(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"loss {losses[0][1]:.3f} (step {losses[0][0]}) -> {losses[-1][1]:.3f} (step {losses[-1][0]}); training "
          f"{result['train_seconds']:.0f} s, the train command {wall:.0f} s; wrote {RESULTS / (opts.name + '.json')}")
    return result


if __name__ == "__main__":
    main()
