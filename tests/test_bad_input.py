"""Bad input: exit code 2, one paragraph naming what and where, no traceback, nothing on disk changed."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import ROOT, chat_rows, write_config, write_jsonl
from finetune_kit import recipes
from finetune_kit.errors import run_cli


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    def argv(**overrides):
        cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True,
               "output_dir": str(tmp_path / "fresh"), "max_steps": 1, "report_to": "none"}
        cfg.update(overrides)
        return ["--config", write_config(tmp_path / "cfg.yaml", cfg)]

    return tmp_path, argv, out


def run_sft(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(recipes.get("sft").load().main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def case(tmp_path, name):
    """Write the bad input for one case; return config overrides and the expected message."""
    if name == "missing file":
        return {"dataset_name": str(tmp_path / "nope.jsonl")}, r"dataset file not found: .*nope\.jsonl"
    if name == "empty dataset":
        (tmp_path / "empty.jsonl").write_text("")
        return {"dataset_name": str(tmp_path / "empty.jsonl")}, r"empty\.jsonl: the dataset is empty"
    if name == "malformed json line":
        (tmp_path / "bad.jsonl").write_text(json.dumps(chat_rows(1)[0]) + "\n{oops\n")
        return {"dataset_name": str(tmp_path / "bad.jsonl")}, r"bad\.jsonl line 2: not valid JSON"
    if name == "unknown format":
        write_jsonl(tmp_path / "q.jsonl", [{"q": "a", "a": "b"}])
        return {"dataset_name": str(tmp_path / "q.jsonl")}, r"q\.jsonl line 1: unknown data format"
    if name == "missing column":
        write_jsonl(tmp_path / "m.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
        return {"dataset_name": str(tmp_path / "m.jsonl")}, r"m\.jsonl line 2: missing field 'output'"
    if name == "unknown config key":
        return {"lora_rnk": 4}, r"unknown config key 'lora_rnk' \(config file .*cfg\.yaml\)\. Did you mean 'lora_r'"
    if name == "missing model":
        return {"model_name_or_path": str(tmp_path / "no-model")}, r"model path not found: .*no-model"
    if name == "finished run":
        (tmp_path / "out" / "run_info.json").write_text("{}")
        return {"output_dir": str(tmp_path / "out")}, r"output_dir .*out already holds a finished run"
    if name == "non-empty output dir":
        return {"output_dir": str(tmp_path / "out")}, r"output_dir .*out already holds files from an earlier run"
    if name == "every reply truncated away":  # the chat template's system prompt alone is longer than 8 tokens
        return {"max_length": 8}, r"train\.jsonl: no training row keeps a reply token within max_length 8"
    raise KeyError(name)


CASES = ["every reply truncated away", "missing file", "empty dataset", "malformed json line", "unknown format", "missing column",
         "unknown config key", "missing model", "finished run", "non-empty output dir"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input(setup, capsys, name):
    import re

    tmp_path, argv, out = setup
    overrides, message = case(tmp_path, name)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = run_sft(argv(**overrides), capsys)
    assert re.search(message, err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "fresh").exists()


def test_hub_model_offline_is_a_clear_error(setup, capsys):
    _, argv, _ = setup
    err = run_sft(argv(model_name_or_path="nobody/no-such-model"), capsys)
    # both things tried are named: no local path, no hub (HF_HUB_OFFLINE in the tests; a failed connection elsewhere)
    assert "'nobody/no-such-model' is not a local path" in err and "Hugging Face Hub is not available" in err


def test_real_process_exits_2_without_traceback(setup, python):
    _, argv, _ = setup
    result = subprocess.run([python, str(ROOT / "recipes" / "sft.py"), *argv(), "--learning_rate", "-1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "learning_rate must be positive, got -1.0" in result.stderr
