"""The text classification arms of `python -m benchmarks text_classification`: transformers' Trainer with its
defaults vs our recipe, scored on the same held-out rows (moved out of arms.py, which keeps the shared parts)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.arms import _fixed, _log, _ours, _read_rows, reset_peak_rss

# ---- text classification: transformers Trainer defaults vs recipes/text_classification.py ----

def _sst2(path: Path) -> tuple[list[str], list[int]]:
    rows = _read_rows(path)
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def classifier_scores(model, tokenizer, path: Path, max_length: int) -> dict:
    """Held-out cross-entropy and accuracy, 32 rows at a time."""
    import torch

    texts, labels = _sst2(path)
    model.eval()
    device = next(model.parameters()).device
    loss, correct = 0.0, 0
    for i in range(0, len(texts), 32):
        batch = tokenizer(texts[i:i + 32], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        target = torch.tensor(labels[i:i + 32], device=device)
        with torch.no_grad():
            logits = model(**batch).logits
        loss += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return {"heldout_loss": loss / len(texts), "heldout_accuracy": correct / len(texts)}


def _classifier_tokens(opts, tokenizer) -> int:
    texts, _ = _sst2(opts.train_file)
    return sum(min(len(ids), opts.max_length) for ids in tokenizer(texts)["input_ids"])


def text_classification_baseline(opts) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from finetune_kit.models import resolve_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(opts.model))
    texts, labels = _sst2(opts.train_file)
    train = Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=opts.max_length), batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_checkpoint(opts.model), num_labels=2)
    args = TrainingArguments(output_dir=opts.out, num_train_epochs=1, per_device_train_batch_size=opts.batch,
                             gradient_accumulation_steps=opts.accumulation, learning_rate=opts.learning_rate,
                             seed=opts.seed, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    reset_peak_rss()
    result = trainer.train()
    summary = _log(trainer.state.log_history, result.metrics["train_runtime"], _classifier_tokens(opts, tokenizer))
    return {**summary, **classifier_scores(trainer.model, tokenizer, opts.eval_file, opts.max_length)}


def text_classification_ours(opts) -> dict:
    from finetune_kit.models import load_for_inference

    metrics, log_history = _ours("text_classification", [*_fixed(opts), "--label_column", "label",
                                                         "--test_split_ratio", "0"])
    model, tokenizer = load_for_inference(opts.out)
    summary = _log(log_history, metrics["train_runtime"], _classifier_tokens(opts, tokenizer))
    return {**summary, **classifier_scores(model, tokenizer, opts.eval_file, opts.max_length)}
