"""The reference-free preference recipes: ORPO (trl ORPOTrainer) and CPO / SimPO (trl CPOTrainer) on a tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import run_recipe, write_config, write_jsonl
from test_preference import WORDS, losses, pair_rows

from finetune_kit.errors import DataError

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision


def logged(out, key: str) -> list[float]:
    return [e[key] for e in json.loads((out / "log_history.json").read_text()) if key in e and "loss" in e]


def base_config(tmp_path, tiny_model_dir, name: str, **extra) -> dict:
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    return {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / name),
            "use_peft": True, "lora_r": 8, "learning_rate": 3e-2, "max_steps": 8, "per_device_train_batch_size": 8,
            "logging_steps": 1, "eval_split_ratio": 0.25, "max_length": 64, "report_to": "none", "disable_tqdm": True,
            **extra}


def test_orpo_learns_the_preference_and_the_chosen_answers(tmp_path, tiny_model_dir):
    cfg = base_config(tmp_path, tiny_model_dir, "orpo", beta=0.5)
    metrics = run_recipe("orpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    out = tmp_path / "orpo"
    curve = losses(out)  # the NLL of whole chosen sequences (prompt too) dominates ORPO's loss on a random model
    assert curve[-1] < curve[0] * 0.7, curve
    # What ORPO's second term optimises, on the training pairs: the log odds ratio of chosen over rejected rises
    # (logged per step), and so does the chosen answer's likelihood (its NLL, ORPO's first term, falls).
    odds, nll = logged(out, "log_odds_chosen"), logged(out, "nll_loss")
    assert odds[-1] > odds[0] + 1.0 and nll[-1] < nll[0] - 2.0, (odds, nll)
    # Held out: the margin of beta x the averaged log-probability rises from the starting policy's, every pair right.
    assert metrics["eval_rewards/margins"] > metrics["before_rewards/margins"] + 0.1
    assert metrics["eval_rewards/accuracies"] == 1.0
    assert (out / "adapter_model.safetensors").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["recipe"] == "orpo" and "bf16" in info["decisions"]


@pytest.mark.parametrize("loss_type, cpo_alpha, beta", [("simpo", 0.0, 2.0), ("sigmoid", 1.0, 0.1)],
                         ids=["simpo", "cpo"])
def test_cpo_and_simpo_raise_the_margin_on_training_and_held_out_pairs(tmp_path, tiny_model_dir, loss_type,
                                                                       cpo_alpha, beta):
    cfg = base_config(tmp_path, tiny_model_dir, "cpo", loss_type=loss_type, cpo_alpha=cpo_alpha, beta=beta,
                      simpo_gamma=1.0)
    metrics = run_recipe("cpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    out = tmp_path / "cpo"
    curve = losses(out)  # CPO's own NLL term (whole chosen sequences, prompt too) falls slower than the pair term
    assert curve[-1] < curve[0] * (0.5 if loss_type == "simpo" else 0.8), curve
    margins = logged(out, "rewards/margins")  # the quantity both losses push up, on the training pairs
    assert margins[-1] > margins[0] + 0.1 and margins[-1] > 0, margins
    if loss_type == "simpo":  # SimPO: beta x the averaged log-probability, pushed past the target margin gamma
        assert margins[-1] > 2 * 1.0 and curve[-1] < 0.3  # well past the target margin simpo_gamma (1.0)
        assert all(n == 0.0 for n in logged(out, "nll_loss"))  # cpo_alpha 0: no NLL term
    else:
        assert logged(out, "nll_loss")[-1] < logged(out, "nll_loss")[0]  # CPO's behaviour-cloning term
    assert metrics["eval_rewards/margins"] > metrics["before_rewards/margins"] + 0.1
    assert metrics["eval_rewards/accuracies"] == 1.0


def test_a_prompt_that_fills_max_length_is_named_or_skipped_and_counted(tmp_path, tokenizer, caplog):
    from datasets import Dataset

    from finetune_kit.data import normalise_pair, pairs_with_answer_room

    long = {"prompt": [{"role": "user", "content": "Say " + " ".join(WORDS * 20)}],
            "chosen": [{"role": "assistant", "content": "Sure!"}], "rejected": [{"role": "assistant", "content": "No."}]}
    rows = [normalise_pair(r, "w") for r in [long, *pair_rows(1)]]
    dataset = Dataset.from_list(rows)
    with pytest.raises(DataError, match=r"pairs.jsonl: 1 of 9 pairs have a prompt of max_length=64 tokens or more "
                                        r"\(row 1: \d+\).*skip_invalid_rows: true"):
        pairs_with_answer_room(dataset, tokenizer, 64, False, "pairs.jsonl")
    kept = pairs_with_answer_room(dataset, tokenizer, 64, True, "pairs.jsonl")
    assert len(kept) == 8 and kept[0] == rows[1] and "dropped 1 of 9 pairs" in caplog.text
    assert pairs_with_answer_room(dataset, tokenizer, 512, False, "pairs.jsonl") is dataset  # all fit: untouched

    # The recipe refuses before any weights load (was: trl's empty answer, 0/0 log-probability, NaN loss).
    data = write_jsonl(tmp_path / "pairs.jsonl", [long, *pair_rows(1)])
    cfg = {"model_name_or_path": "/nonexistent", "tokenizer_name_or_path": str(tmp_path / "tok"),
           "dataset_name": str(data), "output_dir": str(tmp_path / "o"), "max_length": 64, "report_to": "none"}
    tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(DataError, match="1 of 9 pairs have a prompt of max_length=64"):
        run_recipe("orpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])


def test_check_refuses_what_train_refuses_and_counts_what_it_drops(tmp_path, tiny_model_dir, capsys, caplog):
    from finetune_kit.cli import main

    long = {"prompt": "Say " + " ".join(WORDS * 20), "chosen": "Sure!", "rejected": "No."}
    data = write_jsonl(tmp_path / "pairs.jsonl", [long] + [{"prompt": f"Say {w}", "chosen": f"Sure! {w}",
                                                            "rejected": f"No. {w}"} for w in WORDS])
    cfg = {"recipe": "cpo", "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data),
           "output_dir": str(tmp_path / "o"), "max_length": 64}
    with pytest.raises(SystemExit) as done:
        main(["check", "--config", write_config(tmp_path / "c.yaml", cfg)])
    assert done.value.code == 2 and "1 of 9 pairs have a prompt of max_length=64" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["check", "--config", write_config(tmp_path / "c.yaml", {**cfg, "skip_invalid_rows": True})])
    assert done.value.code == 0 and "data: 8 training rows" in capsys.readouterr().out
    assert "dropped 1 of 9 pairs" in caplog.text


@pytest.mark.parametrize("recipe, key, value, message", [
    ("cpo", "cpo_alpha", -1, "cpo_alpha must be >= 0"),
    ("orpo", "beta", 0, "beta must be positive, got 0"),
    ("cpo", "loss_type", "dpo", "config key 'loss_type' (config file"),
    ("orpo", "is_encoder_decoder", True, "key 'is_encoder_decoder' does nothing in the orpo recipe"),
], ids=["cpo_alpha", "beta", "loss_type", "encoder-decoder key"])
def test_bad_values_are_named_through_the_cli(tmp_path, capsys, recipe, key, value, message):
    from finetune_kit.cli import main

    cfg = {"dataset_name": "d.jsonl", "output_dir": str(tmp_path / "o"), key: value}
    with pytest.raises(SystemExit) as done:
        main(["train", recipe, "--config", write_config(tmp_path / "c.yaml", cfg)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err, err
