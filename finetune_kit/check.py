"""`finetune-kit check`: what would go wrong with a run, found before any weights load.

Validates the config, lints every data row, verifies the end-of-turn token of assistant turns carries loss, and
reports sequence lengths and how many rows `max_length` would truncate. Exit 0: clean; 1: warnings; 2: errors
(errors are raised as `UserError`, which the CLI turns into exit code 2).

Not yet here (see the issue tracker): a peak-memory estimate against the memory available.
"""

from __future__ import annotations

import statistics

from finetune_kit.config import parse_config
from finetune_kit.data import end_of_turn_is_trained, load_sft_datasets, tokenize_sft_dataset
from finetune_kit.models import load_tokenizer
from finetune_kit.recipe_configs import SFTRecipeConfig


def sequence_lengths(dataset, tokenizer) -> list[int]:
    """Token count of each row as the trainer will see it (chat template applied for conversations)."""
    if "messages" in dataset.column_names:
        return [len(ids) for ids in tokenize_sft_dataset(dataset, tokenizer)["input_ids"]]
    if "text" in dataset.column_names:
        return [len(tokenizer(t)["input_ids"]) for t in dataset["text"]]
    return [len(tokenizer(p + c)["input_ids"]) for p, c in zip(dataset["prompt"], dataset["completion"])]


def check_sft(argv: list[str] | None) -> int:
    cfg = parse_config(SFTRecipeConfig, argv)
    print("config: ok")
    warnings = []
    tokenizer = load_tokenizer(cfg.model.tokenizer_name_or_path or cfg.model.model_name_or_path,
                               revision=cfg.model.model_revision, trust_remote_code=cfg.training.trust_remote_code)
    train, evaluation = load_sft_datasets(cfg.data, seed=cfg.training.seed)
    print(f"data: {len(train)} training rows" + (f", {len(evaluation)} validation rows" if evaluation else "")
          + ", every row valid")

    if "messages" in train.column_names:
        if end_of_turn_is_trained(tokenizer):
            print("chat template: the end-of-turn token of assistant turns is inside the loss mask")
        else:
            warnings.append("the chat template leaves the assistant's end-of-turn token outside the loss mask: the "
                            "model will not learn to stop. Fix the template (chat_template_path).")

    lengths = sequence_lengths(train, tokenizer)
    print(f"tokens per row: min {min(lengths)}, median {int(statistics.median(lengths))}, "
          f"p95 {sorted(lengths)[int(0.95 * (len(lengths) - 1))]}, max {max(lengths)}")
    max_length = cfg.training.max_length
    if max_length is not None and not cfg.training.packing:
        truncated = sum(n > max_length for n in lengths)
        if truncated:
            warnings.append(f"{truncated} of {len(lengths)} training rows are longer than max_length={max_length} "
                            "and will be truncated.")
    for warning in warnings:
        print(f"warning: {warning}")
    print("result: " + ("warnings" if warnings else "clean"))
    return 1 if warnings else 0
