"""The preflight: the library-free checks `train` and `check` run before trl / transformers load.

It must say exactly what the typed config's checks say (one validation path), convert values as transformers'
parser does, and import no heavy library on the way.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import write_config
from finetune_kit import recipes
from finetune_kit.config import parse_config
from finetune_kit.errors import ConfigError, UserError
from finetune_kit.preflight import config_problems, preflight

# Values each check refuses, tried on every recipe that has the key: the preflight and parse_config must give the
# same message, word for word, and both accept every shipped config.
MUTATIONS = [
    {"per_device_train_batch_size": -8}, {"gradient_accumulation_steps": 0}, {"per_device_eval_batch_size": 0},
    {"learning_rate": -1e-3}, {"learning_rate": 0}, {"lora_dropout": 1.5}, {"lora_alpha": -16}, {"lora_r": 0},
    {"num_train_epochs": 0, "max_steps": -1}, {"max_length": 0}, {"max_prompt_length": -1}, {"beta": -1},
    {"beta": 0}, {"eval_strategy": "epoch", "eval_split_ratio": 0.0, "eval_dataset_name": None},
    {"eval_split_ratio": 1.0}, {"load_in_4bit": True, "load_in_8bit": True}, {"bf16": True, "fp16": True},
    {"use_dora": True, "use_peft": False}, {"rollout_batch_size": 3, "mini_batch_size": 2}, {"gamma": 0},
    {"reward_model": None, "reward_functions": None}, {"doc_stride": 500}, {"mlm_probability": 1.0},
    {"test_split_ratio": 0.9}, {"freeze_layers": -1}, {"lora_target_modules": []}, {"report_to": "wandb"},
    {"dataset_name": None}, {"use_peft": False, "lora_task_type": "CAUSAL_LM"},
]


def _shipped_rows():
    by_recipe = recipes.configs_by_recipe()
    return [(row, name) for row in recipes.RECIPES for name in by_recipe.get(row.name, [])[:1]]


def _full_message(row, argv) -> str | None:
    try:
        parse_config(row.config_type(), argv)
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.parametrize("row,name", _shipped_rows(), ids=lambda v: getattr(v, "name", v))
def test_preflight_and_parse_config_agree_on_every_mutation(row, name, tmp_path):
    from finetune_kit.yaml_config import read_yaml_config

    fields = recipes.key_index(row)["fields"]
    base = {k: v for k, v in read_yaml_config(name).items() if k not in ("tune",)}
    assert config_problems(row, ["--config", name])[1] == [] and _full_message(row, ["--config", name]) is None
    tried = 0
    for mutation in MUTATIONS:
        if not set(mutation) <= set(fields) or recipes.refused_key(row, next(iter(mutation)), set()):
            continue
        argv = ["--config", write_config(tmp_path / "c.yaml", {**base, **mutation})]
        full = _full_message(row, argv)
        _, problems = config_problems(row, argv)
        ours = "invalid config: " + " ".join(problems) if problems else None
        if ours is None:  # only rules of trl's / transformers' own __post_init__ may be left to the full parser
            assert full is None or not full.startswith("invalid config: "), (mutation, full)
            continue
        assert full is not None, mutation  # never refuses what train accepts ...
        if full.startswith("invalid config: "):  # ... and says what the checks say (else a library rule came first)
            assert ours == full, mutation
        tried += 1
    assert tried >= 8


def test_values_convert_as_the_parser_converts(tmp_path):
    row = recipes.get("sft")
    config = write_config(tmp_path / "c.yaml", {"dataset_name": "d.jsonl", "output_dir": "o", "lora_r": "8",
                                                "use_peft": "yes", "report_to": "none",
                                                "column_mapping": {"instruction": "q", "output": "a"}})
    cfg, problems = config_problems(row, ["--config", config, "--learning_rate", "3e-4", "--no_remove_unused_columns",
                                          "--gradient_checkpointing", "--lora_target_modules", "q_proj", "v_proj",
                                          "--eval_strategy=no"])
    assert problems == []
    assert cfg.model.lora_r == 8 and cfg.model.use_peft is True and cfg.training.learning_rate == 3e-4
    assert cfg.training.remove_unused_columns is False and cfg.training.gradient_checkpointing is True
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.training.eval_strategy == "no"
    assert cfg.data.column_mapping == {"instruction": "q", "output": "a"}  # a mapping stays one
    full = parse_config(row.config_type(), ["--config", config, "--learning_rate", "3e-4"])
    assert (full.model.lora_r, full.model.use_peft, full.training.learning_rate) == (8, True, 3e-4)


@pytest.mark.parametrize("argv", [["--lora_r", "eight"], ["--lr_scheduler_type", "sideways"], ["--use_peft", "maybe"],
                                  ["--dataset_format", "zzz"], ["lora_r=4"]])
def test_bad_values_are_named_as_the_parser_names_them(argv, tmp_path):
    config = write_config(tmp_path / "c.yaml", {"dataset_name": "d.jsonl", "output_dir": str(tmp_path / "o")})
    with pytest.raises(ConfigError) as ours:
        preflight(recipes.get("sft"), ["--config", config, *argv])
    with pytest.raises(ConfigError) as full:
        parse_config(recipes.get("sft").config_type(), ["--config", config, *argv])
    assert str(ours.value) == str(full.value) and "(command line)" in str(ours.value) or "lora_r=4" in str(ours.value)


def test_what_it_cannot_read_is_left_to_the_parser(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"dataset_name": "d.jsonl", "learning_rate": [1e-4, 2e-4]})
    assert config_problems(recipes.get("sft"), ["--config", config]) == (None, [])


def test_a_config_of_another_recipe_is_named_first(tmp_path):
    config = write_config(tmp_path / "p.yaml", {"recipe": "dpo", "learning_rate": -1})
    with pytest.raises(ConfigError, match=r"is for recipe 'dpo' \(key 'recipe'\), not 'sft'"):
        preflight(recipes.get("sft"), ["--config", config])


def test_the_preflight_imports_no_heavy_library(tmp_path):
    """What makes its errors fast: data rows, output folder, model folder and values checked with the standard
    library, yaml and our own modules only."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                               "content": "yo"}]}) + "\n{x\n")
    config = write_config(tmp_path / "c.yaml", {"dataset_name": str(data), "output_dir": str(tmp_path / "o")})
    code = ("import sys\nfrom finetune_kit import recipes\nfrom finetune_kit.errors import UserError\n"
            "from finetune_kit.preflight import preflight\n"
            f"try:\n    preflight(recipes.get('sft'), ['--config', {config!r}])\nexcept UserError as err:\n"
            "    print('error:', err)\n"
            "print('loaded:', sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "d.jsonl line 2: not valid JSON" in done.stdout, done.stdout
    assert "loaded: []" in done.stdout, done.stdout


@pytest.mark.parametrize("recipe,rows,message", [
    ("text_classification", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}],
     r"d\.jsonl: every row has the label 'pos'; a classifier needs at least two classes"),
    ("token_classification", [{"tokens": ["a", "b"], "tags": ["O"]}], r"d\.jsonl line 1: 2 tokens but 1 tags"),
    ("dpo", [{"prompt": "p", "chosen": "x", "rejected": "x"}], r"d\.jsonl line 1: 'chosen' and 'rejected' are identical"),
])
def test_data_rows_are_checked_by_the_recipes_own_readers(recipe, rows, message, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = write_config(tmp_path / "c.yaml", {"dataset_name": str(data), "output_dir": str(tmp_path / "o"),
                                                "model_name_or_path": "minilm-l6"})
    with pytest.raises(UserError, match=message):
        preflight(recipes.get(recipe), ["--config", config])


def test_a_lora_run_folder_is_refused_where_a_whole_checkpoint_is_needed(tmp_path):
    run = tmp_path / "sft-run"
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    config = write_config(tmp_path / "c.yaml", {"dataset_name": str(data), "output_dir": str(tmp_path / "o"),
                                                "model_name_or_path": str(run)})
    with pytest.raises(UserError, match=r"sft-run is a LoRA adapter run .*finetune-kit export"):
        preflight(recipes.get("text_classification"), ["--config", config])


def test_the_chat_template_file_check_agrees_with_the_tokenizer(tmp_path, smollm_dir):
    """The preflight's look at the files says what AutoTokenizer then finds: a template in chat_template.jinja, one
    in tokenizer_config.json, none at all."""
    import shutil

    from transformers import AutoTokenizer

    from finetune_kit.model_files import has_chat_template

    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm_dir / name).is_file():
            shutil.copy(smollm_dir / name, folder / name)
    template = (folder / "chat_template.jinja").read_text()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    seen = []
    for state in ("jinja file", "none", "in tokenizer_config.json"):
        if state == "none":
            (folder / "chat_template.jinja").unlink()
        if state == "in tokenizer_config.json":
            (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
        seen.append((has_chat_template(folder), bool(AutoTokenizer.from_pretrained(folder).chat_template)))
    assert seen == [(True, True), (False, False), (True, True)]
