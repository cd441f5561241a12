"""`finetune-kit predict`: run a trained classifier, tagger, QA or seq2seq model on new texts, from the command line
or a file."""

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


def classify_images(model, processor, images: list) -> list[dict]:
    """Label and probability per image (paths or PIL images), preprocessed exactly as in training."""
    from finetune_kit.tasks.images import pixel_values

    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixel_values(processor, images)).logits, -1)
    return [{"label": model.config.id2label[int(p.argmax())], "score": round(float(p.max()), 4)} for p in probs]


def tag(model, tokenizer, texts: list[str]) -> list[dict]:
    """Entities per text (words grouped into spans, the first sub-token's label deciding, as in training)."""
    from transformers import pipeline

    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first")
    return [{"entities": [{"entity": e["entity_group"], "word": e["word"], "start": int(e["start"]),
                           "end": int(e["end"]), "score": round(float(e["score"]), 4)} for e in tagger(text)]}
            for text in texts]


def answer(model, tokenizer, questions: list[str], contexts: list[str], max_length: int = 384,
           stride: int = 128, null_score_threshold: float = 0.0) -> list[dict]:
    """The answer span for each question in its context ('' when the null answer wins, SQuAD v2 style), with the
    same windowing and span post-processing as training (transformers 5 dropped its QA pipeline)."""
    from finetune_kit.tasks import qa

    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))
    stride = min(stride, max_length // 4)
    examples = [{"id": str(i), "question": q, "context": c} for i, (q, c) in enumerate(zip(questions, contexts))]
    batch = {k: [e[k] for e in examples] for k in ("id", "question", "context")}
    features = qa.eval_features(tokenizer, batch, max_length, stride)
    inputs = {k: torch.tensor(features[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in features}
    with torch.no_grad():
        output = model(**inputs)
    answers = qa.best_answers(examples, features, output.start_logits.numpy(), output.end_logits.numpy(),
                              null_score_threshold=null_score_threshold)
    return [{"question": e["question"], "answer": answers[e["id"]]} for e in examples]


def transduce(model, tokenizer, texts: list[str], settings: dict) -> list[dict]:
    """A seq2seq run's output for each text, produced as its evaluation produced them: the run's source_prefix and
    max_source_length, greedy or its generation_num_beams, up to its generation_max_length (config.yaml)."""
    from finetune_kit.tasks.seq2seq import generate_texts

    longest = settings.get("generation_max_length") or (settings.get("max_target_length") or 128) + 1
    outputs = generate_texts(model, tokenizer, texts, settings.get("source_prefix"),
                             max_source_length=settings.get("max_source_length"), do_sample=False,
                             num_beams=settings.get("generation_num_beams") or 1, max_new_tokens=longest - 1)
    return [{"output": output} for output in outputs]
