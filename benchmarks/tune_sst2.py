"""Hyperparameter search vs the default config on SST-2 with the embedded MiniLM, within a CPU-time budget.

    python benchmarks/tune_sst2.py [--budget_minutes 28]

Both arms use finetune_kit/configs/text_classification_minilm_sst2_tune.yaml (the same 8k / ~1k / ~1k split):
the default arm trains it as written; the tune arm runs `finetune-kit tune` on it, starting no trial after the
budget. Reported: held-out test accuracy of the default run and of the best trial (chosen on validation accuracy),
trial count, pruned trials, wall times. Writes benchmarks/results/sst2_tune.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from record_run import RESULTS, machine  # noqa: E402

CONFIG = "finetune_kit/configs/text_classification_minilm_sst2_tune.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget_minutes", type=float, default=28.0)
    parser.add_argument("--out", default="runs/bench-sst2-tune")
    args = parser.parse_args()
    from finetune_kit import recipes
    from finetune_kit.runs import package_versions
    from finetune_kit.tune import tune

    out = ROOT / args.out
    shutil.rmtree(out, ignore_errors=True)
    start = time.time()
    default = recipes.get("text_classification").load().main(["--config", str(ROOT / CONFIG),
                                                              "--output_dir", str(out / "default")])
    default_seconds = time.time() - start
    start = time.time()
    best = tune(["--config", str(ROOT / CONFIG), "--study_dir", str(out / "study"),
                 "--timeout_minutes", str(args.budget_minutes)])
    tune_seconds = time.time() - start
    import optuna

    study = optuna.load_study(study_name="finetune-kit", storage=f"sqlite:///{out / 'study' / 'study.db'}")
    states = [t.state.name for t in study.trials]
    result = {
        "name": "sst2_tune",
        "command": f"python benchmarks/tune_sst2.py --budget_minutes {args.budget_minutes}",
        "default": {"test_accuracy": default["test_accuracy"], "eval_accuracy": [  # its last validation score
            row["eval_accuracy"] for row in json.loads((out / "default" / "log_history.json").read_text())
            if "eval_accuracy" in row][-1],
                    "wall_seconds": round(default_seconds, 1)},
        "best_trial": {"number": best["number"], "eval_accuracy": best["value"], "params": best["params"],
                       "test_accuracy": best["test_metrics"].get("test_accuracy")},
        "search": {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                   "failed": states.count("FAIL"), "wall_seconds": round(tune_seconds, 1),
                   "budget_minutes": args.budget_minutes},
        "trials": [{"number": t.number, "state": t.state.name, "eval_accuracy": t.value, "params": t.params,
                    "test_accuracy": t.user_attrs.get("test_metrics", {}).get("test_accuracy")}
                   for t in study.trials],
        "machine": machine(),
        "versions": {**package_versions(), "optuna": optuna.__version__},
    }
    result["test_accuracy_gain"] = (result["best_trial"]["test_accuracy"] or 0) - default["test_accuracy"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sst2_tune.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("default", "best_trial", "search", "test_accuracy_gain")}, indent=2))


if __name__ == "__main__":
    main()
