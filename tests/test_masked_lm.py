"""Masked-LM continued pretraining on a tiny BERT: held-out perplexity falls."""

from __future__ import annotations

import pytest

import random

from conftest import run_recipe, write_config

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


def test_masked_lm_lowers_held_out_perplexity(tmp_path, tiny_bert_dir):
    rng = random.Random(0)
    animals, verbs = ["cat", "dog", "horse", "bird"], ["runs", "sleeps", "eats", "jumps"]
    lines = [" ".join(f"the {rng.choice(animals)} {rng.choice(verbs)} today ." for _ in range(6)) for _ in range(200)]
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n")
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(tmp_path / "text.txt"),
           "eval_split_ratio": 0.1, "max_length": 32, "output_dir": str(tmp_path / "run"), "num_train_epochs": 3,
           "per_device_train_batch_size": 16, "learning_rate": 3e-3, "save_strategy": "no", "report_to": "none",
           "disable_tqdm": True, "seed": 0}
    metrics = run_recipe("masked_lm", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert metrics["perplexity_after"] < 0.5 * metrics["perplexity_before"], metrics
    assert (tmp_path / "run" / "model.safetensors").is_file()
