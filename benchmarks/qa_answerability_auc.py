"""How well a finished QA run tells answerable from unanswerable questions on its held-out article, whatever the
threshold: the ROC AUC (chance 0.5) of each answerability score the model offers, and of the embedded MiniLM's own
question-sentence similarity (the sentence-embedding skill it was trained for).

    python benchmarks/qa_answerability_auc.py RUN_FOLDER     # a run of the shipped QA config; prints the AUCs

A threshold can only trade answerable against unanswerable questions along the curve a score's AUC sums up
(benchmarks/qa_threshold_curve.py scores points of it). A measurement, not a test."""
import re
import sys

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoTokenizer

from finetune_kit.config import parse_config
from finetune_kit.config_tasks import QuestionAnsweringConfig
from finetune_kit.models import resolve_checkpoint
from finetune_kit.tasks import qa


def auc(unanswerable_score: np.ndarray, answerable: np.ndarray) -> float:
    """P(an unanswerable question scores above an answerable one), ties half."""
    pos, neg = unanswerable_score[answerable], unanswerable_score[~answerable]
    return round(float(((neg[:, None] > pos[None]) + 0.5 * (neg[:, None] == pos[None])).mean()), 3)


def model_scores(run: str, rows: list[dict], task) -> dict[str, np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(run)
    model = AutoModelForQuestionAnswering.from_pretrained(run).eval()
    examples = Dataset.from_list(rows)
    features = examples.map(lambda b: qa.eval_features(tokenizer, b, max_length=task.max_length,
                                                        stride=task.doc_stride),
                            batched=True, remove_columns=examples.column_names)
    inputs = {k: torch.tensor(features[k]) for k in tokenizer.model_input_names if k in features.column_names}
    with torch.no_grad():
        out = model(**inputs)
    windows: dict[str, list[int]] = {}
    for k, example_id in enumerate(features["example_id"]):
        windows.setdefault(example_id, []).append(k)
    scores = {"null": [], "best span": [], "best span probability": []}
    for row in rows:  # over a question's windows: its lowest null score, its best span (context tokens only)
        null, best, prob = np.inf, -np.inf, 0.0
        for k in windows[row["id"]]:
            context = torch.tensor([o is not None for o in features[k]["offset_mapping"]])
            start, end = out.start_logits[k], out.end_logits[k]
            null = min(null, float(start[0] + end[0]))
            best = max(best, float(start[context].max() + end[context].max()))
            prob = max(prob, float(start.softmax(0)[context].max() * end.softmax(0)[context].max()))
        for name, value in zip(scores, (null, best, prob)):
            scores[name].append(value)
    s = {k: np.array(v) for k, v in scores.items()}
    return {"null odds (null - best span, the recipe's)": s["null"] - s["best span"], "null score alone": s["null"],
            "best span score (negated)": -s["best span"],
            "best span probability (negated)": -s["best span probability"]}


def similarity(rows: list[dict]) -> np.ndarray:
    """The base MiniLM's cosine similarity of the question to the context's closest sentence (mean pooling)."""
    path = resolve_checkpoint("minilm-l6", whole=True)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    return np.array([float((embed(re.split(r"(?<=[.!?])\s+", r["context"])) @ embed([r["question"]]).T).max())
                     for r in rows])


def main() -> None:
    run = sys.argv[1]
    cfg = parse_config(QuestionAnsweringConfig, ["--config", "question_answering_minilm_squad"])
    _, eval_rows, _, _ = qa.question_splits(cfg)
    answerable = np.array([bool(r["answers"]["text"]) for r in eval_rows])
    print(f"{len(eval_rows)} held-out questions, {answerable.sum()} answerable; AUC (0.5 = chance, 1 = separated):")
    scores = model_scores(run, eval_rows, cfg.task) | {"question-sentence similarity (negated)": -similarity(eval_rows)}
    for name, score in scores.items():
        print(f"  {auc(score, answerable):.3f}  {name}")


if __name__ == "__main__":
    main()
