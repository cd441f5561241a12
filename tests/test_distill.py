"""Distillation (trl's GKDTrainer): a student built from a config moves towards its teacher (KL falls, top-1 agreement
rises), on-policy steps and a LoRA run folder as the teacher work, and what cannot work is refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import chat_rows, run_recipe, write_config, write_jsonl


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    """A 2-layer Llama whose next-token distributions are peaked (init 0.5, untied head): its top-1 token is a real
    target to agree with. conftest's tiny model spreads its mass almost uniformly over 49k tokens, where a top-1 is
    noise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def base(tmp_path, teacher_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(32))
    return {"model_name_or_path": str(teacher_dir), "teacher_model_name_or_path": str(teacher_dir),
            "student_config": {"num_hidden_layers": 1}, "dataset_name": str(data), "eval_dataset_name": str(data),
            "beta": 0.0, "lmbda": 0.0, "learning_rate": 2e-2, "max_steps": 8, "per_device_train_batch_size": 8,
            "max_length": 64, "save_strategy": "no", "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
            "output_dir": str(tmp_path / "out")}


@pytest.mark.precision
def test_the_student_moves_towards_the_teacher_and_saves_as_a_whole_model(tmp_path, base):
    from finetune_kit.models import load_for_inference

    metrics = run_recipe("distill", ["--config", write_config(tmp_path / "c.yaml", base)])
    before, after = metrics["before"], metrics["after"]
    assert before["answer_tokens"] == after["answer_tokens"] > 100  # the answers of the 32 training conversations
    assert after["kl_teacher_student"] < 0.8 * before["kl_teacher_student"], (before, after)
    assert after["top1_agreement"] >= before["top1_agreement"] + 0.05, (before, after)
    steps = [e["loss"] for e in json.loads((tmp_path / "out" / "log_history.json").read_text()) if "loss" in e]
    assert len(steps) == 8 and steps[-1] < steps[0]
    student, _ = load_for_inference(str(tmp_path / "out"))  # a full checkpoint of the student's own size
    assert student.config.num_hidden_layers == 1 and student.config.hidden_size == 32
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["recipe"] == "distill" and info["metrics"]["after"] == after


def test_on_policy_steps_from_a_lora_run_folder_as_the_teacher(tmp_path, base, tiny_run, tiny_model_dir):
    """lmbda 1: every step trains on the student's own sampled answers; the teacher is an SFT adapter run (merged
    into its base on load), the student a narrower model of its base's architecture."""
    cfg = {**base, "model_name_or_path": str(tiny_model_dir), "teacher_model_name_or_path": str(tiny_run),
           "student_config": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
                              "num_attention_heads": 2, "num_key_value_heads": 1},
           "lmbda": 1.0, "max_new_tokens": 6, "max_steps": 2, "eval_dataset_name": None}
    metrics = run_recipe("distill", ["--config", write_config(tmp_path / "c.yaml", cfg)])
    assert "before" not in metrics and metrics["train_loss"] > 0  # no held-out rows: nothing scored
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["hidden_size"] == 16 and saved["head_dim"] == 8  # the head size follows the new widths


@pytest.mark.parametrize("extra, expected", [
    ({"teacher_model_name_or_path": None}, "distill needs a teacher: set teacher_model_name_or_path"),
    ({"use_peft": True}, "student_config builds a new student with random weights"),
    ({"student_config": {"num_layers": 1}}, "student_config: .* config \\(llama\\) has no num_layers"),
    ({"student_config": {"hidden_size": 30}}, "student_config .* cannot take it"),
    ({"packing": True}, "key 'packing' does nothing in the distill recipe"),
])
def test_what_cannot_work_is_one_named_error_line(tmp_path, base, capsys, extra, expected):
    import re

    from finetune_kit.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "distill", "--config", write_config(tmp_path / "c.yaml", {**base, **extra})])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1 and re.search(expected, err), err


def test_text_rows_and_a_teacher_of_another_vocabulary_are_refused(tmp_path, base):
    from finetune_kit.errors import DataError, UserError

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain words"}] * 4)
    with pytest.raises(DataError, match="plain text rows have no answer to distil on"):
        run_recipe("distill", ["--config", write_config(tmp_path / "c.yaml", {**base, "dataset_name": str(text),
                                                                                "eval_dataset_name": None})])
    other = tmp_path / "other"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    with pytest.raises(UserError, match="vocabulary of 49152 tokens, teacher .*other of 1000"):
        run_recipe("distill", ["--config", write_config(tmp_path / "c.yaml", {**base, "teacher_model_name_or_path":
                                                                                str(other)})])
