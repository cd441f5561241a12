"""Extractive question answering on SQuAD-format JSON (v1, and v2 with unanswerable questions).

    finetune-kit train question_answering --config question_answering_minilm_squad
    finetune-kit train question_answering --config ...

Validation is split off by article (`eval_split_ratio` of the articles, or `eval_dataset_name`), so the reported
exact match / F1 are on text the model never saw. Long contexts are split into overlapping windows; answers are
post-processed into the best span over all windows, or "" when the null score wins by `null_score_threshold` (v2).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from datasets import Dataset
from transformers import (
    AutoModelForQuestionAnswering,
    Trainer,
    default_data_collator,
    set_seed,
)

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import QuestionAnsweringConfig
from finetune_kit.decisions import Decisions
from finetune_kit.errors import DataError, run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.metrics import load_metric
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import qa
from finetune_kit.trainer_setup import prepare_trainer


def split_by_article(rows: list[dict], ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    titles = sorted({r["title"] for r in rows})
    if len(titles) < 2:
        raise DataError("eval_split_ratio splits by article, and the data has only one; give eval_dataset_name.")
    random.Random(seed).shuffle(titles)
    held = set(titles[: max(1, round(ratio * len(titles)))])
    return [r for r in rows if r["title"] not in held], [r for r in rows if r["title"] in held]


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(QuestionAnsweringConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    rows, given_eval = qa.squad_splits(cfg)
    if given_eval is not None:
        train_rows, eval_rows = rows, given_eval
    elif cfg.data.eval_split_ratio:
        train_rows, eval_rows = split_by_article(rows, cfg.data.eval_split_ratio, cfg.data.seed_for_split(args.seed))
    else:
        train_rows, eval_rows = rows, []
    train_rows = train_rows[: cfg.data.max_train_samples or None]
    version_2 = task.version_2_with_negative or any(not r["answers"]["text"] for r in rows)

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_examples = Dataset.from_list(train_rows)
    window = {"max_length": task.max_length, "stride": task.doc_stride}
    train = train_examples.map(lambda b: qa.train_features(tokenizer, b, **window), batched=True,
                               remove_columns=train_examples.column_names)
    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    model = AutoModelForQuestionAnswering.from_pretrained(resolve_checkpoint(cfg.model.model_name_or_path, whole=True),
                                                          trust_remote_code=args.trust_remote_code)
    if cfg.model.use_peft:
        model = with_task_adapters(model, cfg.model, "QUESTION_ANS", head="qa_outputs")

    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      data_collator=default_data_collator, callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if eval_rows:
        metrics.update(evaluate_squad(trainer, tokenizer, eval_rows, task, window, version_2))
        print(f"held-out exact match {metrics['eval_exact']:.1f}, F1 {metrics['eval_f1']:.1f} "
              f"on {len(eval_rows)} questions")

    finish_run(trainer, cfg, "question_answering", metrics, decisions)
    return metrics


def evaluate_squad(trainer, tokenizer, eval_rows, task, window, version_2: bool) -> dict:
    examples = Dataset.from_list(eval_rows)
    features = examples.map(lambda b: qa.eval_features(tokenizer, b, **window), batched=True,
                            remove_columns=examples.column_names)
    output = trainer.predict(features.remove_columns(["example_id", "offset_mapping"]))
    start_logits, end_logits = output.predictions
    answers = qa.best_answers(eval_rows, features, start_logits, end_logits, task.n_best_size,
                              task.max_answer_length, task.null_score_threshold if version_2 else None)
    scores = load_metric("squad_v2").compute(predictions=[answers[r["id"]] for r in eval_rows],
                                             references=[r["answers"]["text"] or [""] for r in eval_rows])
    Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
    Path(trainer.args.output_dir, "predictions.json").write_text(json.dumps(answers, indent=1))
    return {f"eval_{k}": v for k, v in scores.items()}


if __name__ == "__main__":
    run_cli(main)
