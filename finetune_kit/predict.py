"""`finetune-kit predict`: run a trained classifier on new texts, from the command line or a file."""

from __future__ import annotations

import torch

from finetune_kit.errors import UserError


def classify(model, tokenizer, texts: list[str], pairs: list[str] | None = None, batch_size: int = 32,
             max_length: int = 512) -> list[dict]:
    """One result per text: the label and its probability (single-label), the labels above 0.5 (multi-label), or the
    predicted score (regression)."""
    if "ForSequenceClassification" not in type(model.get_base_model() if hasattr(model, "get_base_model")
                                                else model).__name__:
        raise UserError("predict needs a sequence-classification model (a text_classification run).")
    problem = model.config.problem_type
    names = model.config.id2label
    results = []
    for start in range(0, len(texts), batch_size):
        chunk_pairs = pairs[start:start + batch_size] if pairs else None
        batch = tokenizer(texts[start:start + batch_size], chunk_pairs, truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        for row in logits:
            if problem == "regression":
                results.append({"score": float(row[0])})
            elif problem == "multi_label_classification":
                probs = torch.sigmoid(row)
                results.append({"labels": [names[i] for i, p in enumerate(probs.tolist()) if p > 0.5],
                                "scores": {names[i]: round(p, 4) for i, p in enumerate(probs.tolist())}})
            else:
                probs = torch.softmax(row, -1)
                best = int(probs.argmax())
                results.append({"label": names[best], "score": round(float(probs[best]), 4)})
    return results
