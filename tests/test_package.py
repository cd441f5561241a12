"""One package: the built wheel and sdist hold every recipe and shipped config, a non-editable install works from an
empty folder (`finetune-kit recipes / check / train`, `accelerate launch -m`), and the recipe table is the only
registry of recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, chat_rows, write_config, write_jsonl

from finetune_kit import recipes
from finetune_kit.cli import main as cli_main
from finetune_kit.errors import ConfigError

RECIPE_MODULES = sorted(p.name for p in (ROOT / "finetune_kit" / "recipes").glob("*.py"))
SHIPPED = sorted(p.name for p in (ROOT / "finetune_kit" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The wheel and sdist, built from a copy of the package sources (the checkout gets no build folders)."""
    import shutil

    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "finetune_kit", src / "finetune_kit", ignore=shutil.ignore_patterns("__pycache__"))
    dist = src / "dist"
    code = "from setuptools import build_meta as b; print(b.build_wheel('dist')); print(b.build_sdist('dist'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"wheel": next(dist.glob("*.whl")), "sdist": next(dist.glob("*.tar.gz"))}


def test_wheel_and_sdist_hold_every_recipe_module_and_shipped_config(built):
    assert {f"{name}.py" for name in recipes.names()} | {"__init__.py", "__main__.py"} == set(RECIPE_MODULES)
    assert len(SHIPPED) >= len(recipes.RECIPES)
    wheel = set(zipfile.ZipFile(built["wheel"]).namelist())
    sdist = {n.split("/", 1)[1] for n in tarfile.open(built["sdist"]).getnames() if "/" in n}
    for names in (wheel, sdist):
        assert {f"finetune_kit/recipes/{m}" for m in RECIPE_MODULES} <= names
        assert {f"finetune_kit/configs/{c}" for c in SHIPPED} | {"finetune_kit/recipes/keys.json"} <= names
        assert any(n.startswith("finetune_kit/metrics/") for n in names)


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed non-editable; the dependencies come from the test's environment
    through a .pth file placed after the venv's own site-packages (no network, no second torch)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--no-deps", "--no-index", "--quiet", str(built["wheel"])], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    own = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir() and Path(p) != own]
    (own / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")  # .pth files of those folders are not run
    return venv


def run_installed(venv: Path, cwd: Path, *command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ACCELERATE_USE_CPU="1", PATH=f"{venv / 'bin'}:{env['PATH']}")
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_wheel_lists_checks_and_trains_from_an_empty_folder(installed, tmp_path, tiny_model_dir):
    here = tmp_path / "elsewhere"
    here.mkdir()
    python = str(installed / "bin" / "python")
    where = run_installed(installed, here, python, "-c", "import finetune_kit; print(finetune_kit.__file__)")
    assert where.stdout.startswith(str(installed)), where  # the wheel's copy, not the checkout's

    listed = run_installed(installed, here, "finetune-kit", "recipes")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert all(name in listed.stdout for name in recipes.names()) and "--config sft_lora_smollm2" in listed.stdout

    demo = run_installed(installed, here, python, "-m", "finetune_kit.demo", "data", "--out", "data/generated/identity")
    assert demo.returncode == 0, demo.stderr[-2000:]
    check = run_installed(installed, here, "finetune-kit", "check", "--config", "sft_lora_smollm2")
    assert check.returncode in (0, 1), check.stderr[-2000:]  # 1: warnings (memory), never an error
    assert "config (sft): ok" in check.stdout and "every row valid" in check.stdout

    data = write_jsonl(here / "train.jsonl", chat_rows(8))
    base = {"recipe": "sft", "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True,
            "lora_r": 4, "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64, "save_strategy": "no",
            "report_to": "none", "report": False}
    config = write_config(here / "my_run.yaml", {**base, "output_dir": "out-cli"})  # named by its `recipe` key
    trained = run_installed(installed, here, "finetune-kit", "train", "--config", config)
    assert trained.returncode == 0, trained.stderr[-3000:]
    info = json.loads((here / "out-cli" / "run_info.json").read_text())
    assert info["recipe"] == "sft" and (here / "out-cli" / "adapter_model.safetensors").is_file()
    # The decisions made for keys left unset are recorded with their reasons; the resolved values in config.yaml.
    assert {"bf16", "packing", "use_liger_kernel", "activation_checkpointing"} <= set(info["decisions"])
    recorded = yaml.safe_load((here / "out-cli" / "config.yaml").read_text())
    assert all(recorded[k] == d["value"] for k, d in info["decisions"].items() if k in recorded)

    config = write_config(here / "accel.yaml", {**base, "output_dir": "out-accel"})
    launched = run_installed(installed, here, python, "-m", "accelerate.commands.launch", "--num_processes", "1",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "finetune_kit.recipes.sft", "--config", config)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (here / "out-accel" / "run_info.json").is_file()


THROWAWAY = textwrap.dedent('''
    """A recipe that exists only in this test: one module and one table row."""
    from dataclasses import dataclass, field
    from pathlib import Path

    from finetune_kit.config import parse_config


    @dataclass
    class EchoArguments:
        message: str = field(default="hello", metadata={"help": "What to write."})
        output_dir: str = field(default="echo-out", metadata={"help": "Where."})


    @dataclass
    class EchoConfig:
        task: EchoArguments


    def main(argv=None):
        cfg = parse_config(EchoConfig, argv)
        Path(cfg.task.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.task.output_dir) / "message.txt").write_text(cfg.task.message)
        return {"message": cfg.task.message}
''')


def test_a_new_table_row_is_all_the_cli_check_and_train_need(tmp_path, monkeypatch, capsys):
    (tmp_path / "throwaway_echo.py").write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    row = recipes.Recipe("echo", "writes a message (test only)", "throwaway_echo:EchoConfig", "decoder",
                         module="throwaway_echo")
    monkeypatch.setattr(recipes, "RECIPES", [*recipes.RECIPES, row])
    cli_main(["recipes"])
    assert "echo" in capsys.readouterr().out
    config = tmp_path / "whatever_name.yaml"
    config.write_text(f"recipe: echo\nmessage: hi there\noutput_dir: {tmp_path / 'out'}\n")
    with pytest.raises(SystemExit) as done:
        cli_main(["check", "--config", str(config)])
    assert done.value.code == 0 and "config (echo): ok" in capsys.readouterr().out
    cli_main(["train", "--config", str(config)])  # the recipe named by the config
    assert (tmp_path / "out" / "message.txt").read_text() == "hi there"
    cli_main(["train", "echo", "--config", str(config), "--message", "again"])
    assert (tmp_path / "out" / "message.txt").read_text() == "again"
    assert "echo" in recipes.for_family("decoder")  # and `inspect` offers it for decoder checkpoints


def test_a_config_names_its_recipe_and_other_recipes_refuse_it(tmp_path, capsys):
    config = write_config(tmp_path / "prefs.yaml", {"recipe": "dpo", "dataset_name": "d.jsonl", "output_dir": "o"})
    assert recipes.choose(None, ["--config", config]).name == "dpo"
    assert recipes.choose("sft", ["--config", config]).name == "sft"  # an explicit name wins the lookup ...
    with pytest.raises(SystemExit) as done:  # ... and the config itself then refuses the other recipe
        cli_main(["train", "sft", "--config", config])
    assert done.value.code == 2 and "is for recipe 'dpo'" in capsys.readouterr().err
    bad = write_config(tmp_path / "typo.yaml", {"recipe": "dop"})
    with pytest.raises(ConfigError, match="key 'recipe' must name a recipe"):
        recipes.choose(None, ["--config", bad])


def test_init_copies_a_shipped_config_and_never_overwrites(tmp_path, capsys):
    target = tmp_path / "mine.yaml"
    cli_main(["init", "dpo_lora_smollm2", str(target)])
    out = capsys.readouterr().out
    assert "model_name_or_path" in out and "dataset_name" in out  # the keys to edit first
    assert recipes.recipe_named_by(target) == "dpo"
    target.write_text("# my edits\n")
    with pytest.raises(SystemExit) as done:
        cli_main(["init", "dpo_lora_smollm2", str(target)])
    assert done.value.code == 2 and target.read_text() == "# my edits\n"
    with pytest.raises(SystemExit) as done:
        cli_main(["init", "no_such_config", str(tmp_path / "x.yaml")])
    assert done.value.code == 2 and not (tmp_path / "x.yaml").exists()


def _cli_value(key: str, config_type: type) -> list[str]:
    """A non-default command-line value for a key (its type's), so the refusal is not an argparse type error."""
    import dataclasses
    import typing

    from finetune_kit.config import config_parts

    for part in config_parts(config_type).values():
        for f in dataclasses.fields(part):
            if f.name == key:
                hint = str(typing.get_type_hints(part)[key])
                return [f"--{key}", "true" if "bool" in hint else "3" if "int" in hint else "0.5" if "float" in hint
                        else "{a: b}" if "dict" in hint else "x"]
    raise AssertionError(f"{key} is no key of {config_type.__name__}")


@pytest.mark.parametrize("row", recipes.RECIPES, ids=lambda r: r.name)
def test_keys_a_recipe_does_not_read_are_refused_by_name(row):
    """Every key the table says a recipe does not read is refused when set, never accepted and ignored (before any
    other check: the refusal needs no data and no model)."""
    import dataclasses

    from finetune_kit.config import config_parts, parse_config

    config_type = row.config_type()
    unread = list(row.unread)
    if row.training_reads is not None:  # our PPO loop: the scheduler, accumulation and trackers are not its own
        training = {f.name for f in dataclasses.fields(config_parts(config_type)["training"])}
        assert set(row.training_reads) <= training
        unread += ["lr_scheduler_type", "warmup_steps", "gradient_accumulation_steps", "eval_strategy"]
        with pytest.raises(ConfigError, match="report_to: tensorboard: the ppo recipe logs to the terminal"):
            parse_config(config_type, ["--dataset_name", "d", "--output_dir", "o", "--use_peft", "true",
                                       "--reward_functions", "m:f", "--max_steps", "2", "--report_to", "tensorboard"])
    for key in unread:
        with pytest.raises(ConfigError, match=f"key '{key}' does nothing in the {row.name} recipe"):
            parse_config(config_type, _cli_value(key, config_type))
    if row.unread or row.training_reads is not None:
        assert unread, row.name


def test_help_lists_recipes_and_a_recipe_shows_its_own_keys_first(capsys):
    cli_main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in recipes.names())
    cli_main(["train", "sft", "--help"])
    short = capsys.readouterr().out
    assert "LoRA and quantization:" in short and "--lora_r (int, default 16)" in short and "--dataset_name" in short
    assert "--learning_rate" in short and "--adam_beta2" not in short  # the trainer's long tail is behind --help-all
    cli_main(["train", "sft", "--help-all"])
    assert "--adam_beta2" in capsys.readouterr().out
    cli_main(["train", "text_classification", "--help"])
    assert "--dtype" not in capsys.readouterr().out  # a key the recipe refuses is not offered
    cli_main(["train", "ppo", "--help"])
    assert "--lr_scheduler_type" not in capsys.readouterr().out  # nor one its loop never reads
    for command in ("check", "tune"):
        cli_main([command, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: finetune-kit {command}")
    with pytest.raises(SystemExit) as done:
        cli_main(["--version"])
    assert done.value.code == 0 and "finetune-kit 0.1.0" in capsys.readouterr().out
