"""Typed configs: shipped YAMLs parse, unknown keys and bad types are named, CLI wins, checks run on their own."""

from __future__ import annotations

import re

import pytest

from finetune_kit import config_checks as rc
from finetune_kit import recipes
from finetune_kit.config import (
    config_to_dict,
    known_keys,
    parse_config,
    read_yaml_config,
)
from finetune_kit.config_decoder import SFTRecipeConfig
from finetune_kit.errors import ConfigError
from finetune_kit.tune import parse_tune

CONFIGS = sorted(recipes.CONFIGS_DIR.glob("*.yaml"))


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def write_as(path, text: str):
    path.write_text(text)
    return path


BASE = "dataset_name: d.jsonl\noutput_dir: out\nuse_peft: true\n"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_parses(path):
    raw = read_yaml_config(path)
    assert raw.get("recipe") in recipes.names(), f"{path.name}: a shipped config names its recipe"
    assert path.stem.startswith(raw["recipe"] + "_"), f"{path.name}: named after its recipe, {raw['recipe']}"
    config_type = recipes.get(raw["recipe"]).config_type()
    cfg = parse_config(config_type, ["--config", path.stem])  # by name, as a user of the installed package would
    assert cfg.data.dataset_name and cfg.training.output_dir
    if "tune" in raw:  # a search space: every key a config key, every range well formed
        assert parse_tune(raw["tune"], path.name, known_keys(config_type))["space"]


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"sft_lora_smollm2.yaml", "sft_qlora_smollm2.yaml", "sft_full_smollm2.yaml", "sft_lora_hub.yaml"} <= names


def test_yaml_values_are_typed_and_cli_overrides_win(tmp_path):
    path = write(tmp_path, BASE + "learning_rate: 1e-4\nlora_r: 8\nlora_target_modules: [q_proj, v_proj]\n")
    cfg = parse_config(SFTRecipeConfig, ["--config", path, "--lora_r", "4"])
    assert cfg.training.learning_rate == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; we convert it
    assert cfg.model.lora_r == 4
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"]
    assert cfg.model.use_peft is True


def test_defaults_are_safe(tmp_path):
    cfg = parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE)])
    assert cfg.training.trust_remote_code is False
    assert cfg.run.overwrite_output_dir is False
    assert cfg.model.lora_target_modules == "all-linear"
    assert cfg.model.model_name_or_path == "smollm2-135m-instruct"


def test_unknown_yaml_key_is_named_with_suggestion(tmp_path):
    path = write(tmp_path, BASE + "lora_rank: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'lora_rank'.*c\.yaml.*Did you mean 'lora_r'"):
        parse_config(SFTRecipeConfig, ["--config", path])


def test_unknown_cli_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'lerning_rate' \(command line\).*'learning_rate'"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE), "--lerning_rate", "1"])


def test_abbreviations_are_not_accepted(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'learning'"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE), "--learning", "1"])


def test_wrong_type_is_named_with_its_source(tmp_path):
    path = write(tmp_path, BASE + "learning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"config key 'learning_rate' \(config file .*c\.yaml\): invalid float"):
        parse_config(SFTRecipeConfig, ["--config", path])
    with pytest.raises(ConfigError, match=r"config key 'lora_r' \(command line\): invalid int"):
        parse_config(SFTRecipeConfig, ["--config", str(write_as(tmp_path / "ok.yaml", BASE)), "--lora_r", "x"])
    # A bad YAML value is reported (with the file) even when the command line overrides it.
    with pytest.raises(ConfigError, match=r"config key 'learning_rate' \(config file .*c\.yaml\): invalid float"):
        parse_config(SFTRecipeConfig, ["--config", path, "--learning_rate", "1e-4", "--lora_r", "x"])


def test_bad_choice_is_named(tmp_path):
    with pytest.raises(ConfigError, match="dataset_format.*invalid choice"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "dataset_format: csvish\n")])


def test_key_value_style_points_to_the_convention(tmp_path):
    with pytest.raises(ConfigError, match="--learning_rate 3"):
        parse_config(SFTRecipeConfig, ["learning_rate=3"])
    with pytest.raises(ConfigError, match="--learning_rate 3"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE), "--lora_r", "4", "learning_rate=3"])


def test_nested_mapping_and_non_mapping_files_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'lora'"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "lora:\n  r: 8\n")])
    with pytest.raises(ConfigError, match="key 'lora_r' holds a mapping, but it takes a single value"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "lora_r:\n  value: 8\n")])
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, "- a\n- b\n")])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(SFTRecipeConfig, ["--config", str(tmp_path / "missing.yaml")])
    # Broken YAML: one line naming the file, line and column (PyYAML's own message spans four, with a caret).
    with pytest.raises(ConfigError) as broken:
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "lora_r: [8\n")])
    assert "not valid YAML: line " in str(broken.value) and "\n" not in str(broken.value)
    with pytest.raises(ConfigError, match=r"column_mapping is not a mapping: line 1, column \d+: ") as broken:
        parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE), "--column_mapping", "{a: [b"])
    assert "\n" not in str(broken.value)


def test_mapping_keys_accept_yaml_mappings(tmp_path):
    cfg = parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "column_mapping: {instruction: q}\n"
                                                           "model_init_kwargs: {low_cpu_mem_usage: true}\n")])
    assert cfg.data.column_mapping == {"instruction": "q"}
    assert cfg.training.model_init_kwargs == {"low_cpu_mem_usage": True}


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(SFTRecipeConfig, ["--config", write(tmp_path, BASE + "lora_r: 8\n")])
    flat = config_to_dict(cfg)
    assert flat["lora_r"] == 8 and flat["dataset_name"] == "d.jsonl"
    again = write(tmp_path, "\n".join(f"{k}: {v!r}" for k, v in {"lora_r": 8}.items()) + "\n" + BASE)
    assert parse_config(SFTRecipeConfig, ["--config", again]).model.lora_r == 8


# --- each cross-field check on its own -------------------------------------------------------------------------


def cfg_with(tmp_path, extra: str = "", base: str = BASE):
    return parse_config(SFTRecipeConfig, ["--config", write(tmp_path, base + extra)])


def test_check_quantization_is_exclusive(tmp_path):
    cfg = cfg_with(tmp_path)
    assert rc.quantization_is_exclusive(cfg) is None
    cfg.model.load_in_4bit = cfg.model.load_in_8bit = True
    assert "choose one" in rc.quantization_is_exclusive(cfg)
    with pytest.raises(ConfigError, match="8 bit and 4 bit"):
        cfg_with(tmp_path, "load_in_4bit: true\nload_in_8bit: true\n")


def test_check_quantization_needs_adapter(tmp_path):
    with pytest.raises(ConfigError, match="set use_peft: true"):
        cfg_with(tmp_path, "load_in_4bit: true\n", base="dataset_name: d.jsonl\noutput_dir: out\n")


def test_check_dora_needs_peft(tmp_path):
    with pytest.raises(ConfigError, match="use_dora"):
        cfg_with(tmp_path, "use_dora: true\n", base="dataset_name: d.jsonl\noutput_dir: out\n")


def test_check_dataset_is_given(tmp_path):
    with pytest.raises(ConfigError, match="dataset_name is required"):
        cfg_with(tmp_path, base="output_dir: out\n")


def test_check_eval_split_ratio(tmp_path):
    with pytest.raises(ConfigError, match=r"eval_split_ratio must be in \[0, 1\)"):
        cfg_with(tmp_path, "eval_split_ratio: 1.5\n")
    with pytest.raises(ConfigError, match="one source of validation data"):
        cfg_with(tmp_path, "eval_split_ratio: 0.1\neval_dataset_name: v.jsonl\n")


def test_check_eval_strategy_has_data(tmp_path):
    with pytest.raises(ConfigError, match="no validation data"):
        cfg_with(tmp_path, "eval_strategy: epoch\n")
    assert cfg_with(tmp_path, "eval_strategy: epoch\neval_split_ratio: 0.1\n").data.eval_split_ratio == 0.1


def test_check_learning_rate_positive(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate must be positive, got -0.001"):
        cfg_with(tmp_path, "learning_rate: -1.0e-3\n")


def test_check_numbers_in_range(tmp_path):
    # Each of these passed transformers' own checks and failed only once training ran (numpy's seed, torch's AdamW,
    # NEFTune's uniform noise, steps from an endless epoch count) or did nothing (a NaN clip norm clips nothing).
    for extra, message in [("seed: -1\n", r"seed must be between 0 and 2\*\*32 - 1 .*got -1"),
                           ("data_seed: 4294967296\n", r"data_seed must be between 0 and 2\*\*32 - 1"),
                           ("learning_rate: .inf\n", "learning_rate must be a finite number, got inf"),
                           ("num_train_epochs: .inf\n", r"num_train_epochs must be a finite number \(or set max_steps\)"),
                           ("weight_decay: -0.1\n", "weight_decay must be a number at least 0, got -0.1"),
                           ("adam_beta2: 1.0\n", "adam_beta2 must be a number at least 0 and below 1, got 1.0"),
                           ("max_grad_norm: .nan\n", "max_grad_norm must be a number at least 0, got nan"),
                           ("neftune_noise_alpha: 0\n", "neftune_noise_alpha must be a number above 0, got 0")]:
        with pytest.raises(ConfigError, match=message):
            cfg_with(tmp_path, extra)
    # The edges that mean something stay allowed: no clipping, seed 0, epochs left to max_steps.
    cfg = cfg_with(tmp_path, "max_grad_norm: 0\nseed: 0\nnum_train_epochs: .inf\nmax_steps: 3\n")
    assert (cfg.training.max_grad_norm, cfg.training.seed, cfg.training.max_steps) == (0, 0, 3)


def test_check_output_apart_from_inputs(tmp_path):
    # A run written where it reads would replace its own model or data: refused whatever overwrite_output_dir says.
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "adapter_config.json").write_text("{}")
    (run / "data" / "d.jsonl").write_text('{"text": "a"}\n')
    for extra, message in [
        (f"model_name_or_path: {run}\ndataset_name: d.jsonl\n", f"output_dir {run} is model_name_or_path {run}:"),
        (f"dataset_name: {run / 'data' / 'd.jsonl'}\n", f"output_dir {run} holds dataset_name {run}/data/d.jsonl"),
        (f"datasets: [{{dataset_name: {run / 'data' / 'd.jsonl'}}}]\n", "holds datasets: dataset_name"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            cfg_with(tmp_path, f"{extra}output_dir: {run}\noverwrite_output_dir: true\nuse_peft: true\n", base="")
    # A hub id that is no local path, and an output folder beside the inputs, are fine.
    cfg = cfg_with(tmp_path, f"model_name_or_path: {run.name}/x\ndataset_name: {run / 'data' / 'd.jsonl'}\n"
                             f"output_dir: {tmp_path / 'other'}\nuse_peft: true\n", base="")
    assert cfg.training.output_dir == str(tmp_path / "other")


def test_check_output_not_around_working_folder(tmp_path, monkeypatch):
    # output_dir "." with overwrite_output_dir once set the working folder aside (a traceback, and a stray
    # "..replaced" folder left in it); replacing it would delete the user's files after the first step.
    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for output_dir, where in ((".", "the folder you are in"), ("..", "a folder above the one you are in"),
                              (str(tmp_path), "a folder above the one you are in")):
        with pytest.raises(ConfigError, match=f"output_dir {re.escape(output_dir)} is {where} and overwrite"):
            cfg_with(tmp_path, f"output_dir: {output_dir}\noverwrite_output_dir: true\n", base="dataset_name: d\n")
    # Without overwrite_output_dir nothing is replaced (a non-empty folder is refused by check_output_dir); a new
    # folder inside the working one is what runs are for.
    assert cfg_with(tmp_path, "output_dir: .\n", base="dataset_name: d\n").training.output_dir == "."
    assert cfg_with(tmp_path, "output_dir: runs/x\noverwrite_output_dir: true\n", base="dataset_name: d\n")


def test_check_lora_rank_positive(tmp_path):
    with pytest.raises(ConfigError, match="lora_r must be a positive integer"):
        cfg_with(tmp_path, "lora_r: 0\n")


def test_check_attention_known(tmp_path):
    from transformers import AttentionInterface

    from finetune_kit import cpu_attention

    with pytest.raises(ConfigError, match="attn_implementation 'nosuch' is not an attention transformers knows"):
        cfg_with(tmp_path, "attn_implementation: nosuch\n")
    for name in ("sdpa", "paged|eager", "kernels-community/flash-attn3", cpu_attention.NAME):
        assert cfg_with(tmp_path, f"attn_implementation: {name}\n").model.attn_implementation == name
    # The list follows transformers': every name it registers is accepted.
    assert {k.removeprefix("paged|") for k in AttentionInterface().valid_keys()} <= set(rc.ATTENTION_NAMES)


def test_check_output_dir_is_set(tmp_path):
    with pytest.raises(ConfigError, match="output_dir is required"):
        cfg_with(tmp_path, base="dataset_name: d.jsonl\n")


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        cfg_with(tmp_path, "learning_rate: -1.0\nlora_r: 0\n")
    assert "learning_rate" in str(err.value) and "lora_r" in str(err.value)


# --- the stage recipes' checks ---------------------------------------------------------------------------------


def stage_cfg(tmp_path, recipe: str, extra: str = ""):
    # `extra` replaces BASE's keys (a key given twice in one YAML is an error of its own)
    given = {line.split(":")[0] for line in extra.splitlines()}
    base = "".join(line + "\n" for line in BASE.splitlines() if line.split(":")[0] not in given)
    return parse_config(recipes.get(recipe).config_type(), ["--config", write(tmp_path, base + extra)])


def test_ppo_checks(tmp_path):
    ok = "reward_functions: [m:f]\nmax_steps: 4\n"
    assert stage_cfg(tmp_path, "ppo", ok).ppo.rollout_batch_size == 8
    for extra, message in [("max_steps: 4\n", "no reward: set reward_model"),
                           ("reward_functions: [m:f]\n", "max_steps: set the number of PPO steps"),
                           (ok + "use_peft: false\n", "PPO trains LoRA adapters"),
                           (ok + "rollout_batch_size: 6\n", "must be a positive multiple of mini_batch_size (4)"),
                           (ok + "gamma: 1.5\n", "gamma must be in (0, 1]"),
                           (ok + "cliprange: 0\n", "cliprange and cliprange_value must be > 0")]:
        with pytest.raises(ConfigError) as err:
            stage_cfg(tmp_path, "ppo", extra)
        assert message in str(err.value), extra


def test_grpo_needs_a_reward_and_reward_models_default_to_a_trained_head(tmp_path):
    with pytest.raises(ConfigError, match="no reward"):
        stage_cfg(tmp_path, "grpo")
    assert stage_cfg(tmp_path, "reward").model.lora_task_type == "SEQ_CLS"
    with pytest.raises(ConfigError, match="lora_task_type must be SEQ_CLS"):
        stage_cfg(tmp_path, "reward", "lora_task_type: CAUSAL_LM\n")


def test_stage_training_defaults_follow_the_machine(tmp_path):
    from finetune_kit.hardware import bf16_is_fast

    for recipe in ("pretrain", "reward", "dpo", "kto", "grpo"):
        cfg = stage_cfg(tmp_path, recipe, "reward_functions: [m:f]\n" if recipe == "grpo" else "")
        assert cfg.training.bf16 == bf16_is_fast() and not cfg.training.gradient_checkpointing, recipe
    pretrain = stage_cfg(tmp_path, "pretrain").training
    assert pretrain.packing and pretrain.packing_strategy == "wrapped" and pretrain.max_length == 512


def test_the_key_index_matches_the_config_types(tmp_path, monkeypatch):
    import json

    shipped = json.loads(recipes.KEYS_FILE.read_text())
    monkeypatch.setattr(recipes, "KEYS_FILE", tmp_path / "keys.json")
    assert recipes.write_key_index() == shipped, "a config key changed: run `python -m finetune_kit.recipes`"


def test_unknown_and_refused_keys_are_named_before_any_library_import(tmp_path):
    """What the key index can answer is answered without importing transformers / trl (seconds on a small CPU)."""
    import subprocess
    import sys

    (tmp_path / "typo.yaml").write_text("dataset_name: d.jsonl\noutput_dir: o\nlora_rank: 8\n")
    (tmp_path / "tc.yaml").write_text("recipe: text_classification\ndataset_name: d.jsonl\noutput_dir: o\n")
    code = ("import sys\nfrom finetune_kit.cli import main\nfor argv in ([{a}], [{b}]):\n    try:\n        main(argv)\n"
            "    except SystemExit as done:\n        print('exit', done.code)\n"
            "print('imported', sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    code = code.format(a="'train', 'sft', '--config', 'typo.yaml'",
                       b="'train', '--config', 'tc.yaml', '--attn_implementation', 'sdpa'")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["exit 2", "exit 2", "imported []"], done.stdout + done.stderr
    assert "unknown config key 'lora_rank' (config file typo.yaml). Did you mean 'lora_r'?" in done.stderr
    assert "key 'attn_implementation' does nothing in the text_classification recipe" in done.stderr
