"""Held-out HasAns F1 / NoAns accuracy / F1 at several null thresholds, for a finished run of the shipped QA config.

    python benchmarks/qa_threshold_curve.py RUN_FOLDER      # writes RUN_FOLDER/threshold_curve.json

Reads what the run wrote for its held-out article (best_spans.json, null_odds.json: no model is loaded) and scores
each threshold with the recipe's own answer rule and metric: what answering more questions buys on answerable ones
and costs on unanswerable ones. A measurement, not a test."""
import json
import sys
from pathlib import Path

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import QuestionAnsweringConfig
from finetune_kit.metrics import load_metric
from finetune_kit.tasks import qa


def main() -> None:
    run = Path(sys.argv[1])
    cfg = parse_config(QuestionAnsweringConfig, ["--config", "question_answering_minilm_squad"])
    _, eval_rows, _, _ = qa.question_splits(cfg)
    texts = json.loads((run / "best_spans.json").read_text())
    odds = json.loads((run / "null_odds.json").read_text())
    spans = {i: (texts[i], float("inf") if odds[i] is None else odds[i]) for i in texts}  # None: no valid span
    chosen = json.loads((run / "run_info.json").read_text())["decisions"]["null_score_threshold"]["value"]
    references = [r["answers"]["text"] or [""] for r in eval_rows]
    metric = load_metric("squad_v2")
    curve = []
    for threshold in [chosen, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10, None]:  # None: every question answered with its span
        answers = qa.answers_at(spans, threshold)
        scores = metric.compute(predictions=[answers[r["id"]] for r in eval_rows], references=references)
        curve.append({"threshold": threshold, "HasAns_f1": round(scores["HasAns_f1"], 1),
                      "NoAns_accuracy": round(scores["NoAns_exact"], 1), "f1": round(scores["f1"], 1)})
        print(curve[-1])
    (run / "threshold_curve.json").write_text(json.dumps({"chosen_threshold": chosen, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
