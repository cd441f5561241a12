"""`finetune-kit check`: exit 0 when clean, 1 with warnings (truncation, EOS outside the mask), 2 on errors."""

from __future__ import annotations


import pytest

from conftest import chat_rows, check_and_train_refuse, write_config, write_jsonl
from finetune_kit.cli import main


def check(tmp_path, model_dir, capsys, rows=None, **extra):
    data = write_jsonl(tmp_path / "d.jsonl", rows or chat_rows(10))
    cfg = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "o"),
           "use_peft": True, "max_length": 64}
    cfg.update(extra)
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", write_config(tmp_path / "c.yaml", cfg)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_clean(tmp_path, tiny_model_dir, capsys):
    code, out = check(tmp_path, tiny_model_dir, capsys)
    assert code == 0, out
    assert "10 training rows" in out and "end-of-turn token of assistant turns is inside the loss mask" in out
    assert "result: clean" in out


def test_truncation_is_a_warning(tmp_path, tiny_model_dir, capsys):
    code, out = check(tmp_path, tiny_model_dir, capsys, max_length=8)
    assert code == 1 and "10 of 10 training rows are longer than max_length=8" in out


def test_broken_template_is_a_warning(tmp_path, tiny_model_dir, capsys):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}"
                        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}")
    tokenizer_dir = tmp_path / "tok"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = template.read_text()
    tokenizer.save_pretrained(tokenizer_dir)
    code, out = check(tmp_path, tiny_model_dir, capsys, tokenizer_name_or_path=str(tokenizer_dir))
    assert code == 1 and "outside the loss mask" in out


def test_bad_row_is_an_error(tmp_path, tiny_model_dir, capsys):
    rows = chat_rows(3) + [{"messages": [{"role": "user", "content": "q"}]}]
    code, out = check(tmp_path, tiny_model_dir, capsys, rows=rows)
    assert code == 2 and "d.jsonl line 4" in out and "Traceback" not in out


@pytest.mark.parametrize("recipe, rows, extra", [
    ("dpo", [{"prompt": f"Say {w}", "chosen": f"Sure! {w}", "rejected": f"No. {w}"} for w in "abcdef"], {}),
    ("reward", [{"prompt": f"Say {w}", "chosen": f"Sure! {w}", "rejected": f"No. {w}"} for w in "abcdef"], {}),
    ("kto", [{"prompt": f"Say {w}", "completion": f"{w}", "label": i % 2 == 0} for i, w in enumerate("abcdef")], {}),
    ("ppo", [{"prompt": f"Say {w}"} for w in "abcdef"], {"reward_functions": ["math:fsum"], "max_steps": 2}),  # check loads it
    ("pretrain", [{"text": f"{w} is a letter."} for w in "abcdef"], {}),
])
def test_stage_recipes_are_checked_with_a_memory_estimate(tmp_path, tiny_model_dir, capsys, recipe, rows, extra):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "o"),
           "use_peft": True, **extra}
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", write_config(tmp_path / f"{recipe}_tiny.yaml", cfg)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert f"config ({recipe}): ok" in out and "6 training rows" in out and "estimated peak memory" in out


def test_check_names_a_bad_preference_row_and_an_explicit_recipe(tmp_path, tiny_model_dir, capsys):
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "same", "rejected": "same"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    config = write_config(tmp_path / "mine.yaml", {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data),
                                                   "output_dir": str(tmp_path / "o")})
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", config, "--recipe", "dpo"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "d.jsonl line 2: 'chosen' and 'rejected' are identical" in err


def test_check_refuses_kto_rows_of_one_label_as_train_does(tmp_path, tiny_model_dir, capsys):
    rows = [{"prompt": f"Say {w}", "completion": w, "label": True} for w in "abcdef"]
    cfg = {"recipe": "kto", "model_name_or_path": str(tiny_model_dir), "use_peft": True, "max_steps": 1,
           "dataset_name": str(write_jsonl(tmp_path / "d.jsonl", rows)), "output_dir": str(tmp_path / "o")}
    check_and_train_refuse("kto", ["--config", write_config(tmp_path / "c.yaml", cfg)],
                           "d.jsonl: every training row has label True; KTO needs both", capsys)
    assert not (tmp_path / "o").exists()


def test_memory_estimate_counts_parameters_exactly_and_flags_what_cannot_fit(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune_kit.config import ModelArguments
    from finetune_kit.memory import count_parameters, estimate

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total, trainable, _ = count_parameters(config, 8, "all-linear")
    assert total == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    assert trainable == peft_model.get_nb_trainable_parameters()[0]

    lora = estimate(config, ModelArguments(use_peft=True, lora_r=8), 8, 256, bf16=False,
                    activation_checkpointing=False)
    full = estimate(config, ModelArguments(use_peft=False), 8, 256, bf16=False, activation_checkpointing=False)
    assert full.optimizer == 12 * total and lora.optimizer == 12 * trainable
    assert lora.logits == 3 * 8 * 256 * config.vocab_size * 4
    checkpointed = estimate(config, ModelArguments(use_peft=True, lora_r=8), 8, 256, bf16=False,
                            activation_checkpointing=True)
    assert checkpointed.activations < lora.activations
    big_config = AutoConfig.from_pretrained(tiny_model_dir, hidden_size=4096, intermediate_size=14336,
                                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    assert estimate(big_config, ModelArguments(use_peft=False), 8, 4096, bf16=True,
                    activation_checkpointing=False).total > 100 * 2**30  # a full 8B run needs far more than 24 GB


SPLIT_CASES = {  # case: recipe, rows, keys, the error; rows a recipe's own split or blocks cannot be made from
    "text_classification": ("text_classification", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}],
                            {"eval_split_ratio": 0.5}, r"d\.jsonl: eval_split_ratio 0\.5 cannot split its 2 rows"),
    "token_classification": ("token_classification", [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}],
                             {"eval_split_ratio": 0.5}, r"d\.jsonl: eval_split_ratio 0\.5 cannot split its 1 rows"),
    "seq2seq": ("seq2seq", [{"source": "5 March 2021", "target": "2021-03-05"}], {"eval_split_ratio": 0.5},
                r"d\.jsonl: eval_split_ratio 0\.5 cannot split its 1 rows"),
    "question_answering": ("question_answering", [
        {"id": str(i), "context": "Paris is in France.", "question": f"Where is Paris {i}?",
         "answers": {"text": ["France"], "answer_start": [12]}} for i in range(3)], {"eval_split_ratio": 0.5},
        r"d\.jsonl: eval_split_ratio splits by article \(title\), and the data has only one"),
    "prm": ("prm", [{"prompt": "1 + 1?", "completions": ["1 + 1 = 2"], "labels": [True]}] * 2,
            {"eval_split_ratio": 0.5}, r"cannot split its 1 problems"),
    # masked_lm holds out 10% of its rows even with no ratio given, and needs a block of max_length tokens a side
    "masked_lm split": ("masked_lm", [{"text": "tiny"}], {}, r"d\.jsonl: eval_split_ratio 0\.1 cannot split its 1 rows"),
    "masked_lm blocks": ("masked_lm", [{"text": f"tiny text {i}"} for i in range(3)],
                         {"eval_split_ratio": 0.34, "max_length": 64}, r"d\.jsonl: too little text for one block of 64"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_check_refuses_a_split_the_rows_cannot_meet_as_train_does(tmp_path, tiny_model_dir, tiny_bert_dir, capsys,
                                                                     case):
    # `check` once said "clean" here and `train` then stopped at the split (masked_lm: with a traceback): both now
    # run the recipe's own split.
    recipe, rows, extra, message = SPLIT_CASES[case]
    model = {"prm": str(tiny_model_dir), "seq2seq": "google-t5/t5-small"}.get(recipe, str(tiny_bert_dir))
    cfg = {"recipe": recipe, "model_name_or_path": model, "dataset_name": str(write_jsonl(tmp_path / "d.jsonl", rows)),
           "output_dir": str(tmp_path / "o"), "max_steps": 1, "report_to": "none", **extra}
    check_and_train_refuse(recipe, ["--config", write_config(tmp_path / "c.yaml", cfg)], message, capsys)
    assert not (tmp_path / "o").exists()


def test_check_reads_the_chat_template_train_reads(tmp_path, tiny_model_dir, capsys):
    code, out = check(tmp_path, tiny_model_dir, capsys, chat_template_path=str(tmp_path / "nope.jinja"))
    assert code == 2 and "chat_template_path: file not found" in out
    # The given template is the one measured: this one keeps the end-of-turn token out of the assistant's span.
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}"
                        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{% endfor %}"
                        "{% if add_generation_prompt %}<|im_end|>\n<|im_start|>assistant\n{% endif %}")
    code, out = check(tmp_path, tiny_model_dir, capsys, chat_template_path=str(template))
    assert code == 1 and "outside the loss mask" in out
