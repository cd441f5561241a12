"""The prm recipe: labels on the separator tokens, step-labelled rows checked by name, the generated set, training that
lowers the loss and raises step accuracy, solution ranking, and a trained run as a GRPO / PPO reward."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_recipe, write_config, write_jsonl
from finetune_kit import demo_prm
from finetune_kit.errors import DataError
from finetune_kit.tasks import steps

GOOD = {"prompt": "What is 2 + 3 * 4?", "completions": ["3 * 4 = 12", "2 + 12 = 14"], "labels": [True, True]}


def test_labels_land_exactly_on_the_separator_after_each_step(tokenizer):
    row = {"prompt": "What is 2 + 3 * 4?", "completions": ["3 * 4 = 12", "2 + 12 = 15"], "labels": [True, False]}
    encoded = steps.encoder(tokenizer, "\n", 64)({k: [v] for k, v in row.items()})
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    # SmolLM2 adds no BOS; "\n" is one token (Ċ). Prompt, "\n", step 1, "\n" (label 1), step 2, "\n" (label 0).
    assert "".join(tokens).replace("Ġ", " ").replace("Ċ", "\n") == "What is 2 + 3 * 4?\n3 * 4 = 12\n2 + 12 = 15\n"
    newlines = [i for i, t in enumerate(tokens) if t == "Ċ"]
    assert len(newlines) == 3 and newlines[-1] == len(ids) - 1
    assert [(i, label) for i, label in enumerate(labels) if label != steps.IGNORE] == \
        [(newlines[1], 1), (newlines[2], 0)]
    # train_on_last_step_only: only the last step's label is kept
    last = steps.encoder(tokenizer, "\n", 64, last_step_only=True)({k: [v] for k, v in row.items()})["labels"][0]
    assert [(i, label) for i, label in enumerate(last) if label != steps.IGNORE] == [(newlines[2], 0)]
    # max_length cuts later steps off: their labels go with them
    cut = steps.encoder(tokenizer, "\n", newlines[2])({k: [v] for k, v in row.items()})["labels"][0]
    assert [label for label in cut if label != steps.IGNORE] == [1]


def test_a_separator_the_tokenizer_drops_is_refused(tiny_bert_dir):
    from transformers import AutoTokenizer

    from finetune_kit.errors import ConfigError

    bert = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with pytest.raises(ConfigError, match=r"step_separator '\\n' is no token for this tokenizer"):
        steps.encoder(bert, "\n", 64)
    encoded = steps.encoder(bert, "[SEP]", 64)({k: [v] for k, v in GOOD.items()})
    tokens = bert.convert_ids_to_tokens(encoded["input_ids"][0])
    assert [tokens[i] for i, label in enumerate(encoded["labels"][0]) if label != steps.IGNORE] == ["[SEP]", "[SEP]"]


@pytest.mark.parametrize("change,message", [
    ({"labels": [True]}, r"r\.jsonl line 1: field 'labels' has 1 labels for 2 steps in 'completions'"),
    ({"labels": [1, 0]}, r"r\.jsonl line 1: field 'labels': label 1 is 1, not true or false \(PRM800K ratings"),
    ({"completions": ["3 * 4 = 12", " "]}, r"r\.jsonl line 1: field 'completions': step 2 is empty"),
    ({"completions": ["3 * 4\n= 12", "x"]}, r"r\.jsonl line 1: field 'completions': step 1 contains the step sep"),
    ({"completions": "3 * 4 = 12"}, r"r\.jsonl line 1: field 'completions' must be a non-empty list"),
    ({"prompt": None}, r"r\.jsonl line 1: field 'prompt' must be a non-empty string"),
])
def test_bad_rows_are_named(change, message):
    with pytest.raises(DataError, match=message):
        steps.check_row({**GOOD, **change}, "r.jsonl line 1", "\n")
    with pytest.raises(DataError, match=r"missing field 'labels'"):
        steps.check_row({"prompt": "p", "completions": ["a"]}, "r.jsonl line 1", "\n")


@pytest.mark.parametrize("command", ["check", "train"])
def test_steps_without_matching_labels_exit_2_through_the_cli(command, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "steps.jsonl", [GOOD, {**GOOD, "labels": [True, False, False]}])
    config = write_config(tmp_path / "c.yaml", {"recipe": "prm", "model_name_or_path": str(tiny_model_dir),
                                                "dataset_name": str(data), "output_dir": str(tmp_path / "out")})
    done = subprocess.run([sys.executable, "-m", "finetune_kit.cli", command, "--config", config], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == [
        ("error: steps.jsonl line 2: field 'labels' has 3 labels for 2 steps in 'completions'; every step needs "
         "exactly one label.")]


def test_the_generated_set_is_deterministic_checkable_and_split_by_problem(tmp_path):
    sizes = {"train": 20, "validation": 5, "test": 5}
    assert demo_prm.make_dataset(tmp_path / "a", seed=3, sizes=sizes) == {"train": 80, "validation": 20, "test": 20}
    demo_prm.make_dataset(tmp_path / "b", seed=3, sizes=sizes)
    demo_prm.make_dataset(tmp_path / "c", seed=4, sizes=sizes)
    for name in sizes:
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (tmp_path / "b" / f"{name}.jsonl").read_text()
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "c" / "train.jsonl").read_text()
    rows = {name: [json.loads(line) for line in (tmp_path / "a" / f"{name}.jsonl").read_text().splitlines()]
            for name in sizes}
    prompts = {name: {r["prompt"] for r in split} for name, split in rows.items()}
    assert not prompts["train"] & prompts["validation"] and not prompts["train"] & prompts["test"]
    for row in [r for split in rows.values() for r in split]:
        steps.check_row(row, "generated", "\n")
        assert row["labels"] == demo_prm.labels_of(row["prompt"], row["completions"])
        assert row["labels"] == sorted(row["labels"], reverse=True)  # false from the first wrong step on
    for prompt in prompts["test"]:  # every problem has a right and a wrong candidate to rank
        outcomes = {all(r["labels"]) for r in rows["test"] if r["prompt"] == prompt}
        assert outcomes == {True, False}
    # the checker catches a wrong number the generator did not make
    right = next(r for r in rows["train"] if all(r["labels"]))
    broken = [*right["completions"][:-1], "The answer is 1000."]
    assert demo_prm.labels_of(right["prompt"], broken)[-1] is False


def test_solution_scores_and_ranking_on_a_worked_example():
    assert steps.solution_score([0.9, 0.5, 0.8], "min") == 0.5
    assert steps.solution_score([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert steps.solution_score([], "min") == 0.0
    rows = [{"prompt": "a", "labels": [True, True]}, {"prompt": "a", "labels": [True, False]},
            {"prompt": "a", "labels": [False, False]}, {"prompt": "b", "labels": [True]},
            {"prompt": "b", "labels": [False]}, {"prompt": "c", "labels": [False]}]
    # a: right 0.7 beats 0.6, loses to 0.9; b: right 0.4 ties 0.4; c: no right candidate, not ranked
    result = steps.ranking(rows, [0.7, 0.6, 0.9, 0.4, 0.4, 0.1])
    assert result == {"solution_pairwise_accuracy": pytest.approx(1.5 / 3), "solution_pairs": 3,
                      "best_of_n_accuracy": 0.5, "ranked_problems": 2}
    held, train = steps.split_by_problem(rows, 0.5, 0, "x")[::-1]
    assert {r["prompt"] for r in held}.isdisjoint({r["prompt"] for r in train}) and held and train


def marker_rows(n: int, seed: int = 0) -> list[dict]:
    """Steps a tiny model can judge: a step is wrong when its last word is 'bad'; after it every step is false."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        count, wrong_at = rng.randint(2, 4), rng.choice([None, None, 0, 1, 2])
        words = ["bad" if k == wrong_at else "good" for k in range(count)]
        rows.append({"prompt": f"Problem {i % (n // 2)}: check the steps.",
                     "completions": [f"step {k + 1} is {w}" for k, w in enumerate(words)],
                     "labels": [wrong_at is None or k < wrong_at for k in range(count)]})
    return rows


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("prm")
    data = write_jsonl(tmp / "train.jsonl", marker_rows(48))
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "eval_dataset_name": str(data),
           "use_peft": True, "lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-2, "num_train_epochs": 5,
           "per_device_train_batch_size": 8, "per_device_eval_batch_size": 32, "max_length": 64, "logging_steps": 4,
           "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0, "report": False,
           "output_dir": str(tmp / "run"), "bf16": False}
    metrics = run_recipe("prm", ["--config", write_config(tmp / "c.yaml", cfg)])
    return tmp / "run", metrics


def test_training_lowers_the_loss_and_raises_step_accuracy_on_its_rows(prm_run):
    run, metrics = prm_run
    losses = [e["loss"] for e in json.loads((run / "log_history.json").read_text()) if "loss" in e]
    assert losses[-1] < 0.6 * losses[0], losses
    assert metrics["eval_step_accuracy"] > metrics["before_step_accuracy"] + 0.1, metrics
    assert metrics["eval_step_accuracy"] >= 0.85 and metrics["eval_error_f1"] >= 0.8, metrics
    assert metrics["eval_solution_pairwise_accuracy"] >= max(0.8, metrics["before_solution_pairwise_accuracy"] + 0.1)
    assert metrics["eval_loss"] < metrics["before_loss"]
    info = json.loads((run / "run_info.json").read_text())
    assert info["recipe"] == "prm" and json.loads((run / "config.json").read_text())["id2label"] == \
        {"0": "wrong", "1": "right"}


def test_a_prm_run_is_a_reward_with_one_score_in_0_1_per_answer(prm_run, tiny_model_dir):
    from finetune_kit.rl.prm import run_folder
    from finetune_kit.rl.rewards import RewardSources

    run, _ = prm_run
    assert run_folder(str(run)) == run and run_folder(str(tiny_model_dir)) is None  # no prm run
    rewards = RewardSources(str(run), None)
    prompts = [[{"role": "user", "content": "Problem 3: check the steps."}]] * 4 + ["Problem 5: check the steps."]
    answers = ["step 1 is good\nstep 2 is good\n", "step 1 is good\nstep 2 is bad", "", "step 1 is bad\n\nstep 2 is good",
               "step 1 is good"]
    scores = rewards(prompts, answers)
    assert scores.shape == (5,) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[2] == 0  # no step: the lowest score
    assert scores[0] > scores[1] + 0.3 and scores[0] > scores[3] + 0.3 and scores[4] > scores[1] + 0.3, scores
    (trl_reward,) = rewards.for_trl()
    assert trl_reward.__name__ == "reward_model"
    assert trl_reward(prompts=prompts[:2], completions=[[{"role": "assistant", "content": a}] for a in answers[:2]]) \
        == pytest.approx(scores[:2].tolist())


@pytest.mark.parametrize("config, named", [("step_separator: [\n", "is missing or not YAML"),
                                            ("max_length: 64\n", "lacks step_separator, solution_score")])
def test_a_prm_run_with_a_damaged_config_is_refused_by_file_and_key(prm_run, tmp_path, config, named):
    import shutil

    from finetune_kit.errors import UserError
    from finetune_kit.rl.prm import ProcessRewardScorer

    run = shutil.copytree(prm_run[0], tmp_path / "run")
    (run / "config.yaml").write_text(config)
    with pytest.raises(UserError) as refused:
        ProcessRewardScorer(str(run))
    assert f"{run / 'config.yaml'} {named}" in str(refused.value) and "retrain" in str(refused.value)
    assert (run / "config.yaml").read_text() == config  # read, never rewritten


def test_4bit_adapters_train_and_the_run_loads_back_as_a_reward(tmp_path, tokenizer):
    """QLoRA: the new head stays a plain Linear (bitsandbytes cannot run a new head it wrapped), and the saved run
    loads back without re-quantizing around it. bitsandbytes' CPU kernels need layers of 64+ inputs: hidden 128."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune_kit.rl.rewards import RewardSources

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    cfg = {"model_name_or_path": str(tmp_path / "base"), "dataset_name": str(write_jsonl(tmp_path / "d.jsonl",
           marker_rows(16))), "use_peft": True, "load_in_4bit": True, "lora_r": 4, "max_steps": 2, "max_length": 64,
           "per_device_train_batch_size": 8, "save_strategy": "no", "report_to": "none", "report": False,
           "output_dir": str(tmp_path / "run")}
    run_recipe("prm", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert "quantization_config" not in json.loads((tmp_path / "run" / "config.json").read_text())
    scores = RewardSources(str(tmp_path / "run"), None)(["Problem 1: check the steps."], ["step 1 is good\nstep 2"])
    assert scores.shape == (1,) and 0 <= scores[0] <= 1
