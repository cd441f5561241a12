"""Seq2seq helpers: source / target pairs read and checked, token limits, tokenization, generation metrics, and
generation for `predict` / `generate`.

Rows hold a source and a target field (`source_column` / `target_column`, or `column_mapping` for summarization
data such as {source: document, target: summary}), or, with `source_lang` / `target_lang`, a `translation` mapping
of language code to text, as the Hub's WMT / OPUS datasets do: {"translation": {"en": "...", "fr": "..."}}.
"""

from __future__ import annotations

import logging

from finetune_kit.errors import DataError

logger = logging.getLogger(__name__)
TRANSLATION = "translation"  # the field of translation rows, as datasets' Translation feature names it
METRICS = ("exact_match", "sacrebleu", "chrf", "rouge")


def pair_of(row: dict, task, where: str) -> dict:
    """{source, target} of one row; a missing, empty or non-text field is named with its row."""
    if task.source_lang or task.target_lang:  # both or neither (config check translation_languages_paired)
        pairs = row.get(TRANSLATION)
        if not isinstance(pairs, dict):
            raise DataError(f"{where}: missing field '{TRANSLATION}' (a mapping of language code to text, as "
                            "source_lang / target_lang expect).")
        fields = {"source": (pairs, task.source_lang, f"{TRANSLATION}.{task.source_lang}"),
                  "target": (pairs, task.target_lang, f"{TRANSLATION}.{task.target_lang}")}
    else:
        fields = {"source": (row, task.source_column, task.source_column),
                  "target": (row, task.target_column, task.target_column)}
    pair = {}
    for name, (holder, key, label) in fields.items():
        if key not in holder:
            raise DataError(f"{where}: missing field '{label}' (the {name}; set {name}_column, column_mapping or "
                            f"source_lang / target_lang).")
        value = holder[key]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field '{label}' (the {name}) must be non-empty text, got {value!r}.")
        pair[name] = value
    return pair


def pair_rows(cfg) -> dict[str, list[tuple[str, dict]]]:
    """Every row of the training, validation and test files as (where, {source, target}), before any model loads.
    The seq2seq recipe and the preflight (recipe table `data_check`) both call it. With skip_invalid_rows, rows
    with a missing or empty field are dropped and counted instead."""
    from finetune_kit.data.formats import apply_column_mapping, require_mapped_columns
    from finetune_kit.data.readers import read_rows

    sources = {"train": cfg.data.dataset_name, "validation": cfg.data.eval_dataset_name,
               "test": cfg.task.test_dataset_name}
    out = {}
    for split, source in sources.items():
        if not source:
            continue
        kept, problems = [], []
        hub_split = cfg.data.dataset_train_split if split == "train" else split  # local files ignore it
        rows = read_rows(source, hub_split, cfg.data.dataset_config)
        require_mapped_columns(rows, cfg.data.column_mapping, source)
        for where, row in rows:
            try:
                kept.append((where, pair_of(apply_column_mapping(row, cfg.data.column_mapping), cfg.task, where)))
            except DataError as err:
                if not cfg.data.skip_invalid_rows:
                    raise
                problems.append(str(err))
        if problems:
            logger.warning("%s: skipped %d rows (skip_invalid_rows); first: %s", source, len(problems), problems[0])
        if not kept:
            raise DataError(f"{source}: no valid rows left; first problem: {problems[0]}")
        out[split] = kept
    return out


def pair_splits(cfg) -> dict[str, list[tuple[str, dict]]]:
    """pair_rows, with validation rows split off the training rows when eval_split_ratio asks (datasets' seeded
    split): by the seq2seq recipe and the preflight (recipe table `data_check`), so `check` refuses a ratio the rows
    cannot meet, as training would."""
    from finetune_kit.data import split_off_validation

    return split_off_validation(pair_rows(cfg), cfg)


def with_prefix(text: str, prefix: str | None) -> str:
    return (prefix or "") + text


def token_lengths(tokenizer, rows: list[tuple[str, dict]], prefix: str | None) -> tuple[list[int], list[int]]:
    """Tokens of each source (prefix and special tokens included) and each target (with its end-of-sequence)."""
    sources = tokenizer([with_prefix(r["source"], prefix) for _, r in rows])["input_ids"]
    targets = tokenizer(text_target=[r["target"] for _, r in rows])["input_ids"]
    return [len(s) for s in sources], [len(t) for t in targets]


def within_target_limit(rows: list[tuple[str, dict]], tokenizer, task, skip: bool, source: str):
    """The rows whose target fits max_target_length, and how many sources max_source_length cuts.

    A longer target is a `DataError` naming its row (cut, the model would learn to stop mid-answer), unless
    truncate_targets accepts the cut or skip (skip_invalid_rows) drops the row; both are counted and printed."""
    source_lengths, target_lengths = token_lengths(tokenizer, rows, task.source_prefix)
    over = [i for i, n in enumerate(target_lengths) if n > task.max_target_length]
    accept_cut = task.truncate_targets
    cut_sources = sum(n > task.max_source_length for n in source_lengths)
    if cut_sources:
        print(f"{source}: {cut_sources} of {len(rows)} sources are longer than max_source_length="
              f"{task.max_source_length} tokens and are truncated")
    if not over:
        return rows, cut_sources
    first = over[0]
    if accept_cut:
        print(f"{source}: {len(over)} of {len(rows)} targets are cut to max_target_length={task.max_target_length} "
              "tokens (truncate_targets)")
        return rows, cut_sources
    if not skip:
        raise DataError(f"{rows[first][0]}: the target is {target_lengths[first]} tokens, over max_target_length="
                        f"{task.max_target_length} ({len(over)} of {len(rows)} rows are). Raise max_target_length, set "
                        "truncate_targets: true to cut them, or skip_invalid_rows: true to drop them.")
    if len(over) == len(rows):
        raise DataError(f"{source}: every target is over max_target_length={task.max_target_length}; raise it.")
    print(f"{source}: dropped {len(over)} of {len(rows)} rows whose target is over max_target_length="
          f"{task.max_target_length} tokens (skip_invalid_rows)")
    dropped = set(over)
    return [r for i, r in enumerate(rows) if i not in dropped], cut_sources


def encoder(tokenizer, task):
    """A batched `datasets.map` function: input_ids / attention_mask of the prefixed sources, `labels` the target
    ids (the collator pads them with -100, so padding carries no loss)."""

    def encode(batch):
        encoded = tokenizer([with_prefix(s, task.source_prefix) for s in batch["source"]], truncation=True,
                            max_length=task.max_source_length)
        labels = tokenizer(text_target=batch["target"], truncation=True, max_length=task.max_target_length)
        return {**encoded, "labels": labels["input_ids"]}

    return encode


def decode(tokenizer, ids) -> list[str]:
    """Texts of generated or label ids; -100 (ignored label positions) read as padding."""
    import numpy as np

    ids = np.where(np.asarray(ids) < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def metrics_fn(tokenizer):
    """`compute_metrics` for Seq2SeqTrainer with predict_with_generate: exact match, sacreBLEU, chrF and ROUGE of
    the generated texts against the targets, through our local evaluate modules; gen_len the mean output tokens."""
    import numpy as np

    from finetune_kit.metrics import load_metric

    metrics = {name: load_metric(name) for name in METRICS}

    def compute(p):
        generated = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        predictions, references = decode(tokenizer, generated), decode(tokenizer, p.label_ids)
        scores = score_texts(predictions, references, metrics)
        scores["gen_len"] = float(np.mean(np.count_nonzero(generated != tokenizer.pad_token_id, axis=1)))
        return scores

    return compute


def require_metric_packages() -> None:
    """sacreBLEU / chrF and ROUGE compute with the `sacrebleu` and `rouge_score` packages: the `seq2seq` extra, not
    core dependencies (rouge_score brings nltk). Missing: one line saying what to install, before any model loads."""
    import importlib.util

    from finetune_kit.errors import UserError

    missing = [name for name in ("sacrebleu", "rouge_score") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"the seq2seq metrics need {' and '.join(missing)}: pip install 'finetune-kit[seq2seq]' "
                        "(or set predict_with_generate: false to evaluate by loss only).")


def score_texts(predictions: list[str], references: list[str], metrics: dict | None = None) -> dict[str, float]:
    """exact_match (0-1), bleu and chrf (0-100, sacreBLEU's scale), rouge1 / rouge2 / rougeL / rougeLsum (0-1)."""
    from finetune_kit.metrics import load_metric

    require_metric_packages()
    metrics = metrics or {name: load_metric(name) for name in METRICS}
    pairs = {"predictions": predictions, "references": references}
    return {"exact_match": metrics["exact_match"].compute(**pairs)["exact_match"],
            "bleu": metrics["sacrebleu"].compute(**pairs)["score"],
            "chrf": metrics["chrf"].compute(**pairs)["score"],
            **metrics["rouge"].compute(**pairs)}


def generate_texts(model, tokenizer, sources: list[str], prefix: str | None = None, batch_size: int = 32,
                   max_source_length: int | None = None, **generate_kwargs) -> list[str]:
    """Outputs for sources, prefixed and truncated as in training; `generate_kwargs` as transformers' generate
    takes them (max_new_tokens, num_beams, do_sample, ...)."""
    import torch

    if "max_new_tokens" in generate_kwargs:  # else transformers warns, every batch, that it overrides max_length
        generate_kwargs.setdefault("max_length", None)
    outputs = []
    for start in range(0, len(sources), batch_size):
        batch = tokenizer([with_prefix(s, prefix) for s in sources[start:start + batch_size]], padding=True,
                          truncation=max_source_length is not None, max_length=max_source_length,
                          return_tensors="pt").to(model.device)
        with torch.no_grad():
            ids = model.generate(**batch, **generate_kwargs)
        outputs += decode(tokenizer, ids.cpu().numpy())
    return outputs


def check_lengths(cfg, tokenizer) -> list[str]:
    """`finetune-kit check` (recipe table `length_check`): token lengths of every training row, the refusal train
    would give for an over-long target (or the count it would cut / drop), and a warning for cut sources."""
    import statistics

    rows = pair_rows(cfg)
    warnings = []
    for name, part in rows.items():
        sources, targets = token_lengths(tokenizer, part, cfg.task.source_prefix)
        print(f"{name}: {len(part)} rows; source tokens median {int(statistics.median(sources))}, max {max(sources)}; "
              f"target tokens median {int(statistics.median(targets))}, max {max(targets)}")
        _, cut = within_target_limit(part, tokenizer, cfg.task, cfg.data.skip_invalid_rows, name)
        if cut:
            warnings.append(f"{cut} of {len(part)} {name} sources are longer than max_source_length="
                            f"{cfg.task.max_source_length} and will be truncated.")
    return warnings
