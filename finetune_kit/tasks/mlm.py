"""Masked-LM text: rows read and split, then tokenized into blocks, by the masked_lm recipe and by `check` alike
(recipe table `data_check` / `length_check`), so what training refuses, `check` refuses first."""

from __future__ import annotations

from itertools import chain

from finetune_kit.errors import DataError


def texts_of(source: str, column: str) -> list[str]:
    from finetune_kit.data.readers import read_rows

    texts = []
    for where, row in read_rows(source):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: field '{column}' must be non-empty text.")
        texts.append(value)
    return texts


def text_splits(cfg) -> dict:
    """{train, test} datasets of text: eval_dataset_name as the held-out side, else eval_split_ratio (0.1 when unset:
    perplexity before and after needs held-out text) of the rows, seeded; then max_train_samples training rows."""
    from datasets import Dataset

    from finetune_kit.data import cap_train, split, split_seed

    data = Dataset.from_dict({"text": texts_of(cfg.data.dataset_name, cfg.task.text_column)})
    if cfg.data.eval_dataset_name:
        splits = {"train": data,
                  "test": Dataset.from_dict({"text": texts_of(cfg.data.eval_dataset_name, cfg.task.text_column)})}
    else:
        splits = dict(split(data, cfg.data.eval_split_ratio or 0.1, split_seed(cfg.data, cfg.training.seed),
                            cfg.data.dataset_name))
    return {**splits, "train": cap_train(splits["train"], cfg.data.max_train_samples)}


def blocks(splits: dict, tokenizer, task, source: str) -> tuple:
    """Each side tokenized: whole documents concatenated and cut into blocks of max_length tokens (the tail shorter
    than a block dropped), or one row per line with line_by_line. A side left without a block is refused."""
    block = task.max_length

    def tokenize(batch):
        if task.line_by_line:
            return tokenizer(batch["text"], truncation=True, max_length=block, return_special_tokens_mask=True)
        return tokenizer(batch["text"], return_special_tokens_mask=True)

    def group(batch):
        joined = {k: list(chain.from_iterable(v)) for k, v in batch.items()}
        usable = len(joined["input_ids"]) // block * block
        return {k: [v[i:i + block] for i in range(0, usable, block)] for k, v in joined.items()}

    def prepare(part):
        out = part.map(tokenize, batched=True, remove_columns=["text"])
        return out if task.line_by_line else out.map(group, batched=True)

    train, held_out = prepare(splits["train"]), prepare(splits["test"])
    if len(train) == 0 or len(held_out) == 0:
        raise DataError(f"{source}: too little text for one block of {block} tokens per split ({len(train)} training, "
                        f"{len(held_out)} held-out blocks); lower max_length or set line_by_line: true.")
    return train, held_out


def check_blocks(cfg, tokenizer) -> list[str]:
    """`check`'s measure: the blocks training would make, refused as training refuses them; no warnings otherwise."""
    train, held_out = blocks(text_splits(cfg), tokenizer, cfg.task, cfg.data.dataset_name)
    print(f"blocks of {cfg.task.max_length} tokens: {len(train)} training, {len(held_out)} held-out")
    return []
