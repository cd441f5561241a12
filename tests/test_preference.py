"""Preference data shapes and the pretrain / reward / DPO / KTO / GRPO recipes on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SHARED, check_and_train_refuse, run_recipe, write_config, write_jsonl
from finetune_kit.config import DataArguments
from finetune_kit.data import load_rows, normalise_pair, normalise_prompt, normalise_unpaired
from finetune_kit.errors import DataError

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano"]
USER = [{"role": "user", "content": "Hi?"}]
ANSWER = [{"role": "assistant", "content": "Hello."}]


def pair_rows(n_repeat: int = 4):
    """A clear preference: answers that open with 'Sure!' beat answers that open with 'No.'."""
    return [{"prompt": [{"role": "user", "content": f"Say {w}"}],
             "chosen": [{"role": "assistant", "content": f"Sure! {w}"}],
             "rejected": [{"role": "assistant", "content": f"No. {w}"}]} for w in WORDS * n_repeat]


# --- data shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
     {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}),
    ({"prompt": "Hi?", "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]},
     {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]}),
    ({"conversations": [{"from": "human", "value": "Hi?"}], "chosen": {"from": "gpt", "value": "Hello."},
      "rejected": {"from": "gpt", "value": "No."}},
     {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]}),
    ({"chosen": USER + ANSWER, "rejected": USER + [{"role": "assistant", "content": "No."}]},
     {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]}),
    ({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."},
     {"prompt": USER, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]}),
], ids=["strings", "conversational", "sharegpt", "implicit-turns", "hh-text"])
def test_preference_shapes_normalise_to_trl_shapes(row, expected):
    assert normalise_pair(row, "f line 1") == expected


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "Hi?", "chosen": "  ", "rejected": "No."}, "field 'chosen' is empty"),
    ({"prompt": "Hi?", "chosen": "Yes."}, "missing field 'rejected'"),
    ({"chosen": "Yes.", "rejected": "No."}, "without a shared prompt"),
    ({"chosen": [{"role": "user", "content": "A"}, *ANSWER], "rejected": [{"role": "user", "content": "B"}, *ANSWER]},
     "share no opening turns, so there is no prompt"),
    ({"chosen": "\n\nHuman: Hi?\n\nAssistant: ", "rejected": "\n\nHuman: Hi?\n\nAssistant: No."},
     "field 'chosen': the final assistant turn is empty"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "prompt[0] has role 'robot'"),
], ids=["identical", "empty-side", "missing-side", "no-prompt", "no-shared-turns", "hh-empty", "bad-role"])
def test_bad_preference_rows_name_the_row_and_field(row, message):
    with pytest.raises(DataError, match="f line 7") as err:
        normalise_pair(row, "f line 7")
    assert message in str(err.value)


def test_unpaired_rows_and_their_errors():
    row = {"messages": USER + ANSWER, "label": True}
    assert normalise_unpaired(row, "w") == {"prompt": USER, "completion": ANSWER, "label": True}
    assert normalise_unpaired({"prompt": "Hi?", "completion": "Hello.", "label": False}, "w")["label"] is False
    with pytest.raises(DataError, match="f row 3: field 'label' must be true or false"):
        normalise_unpaired({"messages": USER + ANSWER, "label": "yes"}, "f row 3")
    with pytest.raises(DataError, match="must end with an assistant turn"):
        normalise_unpaired({"messages": USER, "label": True}, "f row 3")


def test_prompt_rows_for_online_rl():
    assert normalise_prompt({"prompt": "Hi?"}, "w") == {"prompt": USER}
    assert normalise_prompt({"messages": USER + ANSWER}, "w") == {"prompt": USER}
    assert normalise_prompt({"instruction": "Add", "input": "1 2"}, "w")["prompt"][0]["content"] == "Add\n1 2"
    with pytest.raises(DataError, match="f row 2: no prompt"):
        normalise_prompt({"text": "x"}, "f row 2")


@pytest.mark.skipif(not (SHARED / "hh_rlhf").is_dir(), reason="../shared/datasets not present")
def test_real_preference_files_load_and_skip_invalid_rows_counts(caplog):
    hh = str(SHARED / "hh_rlhf" / "harmless_base_sample.jsonl")
    with pytest.raises(DataError, match="harmless_base_sample.jsonl line 87: field 'chosen'"):
        load_rows(hh, DataArguments(), normaliser=normalise_pair)
    rows = load_rows(hh, DataArguments(skip_invalid_rows=True), normaliser=normalise_pair)
    assert len(rows) == 1596 and "skipped 4 of 1600 rows" in caplog.text
    dpo = load_rows(str(SHARED / "llamafactory_demo" / "dpo_en_demo.json"), DataArguments(), normaliser=normalise_pair)
    assert len(dpo) == 300 and dpo[0]["chosen"][0]["role"] == "assistant"
    kto = load_rows(str(SHARED / "llamafactory_demo" / "kto_en_demo.json"), DataArguments(),
                    normaliser=normalise_unpaired)
    assert len(kto) == 300 and {r["label"] for r in kto} == {True, False}


# --- recipes on a tiny model -----------------------------------------------------------------------------------


def losses(out) -> list[float]:
    return [e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e]


@pytest.fixture(scope="session")
def tiny_reward_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("reward")
    data = write_jsonl(tmp / "pairs.jsonl", pair_rows())
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp / "rm"),
           "use_peft": True, "lora_r": 8, "learning_rate": 3e-2, "max_steps": 12, "per_device_train_batch_size": 8,
           "logging_steps": 2, "eval_split_ratio": 0.25, "report_to": "none", "disable_tqdm": True}
    metrics = run_recipe("reward", ["--config", write_config(tmp / "c.yaml", cfg)])
    return tmp / "rm", metrics


def test_a_reward_model_can_start_from_an_sft_adapter_run(tmp_path, tiny_run):
    """InstructGPT's order: the reward model starts from the SFT model. The SFT run's LoRA weights are merged into
    the trunk under the new score head (was: an AttributeError from peft's causal-LM wrapper)."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    cfg = {"model_name_or_path": str(tiny_run), "dataset_name": str(data), "output_dir": str(tmp_path / "rm"),
           "use_peft": True, "lora_r": 4, "learning_rate": 3e-2, "max_steps": 2, "per_device_train_batch_size": 8,
           "report_to": "none", "disable_tqdm": True}
    run_recipe("reward", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    saved = load_file(tmp_path / "rm" / "adapter_model.safetensors")
    assert any("score" in k for k in saved) and any("lora_B" in k and t.any() for k, t in saved.items())


def test_reward_model_learns_the_preference_and_scores_through_text(tiny_reward_run):
    from finetune_kit.rl.rewards import RewardSources

    out, metrics = tiny_reward_run
    curve = losses(out)
    assert curve[-1] < curve[0] * 0.5
    assert metrics["eval_accuracy"] == 1.0  # held-out pairs
    scores = RewardSources(str(out), None)([[{"role": "user", "content": f"Say {w}"}] for w in WORDS] * 2,
                                           [f"Sure! {w}" for w in WORDS] + [f"No. {w}" for w in WORDS])
    assert (scores[:8] > scores[8:]).all()
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_dpo_with_lora_prefers_chosen_and_its_reference_is_the_untouched_base(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from finetune_kit.models import load_for_inference

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "dpo"),
           "use_peft": True, "lora_r": 8, "learning_rate": 3e-2, "max_steps": 6, "per_device_train_batch_size": 8,
           "logging_steps": 1, "eval_split_ratio": 0.25, "report_to": "none", "disable_tqdm": True}
    metrics = run_recipe("dpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    curve = losses(tmp_path / "dpo")
    assert curve[0] == pytest.approx(math.log(2), abs=1e-3) and curve[-1] < curve[0] * 0.6
    assert metrics["before_rewards/margins"] == 0.0 and metrics["eval_rewards/margins"] > 0.5
    assert metrics["eval_rewards/accuracies"] == 1.0

    # The reference DPO compared against is the policy with adapters disabled: exactly the original base.
    policy, tokenizer = load_for_inference(str(tmp_path / "dpo"))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer("Say apple", return_tensors="pt")["input_ids"]
    with torch.no_grad(), policy.disable_adapter():
        assert torch.equal(policy(input_ids=ids).logits, base(input_ids=ids).logits)
    with torch.no_grad():
        assert not torch.allclose(policy(input_ids=ids).logits, base(input_ids=ids).logits)


def test_dpo_with_an_explicit_reference_copy_and_ipo_loss(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(1))
    cfg = {"model_name_or_path": str(tiny_model_dir), "ref_model_name_or_path": str(tiny_model_dir),
           "dataset_name": str(data), "output_dir": str(tmp_path / "dpo"), "use_peft": False, "loss_type": ["ipo"],
           "learning_rate": 1e-2, "max_steps": 3, "per_device_train_batch_size": 8, "logging_steps": 1,
           "report_to": "none", "disable_tqdm": True}
    run_recipe("dpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    curve = losses(tmp_path / "dpo")
    assert curve[-1] < curve[0]
    assert (tmp_path / "dpo" / "model.safetensors").is_file()


def test_kto_learns_from_unpaired_labels_and_needs_both_kinds(tmp_path, tiny_model_dir, capsys):
    rows = [{"messages": [{"role": "user", "content": f"Say {w}"}, {"role": "assistant", "content": f"{a} {w}"}],
             "label": a == "Sure!"} for w in WORDS * 2 for a in ("Sure!", "No.")]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "kto"),
           "use_peft": True, "lora_r": 8, "learning_rate": 3e-2, "max_steps": 6, "per_device_train_batch_size": 8,
           "logging_steps": 1, "report_to": "none", "disable_tqdm": True}
    run_recipe("kto", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    curve = losses(tmp_path / "kto")
    assert curve[-1] < curve[0] * 0.8
    one_kind = write_jsonl(tmp_path / "good.jsonl", [r for r in rows if r["label"]])
    with pytest.raises(DataError, match="every training row has label True"):
        run_recipe("kto", ["--config", write_config(tmp_path / "c.yaml", {**cfg, "dataset_name": str(one_kind),
                                                                          "output_dir": str(tmp_path / "kto2")})])


def test_pretrain_packs_text_and_lowers_held_out_perplexity(tmp_path, tiny_model_dir):
    docs = [{"text": " ".join([w] * 12) + "."} for w in WORDS * 6]
    data = write_jsonl(tmp_path / "docs.jsonl", docs)
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "pt"),
           "use_peft": False, "learning_rate": 1e-2, "max_steps": 8, "per_device_train_batch_size": 4,
           "max_length": 32, "eval_split_ratio": 0.2, "logging_steps": 2, "report_to": "none", "disable_tqdm": True}
    metrics = run_recipe("pretrain", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert metrics["perplexity"] < metrics["before_perplexity"] * 0.5


def test_packed_blocks_are_full_and_hold_eos_between_documents(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    from finetune_kit.models import load_tokenizer
    from finetune_kit.config_decoder import PretrainTrainingArguments

    tokenizer = load_tokenizer(str(tiny_model_dir))
    docs = Dataset.from_list([{"text": f"{w} is a word"} for w in WORDS])
    args = PretrainTrainingArguments(output_dir=str(tmp_path), max_length=16, report_to="none")
    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=docs, processing_class=tokenizer)
    blocks = trainer.train_dataset["input_ids"]
    assert all(len(b) == 16 for b in blocks[:-1])  # every block but the last is full
    flat = [t for b in blocks for t in b]
    assert flat.count(tokenizer.eos_token_id) == len(WORDS)  # one EOS closing each document


def test_grpo_runs_with_a_reward_model_and_a_function(tmp_path, tiny_model_dir, tiny_reward_run):
    (tmp_path / "rewards.py").write_text("def short(prompts, answers):\n    return [-len(a) / 50 for a in answers]\n")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {w}"} for w in WORDS])
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "grpo"),
           "use_peft": True, "lora_r": 4, "learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 4,
           "num_generations": 4, "max_completion_length": 6, "logging_steps": 1, "report_to": "none",
           "disable_tqdm": True, "reward_model": str(tiny_reward_run[0]),
           "reward_functions": [f"{tmp_path / 'rewards.py'}:short"]}
    run_recipe("grpo", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    logged = [e for e in json.loads((tmp_path / "grpo" / "log_history.json").read_text()) if "reward" in e]
    assert logged and {"rewards/short/mean", "rewards/reward_model/mean"} <= set(logged[0])
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("recipe", ["reward", "dpo"])
def test_qlora_reward_and_dpo_train_adapters_on_a_4bit_base(tmp_path, tiny_model_dir, recipe):
    bnb = pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(2))
    out = tmp_path / recipe
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
           "use_peft": True, "lora_r": 8, "load_in_4bit": True, "use_bnb_nested_quant": True,
           "learning_rate": 3e-2, "max_steps": 6, "per_device_train_batch_size": 8, "logging_steps": 1,
           "report_to": "none", "disable_tqdm": True}
    import finetune_kit.models as models

    loaded = []
    original = models._load

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append(model)
        return model

    models._load = spy
    try:
        run_recipe(recipe, ["--config", write_config(tmp_path / "c.yaml", cfg)])
    finally:
        models._load = original
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded[0].modules())  # the base stayed 4-bit
    curve = losses(out)
    assert curve[-1] < curve[0], curve
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


def test_reward_margins_enter_trls_loss_and_are_checked(tmp_path, tiny_model_dir, capsys):
    # A `margin` column was dropped by the pair normaliser, so trl's margin loss (Llama 2) never saw it. Now it is
    # kept for reward models: the first step's loss -log sigmoid(r_chosen - r_rejected - margin) grows with margin.
    from finetune_kit.data import normalise_scored_pair

    assert normalise_scored_pair({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}, "r")["margin"] == 2.0
    with pytest.raises(DataError, match=r"row 3: field 'margin' must be a finite number .*got 'big'"):
        normalise_scored_pair({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "row 3")
    first_loss = {}
    for margin in (0.0, 4.0):
        rows = [{**row, "margin": margin} for row in pair_rows()]
        out = tmp_path / f"rm-{margin}"
        cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(write_jsonl(tmp_path / "m.jsonl", rows)),
               "output_dir": str(out), "use_peft": True, "lora_r": 4, "max_steps": 1, "per_device_train_batch_size": 8,
               "logging_steps": 1, "seed": 0, "report_to": "none", "disable_tqdm": True}
        run_recipe("reward", ["--config", write_config(tmp_path / "c.yaml", cfg)])
        first_loss[margin] = losses(out)[0]
    assert first_loss[4.0] > first_loss[0.0] + 1.0, first_loss
    # A margin on some rows only: trl would fail on the first batch mixing them; named by check and train alike.
    rows = pair_rows()
    rows[2] = {**rows[2], "margin": 1.5}
    cfg = {"recipe": "reward", "model_name_or_path": str(tiny_model_dir), "use_peft": True, "max_steps": 1,
           "dataset_name": str(write_jsonl(tmp_path / "some.jsonl", rows)), "output_dir": str(tmp_path / "o")}
    check_and_train_refuse("reward", ["--config", write_config(tmp_path / "some.yaml", cfg)],
                           r"some\.jsonl: \d+ of \d+ rows have no 'margin'",
                           capsys)
