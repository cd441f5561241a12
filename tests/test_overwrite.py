"""--overwrite_output_dir never loses a finished run to a run that fails: the old contents come back byte for byte
when the new run fails before its first optimizer step, and are gone (no leftover) once a step succeeded."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from transformers import TrainerCallback

from conftest import chat_rows, run_recipe, write_config, write_jsonl
from finetune_kit.trainer_setup import driver_callbacks


def checksums(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


class FailAt(TrainerCallback):
    """Raises at a chosen point of the new run, as a crash there would."""

    def __init__(self, event: str):
        self.event = event

    def on_train_begin(self, args, state, control, **kwargs):
        if self.event == "train_begin":
            raise RuntimeError("killed at train begin")

    def on_step_begin(self, args, state, control, **kwargs):
        if self.event == "first_step":
            raise RuntimeError("killed in the first step")


@pytest.fixture
def finished(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "my-notes.txt").write_text("written by hand")
    return run


def config(tmp_path, model_dir, run, **extra):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    cfg = {"model_name_or_path": str(model_dir), "dataset_name": str(data), "output_dir": str(run), "use_peft": True,
           "lora_r": 4, "max_steps": 2, "per_device_train_batch_size": 4, "max_length": 64, "save_strategy": "no",
           "report_to": "none", "report": False, "overwrite_output_dir": True, **extra}
    return ["--config", write_config(tmp_path / "c.yaml", cfg)]


@pytest.mark.parametrize("event", ["train_begin", "first_step"])
def test_a_finished_run_survives_a_replacement_that_fails_before_its_first_step(tmp_path, tiny_model_dir, finished,
                                                                              event):
    before = checksums(finished)
    with driver_callbacks(FailAt(event)), pytest.raises(RuntimeError, match="killed"):
        run_recipe("sft", config(tmp_path, tiny_model_dir, finished))
    assert checksums(finished) == before
    assert not (finished.parent / f".{finished.name}.replaced").exists()


def test_a_replacement_that_trains_replaces_the_run_and_leaves_nothing_aside(tmp_path, tiny_model_dir, finished):
    old_adapter = (finished / "adapter_model.safetensors").read_bytes()
    run_recipe("sft", config(tmp_path, tiny_model_dir, finished))
    assert not (finished / "my-notes.txt").exists()  # the old contents went once the first step succeeded
    assert (finished / "adapter_model.safetensors").read_bytes() != old_adapter
    assert (finished / "run_info.json").is_file()
    assert not (finished.parent / f".{finished.name}.replaced").exists()


def test_a_failure_the_config_checks_catch_touches_nothing(tmp_path, tiny_model_dir, finished):
    from finetune_kit.errors import ConfigError

    before = checksums(finished)
    with pytest.raises(ConfigError, match="lora_dropout"):
        run_recipe("sft", config(tmp_path, tiny_model_dir, finished, lora_dropout=1.5))
    assert checksums(finished) == before


KILLER = """
import os, signal, sys
from transformers import TrainerCallback
sys.path.insert(0, {tests!r})
from conftest import run_recipe
from finetune_kit.trainer_setup import driver_callbacks

class Kill(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handler: as if the machine died

with driver_callbacks(Kill()):
    run_recipe("sft", sys.argv[1:])
"""


def test_a_replacement_killed_before_its_first_step_is_undone_by_the_next_command(tmp_path, tiny_model_dir, finished):
    import subprocess
    import sys

    from conftest import ROOT
    from finetune_kit.runs import check_output_dir

    before = checksums(finished)
    killed = subprocess.run([sys.executable, "-c", KILLER.format(tests=str(ROOT / "tests")),
                             *config(tmp_path, tiny_model_dir, finished)], capture_output=True, timeout=300)
    assert killed.returncode == -9
    aside = finished.parent / f".{finished.name}.replaced"
    assert aside.is_dir() and checksums(aside) == before  # nothing lost: the old run waits beside the folder
    check_output_dir(str(finished), overwrite=True, resume_from_checkpoint=None)  # what train and check call first
    assert checksums(finished) == before and not aside.exists()


def test_an_immutable_finished_run_is_refused_untouched(tmp_path, tiny_model_dir, finished):
    """chattr +i: even root cannot write there; the run is refused before anything loads, the folder unchanged."""
    import subprocess

    from finetune_kit.errors import UserError

    if subprocess.run(["chattr", "+i", str(finished)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE)")
    try:
        before = checksums(finished)
        with pytest.raises(UserError, match=r"is not a writable folder"):
            run_recipe("sft", config(tmp_path, tiny_model_dir, finished))
        assert checksums(finished) == before
    finally:
        subprocess.run(["chattr", "-i", str(finished)], check=True)
