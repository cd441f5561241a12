"""SFT on a tiny Llama: the loss mask, learning, what trains and what stays frozen, run-folder safety."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import chat_rows, run_recipe, write_config, write_jsonl
from finetune_kit.data import end_of_turn_is_trained, tokenize_conversation
from finetune_kit.errors import UserError

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

CONVERSATION = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Green."},
]


def masked_text(tokenizer, messages):
    out = tokenize_conversation(tokenizer, messages)
    return [tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])], out


def test_only_assistant_turns_carry_loss_and_eos_is_inside(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: pad == eos, the case that bites
    (text,), out = masked_text(tokenizer, CONVERSATION)
    assert text == "Blue.<|im_end|>Green.<|im_end|>"
    eos_positions = [i for i, t in enumerate(out["input_ids"]) if t == tokenizer.eos_token_id]
    trained_eos = [i for i in eos_positions if out["assistant_masks"][i]]
    assert len(trained_eos) == 2 and len(eos_positions) > 2  # system/user EOS tokens stay masked
    assert end_of_turn_is_trained(tokenizer)


def test_eos_survives_trl_label_building_and_padding(tokenizer, tiny_model_dir):
    """Through trl's own preparation and collator (pad == eos), the assistant EOS keeps its label."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from transformers import AutoModelForCausalLM

    short = tokenize_conversation(tokenizer, CONVERSATION[:2])
    long = tokenize_conversation(tokenizer, CONVERSATION)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(output_dir="/tmp/unused", bf16=False, report_to="none", max_length=None),
        train_dataset=Dataset.from_list([short, long]),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    n = len(short["input_ids"])
    assert (ids[n:] == tokenizer.pad_token_id).all()          # right padding with the EOS id...
    assert (labels[n:] == -100).all()                          # ...carries no loss,
    kept = [i for i in range(n) if labels[i] != -100]
    assert tokenizer.decode(ids[kept]) == "Blue.<|im_end|>"    # but the real EOS of the answer does.


def test_broken_template_is_detected(tokenizer):
    from transformers import AutoTokenizer

    broken = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Each turn's end-of-turn token is written by the *next* turn, so the assistant's EOS falls outside its span.
    broken.chat_template = (
        "{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}"
    )
    assert not end_of_turn_is_trained(broken)


def test_non_prefix_template_is_rejected(tokenizer):
    from transformers import AutoTokenizer

    odd = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    odd.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="prefix by prefix"):
        tokenize_conversation(odd, CONVERSATION)


@pytest.fixture
def sft_yaml(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))

    def make(output_dir, **extra):
        cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(output_dir),
               "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 3e-2,
               "per_device_train_batch_size": 8, "max_steps": 40, "logging_steps": 4, "save_strategy": "no",
               "max_length": 64, "seed": 0, "report_to": "none", "disable_tqdm": True}
        cfg.update(extra)
        return write_config(tmp_path / f"{output_dir.name}.yaml", cfg)

    return make


def test_lora_sft_learns_and_leaves_base_weights_alone(tmp_path, sft_yaml, tiny_model_dir, monkeypatch):
    import trl.trainer.utils as trl_utils
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    # trl's tile width as a fresh process has it (an earlier test in this process may have narrowed it already).
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 32768)
    out = tmp_path / "lora"
    metrics = run_recipe("sft", ["--config", sft_yaml(out), "--logging_steps", "1"])
    history = json.loads((out / "run_info.json").read_text())
    assert history["recipe"] == "sft" and history["metrics"]["train_loss"] == pytest.approx(metrics["train_loss"])
    assert history["decisions"]["lm_head_tile_columns"]["value"] == 4096  # trl's fused LM head, no Triton on a CPU
    # no Triton on a CPU: SFT's head scores the labelled positions only (finetune_kit.lm_head), in either precision
    assert history["decisions"]["lm_head_scoring"]["value"] == "labelled positions"

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(("lora_A" in k or "lora_B" in k) for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it moved

    tuned = PeftModel.from_pretrained(base, out)
    for name, param in tuned.base_model.model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_layer.", "")
            assert torch.equal(param, base_state[key]), f"base weight {key} changed"

    # Loss falls: the last logged losses are well below the first.
    log = [e["loss"] for e in _log_history(out) if "loss" in e]
    assert log[-1] < 0.65 * log[0], log
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert (out / "config.yaml").is_file() and (out / "README.md").is_file() and (out / "tokenizer.json").is_file()


def _log_history(out):
    return json.loads((out / "log_history.json").read_text())


def test_full_finetune_changes_base_weights(tmp_path, sft_yaml, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    run_recipe("sft", ["--config", sft_yaml(out, use_peft=False, learning_rate=1e-3, max_steps=6)])
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2


def test_refuses_finished_run_then_overwrites_when_told(tmp_path, sft_yaml):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_info.json").write_text("{}")
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already holds a finished run; nothing was changed"):
        run_recipe("sft", ["--config", sft_yaml(out, max_steps=1)])
    assert (out / "keep.txt").read_text() == "precious"
    run_recipe("sft", ["--config", sft_yaml(out, max_steps=1), "--overwrite_output_dir", "true"])
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()


def test_bad_data_fails_before_the_model_loads(tmp_path, sft_yaml, monkeypatch):
    import finetune_kit.models as models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was validated")

    monkeypatch.setattr(models, "load_causal_lm", no_model)
    bad = write_jsonl(tmp_path / "bad.jsonl", chat_rows(3) + [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(UserError, match=r"bad\.jsonl line 4: field 'messages': the conversation ends with a 'user'"):
        run_recipe("sft", ["--config", sft_yaml(tmp_path / "o"), "--dataset_name", str(bad)])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("targets, expected", [(["q_proj"], {"q_proj"}), (["q_proj", "v_proj"], {"q_proj", "v_proj"}),
                                               ([r".*layers\.1\.self_attn\.o_proj"], {"o_proj"})])
def test_lora_targets_name_modules_as_given(tmp_path, tiny_model_dir, targets, expected):
    """One plain name is a name, not a regex (trl turns a one-element list into a string, which peft would match
    against whole module names: [q_proj] trained nothing); a value with regex characters stays peft's regex."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "o"),
           "use_peft": True, "lora_r": 4, "lora_target_modules": targets, "max_steps": 1, "max_length": 64,
           "per_device_train_batch_size": 4, "save_strategy": "no", "report_to": "none", "report": False}
    run_recipe("sft", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    adapted = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in load_file(tmp_path / "o" / "adapter_model.safetensors")}
    assert adapted == expected
