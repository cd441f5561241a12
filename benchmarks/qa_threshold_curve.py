"""Held-out HasAns F1 / NoAns accuracy / F1 at several null thresholds, for a finished run of the shipped QA config.

    python benchmarks/qa_threshold_curve.py RUN_FOLDER      # writes RUN_FOLDER/threshold_curve.json

Re-predicts the held-out article's spans with the run's model (bf16 autocast on a CPU, as the recipe decided there;
the odds it finds are checked against the run's null_odds.json) and scores each threshold: what answering more
questions buys on answerable ones and costs on unanswerable ones. A measurement, not a test."""
import json
import sys
from pathlib import Path

from transformers import AutoModelForQuestionAnswering, Trainer, TrainingArguments

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import QuestionAnsweringConfig
from finetune_kit.metrics.squad_v2.squad_v2 import f1
from finetune_kit.models import load_tokenizer
from finetune_kit.recipes.question_answering import spans_of, split_by_article
from finetune_kit.tasks import qa


def main() -> None:
    run = Path(sys.argv[1])
    info = json.loads((run / "run_info.json").read_text())
    cfg = parse_config(QuestionAnsweringConfig, ["--config", "question_answering_minilm_squad"])
    rows, _ = qa.squad_splits(cfg)
    _, eval_rows = split_by_article(rows, cfg.data.eval_split_ratio, cfg.data.seed_for_split(cfg.training.seed))
    bf16 = info["decisions"].get("bf16", {}).get("value", False)  # predict as the run did
    args = TrainingArguments(str(run / "curve-tmp"), per_device_eval_batch_size=64, report_to="none", bf16=bf16,
                             use_cpu=bf16)
    trainer = Trainer(model=AutoModelForQuestionAnswering.from_pretrained(run), args=args)
    window = {"max_length": cfg.task.max_length, "stride": cfg.task.doc_stride}
    spans = spans_of(trainer, load_tokenizer(str(run)), eval_rows, cfg.task, window)
    odds = json.loads((run / "null_odds.json").read_text())
    print("largest null-odds difference from the run's own:",
          max(abs(odds[i] - m) for i, (_, m) in spans.items() if odds[i] is not None))
    chosen = info["decisions"]["null_score_threshold"]["value"]
    curve = []
    for threshold in [chosen, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10, None]:  # None: every question answered with its span
        has, no = [], []
        for r in eval_rows:
            text, margin = spans[r["id"]]
            answer = "" if threshold is not None and margin > threshold else text
            if r["answers"]["text"]:
                has.append(max(f1(answer, gold) for gold in r["answers"]["text"]))
            else:
                no.append(answer == "")
        curve.append({"threshold": threshold, "HasAns_f1": round(100 * sum(has) / len(has), 1),
                      "NoAns_accuracy": round(100 * sum(no) / len(no), 1),
                      "f1": round(100 * (sum(has) + sum(no)) / (len(has) + len(no)), 1)})
        print(curve[-1])
    (run / "threshold_curve.json").write_text(json.dumps({"chosen_threshold": chosen, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
