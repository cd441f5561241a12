"""Zero-shot classification before and after clip fine-tuning: the tiny CLIP built from a config, on the generated
shapes (12 classes: four colours x three shapes; 240 held-out images, never trained on).

    python -m benchmarks.clip_zero_shot [--max_steps 1500] [--data data/generated/clip-shapes]

Writes the data and the untrained model with `python -m finetune_kit.demo_clip data` when the folder is missing, then
runs the shipped config `finetune-kit train clip --config clip_tiny_shapes` in its own process (the recipe scores
zero-shot accuracy before and after training and records both in run_info.json), and scores the saved run again
from its folder (`demo_clip score`: the reloaded model and processor must give the recorded figure). Writes
benchmarks/results/clip_zero_shot.json with the commands, steps, times, versions and the machine.
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
CONFIG = "clip_tiny_shapes"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clip_zero_shot", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "generated" / "clip-shapes")
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--name", default="clip_zero_shot")
    opts = parser.parse_args(argv)
    from benchmarks.record_run import RESULTS, machine
    from finetune_kit.demo_clip import make_dataset, score

    if not (opts.data / "clip-from-config" / "config.json").is_file():
        print(f"writing the shapes and the untrained tiny CLIP to {opts.data}", flush=True)
        make_dataset(opts.data)
    out = ROOT / "runs" / f"bench-{opts.name}"
    command = [sys.executable, "-m", "finetune_kit.cli", "train", "clip", "--config", CONFIG,
               "--model_name_or_path", str(opts.data / "clip-from-config"), "--dataset_name",
               str(opts.data / "train.csv"), "--zero_shot_dataset_name", str(opts.data / "zero_shot"),
               "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", str(opts.max_steps),
               "--report", "false"]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    info = json.loads((out / "run_info.json").read_text())
    metrics = info["metrics"]
    rescored = score(str(out), opts.data / "zero_shot")
    zero_shot = metrics["zero_shot"]
    result = {
        "name": opts.name,
        "command": " ".join(["python -m benchmarks.clip_zero_shot", *(argv if argv is not None else sys.argv[1:])]),
        "train_command": " ".join(["finetune-kit", *command[3:]]), "config": CONFIG,
        "zero_shot_accuracy_before": metrics["zero_shot_accuracy_before"],
        "zero_shot_accuracy_after": metrics["zero_shot_accuracy"],
        "zero_shot_accuracy_rescored_from_run_folder": rescored["accuracy"],
        "chance": round(1 / len(zero_shot["per_class"]), 4), "zero_shot_images": zero_shot["images"],
        "prompts": zero_shot["prompts"], "per_class": zero_shot["per_class"],
        "max_steps": opts.max_steps, "epochs": round(metrics["epoch"], 2), "train_loss": metrics["train_loss"],
        "final_logged_loss": [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e][-1],
        "train_seconds": metrics["train_runtime"], "steps_per_second": metrics["train_steps_per_second"],
        "wall_seconds_train_command": round(wall, 1), "decisions": info["decisions"],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "versions": info["versions"],
        "git_revision": info["git_revision"], "machine": machine(),
    }
    print(f"zero-shot accuracy {result['zero_shot_accuracy_before']:.3f} -> {result['zero_shot_accuracy_after']:.3f} "
          f"(chance {result['chance']:.3f}; rescored from the run folder {rescored['accuracy']:.3f}); "
          f"{opts.max_steps} steps in {metrics['train_runtime']:.0f} s, the train command {wall:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / (opts.name + '.json')}")
    return result


if __name__ == "__main__":
    main()
