"""Class imbalance on SST-2: a 95:5 subset trained three ways (plain, class_weights: auto, sampling: balanced).

    python benchmarks/imbalance_sst2.py [--rows 8000]

Writes benchmarks/results/sst2_imbalance.json with minority-class recall and macro-F1 on a held-out split that
keeps the 95:5 ratio (what deployment looks like).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from record_run import RESULTS, machine  # noqa: E402

SST2 = ROOT.parent / "shared" / "datasets" / "sst2" / "train.tsv"


def subset(rows: int, out: Path, seed: int = 0) -> Path:
    with SST2.open(newline="") as handle:
        data = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = random.Random(seed)
    rng.shuffle(data)
    minority = int(rows * 0.05)
    picked = [r for r in data if r["label"] == "0"][: rows - minority] + [r for r in data if r["label"] == "1"][:minority]
    rng.shuffle(picked)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": r["text"], "label": "positive" if r["label"] == "1" else "negative"})
                           + "\n" for r in picked))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args()
    from finetune_kit import recipes

    data = subset(args.rows, ROOT / "runs" / "imbalance" / "sst2_95_5.jsonl")
    common = ["--model_name_or_path", "minilm-l6", "--dataset_name", str(data), "--eval_split_ratio", "0.1",
              "--test_split_ratio", "0.2", "--max_length", "64", "--num_train_epochs", "1",
              "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "128", "--learning_rate", "1e-4",
              "--warmup_steps", "0.06", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
              "--disable_tqdm", "true", "--overwrite_output_dir", "true", "--seed", "42"]
    variants = {"plain": [], "class_weights_auto": ["--class_weights", "auto"], "sampling_balanced": ["--sampling", "balanced"]}
    results = {}
    for name, extra in variants.items():
        start = time.time()
        metrics = recipes.get("text_classification").load().main(
            common + extra + ["--output_dir", str(ROOT / "runs" / "imbalance" / name)])
        report = metrics["per_class"]
        results[name] = {"minority_recall": report["positive"]["recall"], "minority_f1": report["positive"]["f1-score"],
                         "majority_recall": report["negative"]["recall"], "macro_f1": metrics["test_f1_macro"],
                         "accuracy": metrics["test_accuracy"], "seconds": round(time.time() - start, 1)}
        print(name, results[name], flush=True)
    out = {"name": "sst2_imbalance", "command": f"python benchmarks/imbalance_sst2.py --rows {args.rows}",
           "data": f"{args.rows} SST-2 phrases, 95% negative / 5% positive; stratified 70/10/20 train/val/test",
           "results": results, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sst2_imbalance.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
