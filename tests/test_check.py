"""`finetune-kit check`: exit 0 when clean, 1 with warnings (truncation, EOS outside the mask), 2 on errors."""

from __future__ import annotations

import pytest

from conftest import chat_rows, write_config, write_jsonl
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
