"""Exact resume after SIGKILL, and resuming from the newest complete checkpoint when the last save was cut short."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from conftest import ROOT, chat_rows, check_and_train_refuse, run_recipe, write_config, write_jsonl
from finetune_kit.errors import UserError
from finetune_kit.runs import check_output_dir

# Trains with the recipes' default precision: `make test` runs this file under both bf16 decisions.
pytestmark = pytest.mark.precision

KILL_AT = 6  # mid-epoch: 4 steps per epoch, so step 6 is halfway through the second epoch

CHILD = textwrap.dedent("""
    import os, signal, sys
    from transformers import Trainer, TrainerCallback
    sys.path.insert(0, {root!r})
    from finetune_kit import recipes

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == {step}:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: as if the machine died

    original = Trainer.__init__
    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(KillAfterSave())
    Trainer.__init__ = patched
    recipes.get({recipe!r}).load().main(sys.argv[1:])
""")


def losses_by_step(out) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


def killed_then_resumed(tmp_path, python, recipe: str, cfg: dict) -> tuple[dict, dict]:
    full = tmp_path / "full"
    run_recipe(recipe, ["--config", write_config(tmp_path / "full.yaml", {**cfg, "output_dir": str(full)})])
    part = tmp_path / "part"
    config = write_config(tmp_path / "part.yaml", {**cfg, "output_dir": str(part)})
    child = subprocess.run([python, "-c", CHILD.format(root=str(ROOT), step=KILL_AT, recipe=recipe), "--config",
                            config], capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]  # killed by SIGKILL
    assert (part / f"checkpoint-{KILL_AT}").is_dir() and not (part / "run_info.json").exists()
    run_recipe(recipe, ["--config", config, "--resume_from_checkpoint", "latest"])
    return losses_by_step(full), losses_by_step(part)


def test_sft_resume_after_sigkill_repeats_the_same_losses(tmp_path, tiny_model_dir, python):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(32))
    cfg = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "use_peft": True, "lora_r": 8,
           "learning_rate": 1e-2, "per_device_train_batch_size": 8, "max_steps": 12, "save_steps": KILL_AT,
           "logging_steps": 1, "max_length": 64, "report_to": "none", "disable_tqdm": True, "seed": 0}
    full, resumed = killed_then_resumed(tmp_path, python, "sft", cfg)
    after = range(KILL_AT + 1, 13)
    assert [resumed[s] for s in after] == [full[s] for s in after]  # fp32 on CPU: bit-identical losses


def test_text_classification_resume_after_sigkill(tmp_path, tiny_bert_dir, python):
    rows = [{"text": f"the film was {w} overall", "label": "pos" if w in ("great", "fine") else "neg"}
            for w in ["great", "fine", "awful", "dull"] * 8]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = {"model_name_or_path": str(tiny_bert_dir), "dataset_name": str(data), "learning_rate": 3e-3,
           "per_device_train_batch_size": 8, "max_steps": 12, "save_steps": KILL_AT, "logging_steps": 1,
           "report_to": "none", "disable_tqdm": True, "seed": 0}
    full, resumed = killed_then_resumed(tmp_path, python, "text_classification", cfg)
    after = range(KILL_AT + 1, 13)
    assert [resumed[s] for s in after] == [full[s] for s in after]


def test_resume_skips_checkpoints_whose_save_was_cut_short(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(16))
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
        "use_peft": True, "per_device_train_batch_size": 8, "max_steps": 4, "save_steps": 2, "report_to": "none",
        "disable_tqdm": True})
    run_recipe("sft", ["--config", cfg])
    good = out / "checkpoint-4"
    # Simulate saves killed at different points: each copy of the newest checkpoint lacks what a kill would lose.
    cuts = {"checkpoint-6": lambda d: (d / "trainer_state.json").unlink(),
            "checkpoint-8": lambda d: (d / "trainer_state.json").write_text('{"global_step": 8, "log_hi'),
            "checkpoint-10": lambda d: [f.unlink() for f in d.glob("*.safetensors")]}
    for name, cut in cuts.items():
        shutil.copytree(good, out / name)
        cut(out / name)
    capsys.readouterr()
    assert check_output_dir(str(out), False, "latest") == str(good)
    err = capsys.readouterr().err
    assert "Skipping" in err and "checkpoint-10" in err and f"Resuming from {good}" in err
    with pytest.raises(UserError, match="checkpoint-8 cannot be resumed from: trainer_state.json is cut short"):
        check_output_dir(str(out), False, str(out / "checkpoint-8"))


def test_resume_with_other_lora_settings_is_refused_before_weights_load(tmp_path, tiny_model_dir, capsys):
    # Another rank / alpha / target set than the checkpoint's was a state_dict (or optimizer) traceback after the
    # model had loaded; check and train now name the key, and the run folder is unchanged.
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(16))
    out = tmp_path / "run"
    base = {"model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(out),
            "use_peft": True, "lora_r": 8, "lora_target_modules": ["q_proj", "v_proj"], "per_device_train_batch_size": 8,
            "max_steps": 2, "save_steps": 2, "report_to": "none", "disable_tqdm": True}
    run_recipe("sft", ["--config", write_config(tmp_path / "c.yaml", base)])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for change, message in (({"lora_r": 4}, "trained with lora_r 8, this config sets 4"),
                            ({"lora_target_modules": ["q_proj"]}, (r"trained on \['q_proj', 'v_proj'\], this config sets "
                                                                   r"lora_target_modules \['q_proj'\]"))):
        config = write_config(tmp_path / "resume.yaml", {**base, **change, "max_steps": 4,
                                                          "resume_from_checkpoint": "latest"})
        check_and_train_refuse("sft", ["--config", config], message, capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
