"""Extractive question answering on SQuAD-format data (v1, and v2 with unanswerable questions): SQuAD's own JSON, or
one question per row (.jsonl: context, question, answers {text, answer_start}, as the Hub's squad datasets hold it).

    finetune-kit train question_answering --config question_answering_minilm_squad
    finetune-kit train question_answering --config ...

Validation is split off by article (`eval_split_ratio` of the articles, or `eval_dataset_name`), so the reported
exact match / F1 are on text the model never saw. Long contexts are split into overlapping windows; answers are
post-processed into the best span over all windows, or "" when the null score wins by `null_score_threshold` (v2).
Left unset, that threshold is chosen after training for the best F1 on paragraphs held out of the training articles
(`null_calibration_ratio`), never on the evaluation article: a fixed 0 can make a small model answer "" to everything.
"""

from __future__ import annotations


from datasets import Dataset
from transformers import (
    AutoModelForQuestionAnswering,
    DataCollatorWithPadding,
    Trainer,
    set_seed,
)

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import QuestionAnsweringConfig
from finetune_kit.decisions import Decision, Decisions
from finetune_kit.errors import run_cli
from finetune_kit.guards import NonFiniteGuard
from finetune_kit.metrics import load_metric
from finetune_kit.models import load_tokenizer, resolve_checkpoint, with_task_adapters
from finetune_kit.runs import check_output_dir, finish_run
from finetune_kit.tasks import qa
from finetune_kit.trainer_setup import prepare_trainer


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(QuestionAnsweringConfig, argv)
    decisions = Decisions(cfg, argv)  # what was chosen for keys left unset: printed, recorded in run_info.json
    args, task = cfg.training, cfg.task
    resume = check_output_dir(args.output_dir, cfg.run.overwrite_output_dir, args.resume_from_checkpoint)

    # Every question checked; held out by article (evaluation) and by paragraph (null calibration), whole.
    train_rows, eval_rows, calibration, version_2 = qa.question_splits(cfg)
    choose_threshold = version_2 and task.null_score_threshold is None
    train_rows = train_rows[: cfg.data.max_train_samples or None]

    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               trust_remote_code=args.trust_remote_code)
    train_examples = Dataset.from_list(train_rows)
    window = {"max_length": task.max_length, "stride": task.doc_stride}
    # Unpadded: the collator pads each batch to its longest window, not every window to max_length.
    train = train_examples.map(lambda b: qa.train_features(tokenizer, b, **window, padding=False), batched=True,
                               remove_columns=train_examples.column_names)
    set_seed(args.seed)  # new heads / adapters start from the same random init on every run and resume
    model = AutoModelForQuestionAnswering.from_pretrained(resolve_checkpoint(cfg.model.model_name_or_path, whole=True),
                                                          trust_remote_code=args.trust_remote_code)
    if cfg.model.use_peft:
        model = with_task_adapters(model, cfg.model, "QUESTION_ANS", head="qa_outputs")

    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[NonFiniteGuard(cfg.run.on_nonfinite)])
    # Atomic checkpoints, resumable length-grouped order, a replaced run kept until the first step succeeds.
    decisions.add(None, *prepare_trainer(trainer, replace=cfg.run.overwrite_output_dir and resume is None))
    metrics = dict(trainer.train(resume_from_checkpoint=resume).metrics)
    if choose_threshold:
        decisions.add(cfg, null_threshold(trainer, tokenizer, calibration, task, window))
    if eval_rows:
        metrics.update(evaluate_squad(trainer, tokenizer, eval_rows, task, window, version_2))
        parts = [f"{name} F1 {metrics[f'eval_{name}_f1']:.1f}" for name in ("HasAns", "NoAns")
                 if f"eval_{name}_f1" in metrics]
        print(f"held-out exact match {metrics['eval_exact']:.1f}, F1 {metrics['eval_f1']:.1f} "
              f"({', '.join(parts)}) on {len(eval_rows)} questions")

    finish_run(trainer, cfg, "question_answering", metrics, decisions)
    return metrics


def spans_of(trainer, tokenizer, rows, task, window) -> dict[str, tuple[str, float]]:
    """Each question's best span and its margin against the null answer (tasks/qa.py)."""
    examples = Dataset.from_list(rows)
    features = examples.map(lambda b: qa.eval_features(tokenizer, b, **window), batched=True,
                            remove_columns=examples.column_names)
    start_logits, end_logits = trainer.predict(features.remove_columns(["example_id", "offset_mapping"])).predictions
    return qa.best_spans(rows, features, start_logits, end_logits, task.n_best_size, task.max_answer_length)


def null_threshold(trainer, tokenizer, calibration, task, window) -> Decision:
    if not calibration:
        return Decision("null_score_threshold", 0.0, "no paragraphs held out to choose it on (null_calibration_ratio "
                                                     "0 or one paragraph): transformers' run_qa default")
    from finetune_kit.metrics.squad_v2.squad_v2 import f1

    threshold, best = qa.choose_null_threshold(calibration, spans_of(trainer, tokenizer, calibration, task, window), f1)
    return Decision("null_score_threshold", round(threshold, 4),
                    f"best F1 ({best:.1f}) on {len(calibration)} questions of {len({r['context'] for r in calibration})}"
                    " training paragraphs held out of training (null_calibration_ratio)")


def evaluate_squad(trainer, tokenizer, eval_rows, task, window, version_2: bool) -> dict:
    spans = spans_of(trainer, tokenizer, eval_rows, task, window)
    answers = qa.answers_at(spans, task.null_score_threshold if version_2 else None)
    references = [r["answers"]["text"] or [""] for r in eval_rows]
    metric = load_metric("squad_v2")
    scores = metric.compute(predictions=[answers[r["id"]] for r in eval_rows], references=references)
    if version_2:  # what the span head alone found: every answerable question answered with its best span
        answerable = [(spans[r["id"]][0], gold) for r, gold in zip(eval_rows, references) if r["answers"]["text"]]
        if answerable:
            spans_only = metric.compute(predictions=[p for p, _ in answerable], references=[g for _, g in answerable])
            scores["HasAns_f1_spans_only"] = spans_only["f1"]
    qa.write_predictions(trainer.args.output_dir, answers, spans if version_2 else None)
    return {f"eval_{k}": v for k, v in scores.items()}


if __name__ == "__main__":
    run_cli(main)
