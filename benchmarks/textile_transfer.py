"""Transfer learning on textile defects: pretrained EfficientNet-Lite0 vs the same architecture from random weights vs
the small ViT built from a config, same budget.

    python -m finetune_kit.demo_vision data --out data/generated/textile
    python -m benchmarks.textile_transfer [--epochs 1] [--image_size 128] [--arms pretrained,random,vit]

Every arm is the shipped config image_classification_efficientnet_textile (stratified 80 / 20 split, seed 42,
class_weights auto, flip augmentation, 128x128 inputs, batch 32, AdamW lr 1e-3 cosine, one epoch) with only
model_name_or_path changed, each in its own `finetune-kit train` process. Reports held-out accuracy, macro-F1, the
recall of the two minority classes (local, global defects), the score before training (eval_on_start) and the
process's wall time. Writes benchmarks/results/textile_transfer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"pretrained": "efficientnet-lite0", "random": "timm:tf_efficientnet_lite0", "vit": "vit-tiny-from-config"}
CONFIG = "image_classification_efficientnet_textile"


def run_arm(arm: str, opts) -> dict:
    out = ROOT / "runs" / f"bench-textile-{arm}"
    command = [sys.executable, "-m", "finetune_kit.cli", "train", "image_classification", "--config", CONFIG,
               "--model_name_or_path", ARMS[arm], "--output_dir", str(out), "--overwrite_output_dir", "true",
               "--num_train_epochs", str(opts.epochs), "--image_size", str(opts.image_size),
               "--dataset_name", str(opts.data)]
    started = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    from finetune_kit.demo_vision import scores

    result = scores(out)
    after = result["after"]
    return {"model": ARMS[arm], "accuracy": after["accuracy"], "f1_macro": after["f1_macro"],
            "recall": after["recall"], "minority_recall_mean": sum(after["recall"][c] for c in ("local", "global")) / 2,
            "before": result["before"], "train_seconds": result["train_seconds"], "wall_seconds": round(wall, 1),
            "command": " ".join(["finetune-kit", *command[3:]])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.textile_transfer", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "generated" / "textile")
    parser.add_argument("--name", default="textile_transfer")
    opts = parser.parse_args(argv)
    from benchmarks.record_run import RESULTS, machine

    arms = {}
    for arm in opts.arms.split(","):
        arms[arm] = run_arm(arm, opts)
        a = arms[arm]
        print(f"{arm:10} accuracy {a['accuracy']:.3f}  macro-F1 {a['f1_macro']:.3f}  recall local "
              f"{a['recall']['local']:.3f} global {a['recall']['global']:.3f}  (before: accuracy "
              f"{a['before']['accuracy']:.3f})  {a['wall_seconds']:.0f} s", flush=True)
    result = {"name": opts.name, "command": "python -m benchmarks.textile_transfer " + " ".join(argv or sys.argv[1:]),
              "config": CONFIG, "epochs": opts.epochs, "image_size": opts.image_size, "arms": arms,
              "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / (opts.name + '.json')}")
    return result


if __name__ == "__main__":
    main()
