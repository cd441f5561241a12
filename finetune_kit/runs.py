"""Run folders: refuse to clobber finished work, find checkpoints to resume, record what made the run.

A finished run holds `run_info.json`; a run folder also keeps the resolved config (`config.yaml`), package
versions and the git revision, so the folder alone is enough to reproduce the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from finetune_kit.errors import UserError
from finetune_kit.files import write_atomic

RUN_INFO = "run_info.json"
PACKAGES = ("finetune-kit", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")


def check_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: str | None) -> str | None:
    """Fail early on a non-empty output_dir; return the checkpoint to resume from, if any.

    `resume_from_checkpoint` is a checkpoint folder, or true / latest for the newest one in output_dir.
    """
    out = Path(output_dir)
    aside = out.parent / REPLACED.format(name=out.name)
    # A replacement killed before its first step (after it, the set-aside run is deleted); the main process restores.
    if aside.is_dir() and os.environ.get("RANK", "0") == "0":
        restore(output_dir, aside, why="an --overwrite_output_dir run was interrupted before its first step")
    if resume_from_checkpoint:
        return _checkpoint_to_resume(out, resume_from_checkpoint)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} exists and is a file, not a folder.")
    _require_writable(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a finished run" if (out / RUN_INFO).is_file() else "files from an earlier run"
        raise UserError(
            f"output_dir {out} already holds {what}; nothing was changed. Choose another output_dir, continue it "
            "with --resume_from_checkpoint latest, or replace it with --overwrite_output_dir true."
        )
    return None


def _require_writable(out: Path) -> None:
    """The output folder (or the nearest folder that exists above it) must take new files: checked before any work."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir {out}: {existing} is not a writable folder; choose another output_dir.")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete.

    Our recipes publish checkpoints by rename (finetune_kit.checkpoints), so this is a second line of defence for
    folders written by other tools: transformers writes trainer_state.json last, after weights, optimizer, scheduler
    and RNG states, so a missing or cut-short trainer_state.json marks a save that did not finish.
    """
    import zipfile

    from finetune_kit.model_files import weights_problem

    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        values = json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short (the save did not finish)"
    if not isinstance(values, dict) or not isinstance(values.get("global_step"), int):
        return "trainer_state.json holds no global_step (not a trainer's state)"
    weights = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / name).is_file() for name in weights):
        return "no model or adapter weights"
    if problem := weights_problem(folder):
        return problem
    # What the Trainer loads on resume, saved by torch.save: a zip archive, whose end record a cut or damaged file
    # lacks (read without torch, so the preflight can say it).
    for path in [*(folder / n for n in ("optimizer.pt", "scheduler.pt", "scaler.pt")), *folder.glob("rng_state*.pth")]:
        if path.is_file() and not zipfile.is_zipfile(path):
            return f"{path.name} is damaged or cut short"
    return None


def newest_complete_checkpoint(out: Path, report: bool = False) -> Path | None:
    """The highest-step checkpoint-* folder whose save finished; with `report`, say which ones were skipped."""
    checkpoints = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                         key=lambda p: int(p.name[11:]), reverse=True) if out.is_dir() else []
    for folder in checkpoints:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if report:
            print(f"Skipping {folder}: {problem}", file=sys.stderr)
    return None


def _checkpoint_to_resume(out: Path, resume: str) -> str:
    if resume.lower() in ("true", "latest", "last"):
        folder = newest_complete_checkpoint(out, report=True)
        if folder is None:
            raise UserError(f"resume_from_checkpoint: no complete checkpoint-* folder in {out} to resume from.")
        print(f"Resuming from {folder}", file=sys.stderr)
        return str(folder)
    if not Path(resume).is_dir():
        raise UserError(f"resume_from_checkpoint: {resume} is not a folder (give a checkpoint-N folder, or latest for "
                        f"the newest one in {out}).")
    problem = checkpoint_problem(Path(resume))
    if problem:
        raise UserError(f"resume_from_checkpoint: {resume} cannot be resumed from: {problem}.")
    return resume


def require_checkpoint_fits(checkpoint: str, model) -> None:
    """Resuming loads the checkpoint's adapter and optimizer state into the model this config builds: another rank,
    alpha, DoRA setting or set of target modules cannot load (a state_dict or optimizer traceback once the model had
    loaded). Checked before any weights load; all-linear is resolved by peft against the model, so not compared."""
    from finetune_kit.model_files import read_adapter_config

    adapter = read_adapter_config(Path(checkpoint))
    if adapter is None or not getattr(model, "use_peft", False):
        return
    for key, saved in (("lora_r", adapter.get("r")), ("lora_alpha", adapter.get("lora_alpha")),
                       ("use_dora", adapter.get("use_dora"))):
        value = getattr(model, key, None)
        if saved is not None and value is not None and value != saved:
            raise UserError(f"resume_from_checkpoint {checkpoint}: its adapter was trained with {key} {saved}, this "
                            f"config sets {value}; resume with the settings the run started with (its config.yaml), "
                            "or start a new run.")
    targets, saved = getattr(model, "lora_target_modules", None), adapter.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    # A saved string is peft's regex form: not compared.
    if targets and "all-linear" not in targets and isinstance(saved, list) and set(targets) != set(saved):
        raise UserError(f"resume_from_checkpoint {checkpoint}: its adapter was trained on {sorted(set(saved))}, this "
                        f"config sets lora_target_modules {sorted(targets)}; resume with the settings the run started "
                        "with (its config.yaml), or start a new run.")


# --overwrite_output_dir never destroys a finished run before the new one has proved it can train: its contents are
# moved into a hidden sibling folder once the trainer is built, restored if the new run fails before its first
# optimizer step, and deleted after that step (trainer_setup.prepare_trainer). A process killed in between leaves
# them in that folder; the next run or check on the same output_dir (check_output_dir) puts them back first.
REPLACED = ".{name}.replaced"


def set_aside(output_dir: str) -> Path | None:
    """Move the contents of output_dir into a hidden sibling folder; returns it (None: nothing to keep)."""
    out = Path(output_dir)
    if not out.is_dir() or not any(out.iterdir()):
        return None
    aside = out.parent / REPLACED.format(name=out.name)
    aside.mkdir()  # check_output_dir restored any leftover of a killed replacement before this run started
    for child in out.iterdir():
        child.rename(aside / child.name)
    return aside


def restore(output_dir: str, aside: Path, why: str = "the run failed before its first step") -> None:
    """Put the set-aside contents back, removing what the failed run wrote in their place."""
    out = Path(output_dir)
    for child in list(out.iterdir()) if out.is_dir() else []:
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for child in aside.iterdir():
        child.rename(out / child.name)
    aside.rmdir()
    print(f"{why}: {out} is restored as it was", file=sys.stderr)


class Replacement:
    """--overwrite_output_dir: the old contents of output_dir, set aside (when `enabled`) until the new run's first
    optimizer step. Used as a context around training: an exception before `first_step_done()` restores them."""

    def __init__(self, output_dir: str, enabled: bool):
        self.output_dir = output_dir
        self.aside = set_aside(output_dir) if enabled else None

    def first_step_done(self) -> None:  # the new run can train: the old one goes
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def __enter__(self) -> Replacement:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and self.aside is not None:  # failed before its first step: the old one comes back
            restore(self.output_dir, self.aside)
            self.aside = None


def record_base_model(output_dir: str, model_name_or_path: str) -> None:
    """Point a saved adapter at the model reference the user gave (embedded name, hub id) instead of a cache path."""
    path = Path(output_dir) / "adapter_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        # A local folder is recorded absolute, so the run loads from any working directory.
        local = Path(model_name_or_path).expanduser()
        config["base_model_name_or_path"] = str(local.resolve()) if local.exists() else model_name_or_path
        write_atomic(path, json.dumps(config, indent=2))


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_files(output_dir: str, config: dict[str, Any], recipe: str, metrics: dict[str, Any],
                    log_history: list[dict[str, Any]], report: bool = True, decisions=None) -> None:
    """Write config.yaml, log_history.json and run_info.json (its presence marks the run finished), then the report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_atomic(out / "log_history.json", json.dumps(log_history, indent=1))
    info = {
        "recipe": recipe,
        "command": [sys.executable, *sys.argv],
        "git_revision": git_revision(),
        "versions": package_versions(),
        "metrics": metrics,
        "decisions": decisions.record() if decisions is not None else {},
        "peak_memory_mb": peak_memory_mb(),
    }
    write_atomic(out / RUN_INFO, json.dumps(info, indent=2, default=str))
    if report:
        from finetune_kit.report import write_report

        try:
            print(f"Run report: {write_report(out)}", file=sys.stderr)
        except Exception as err:  # noqa: BLE001 - the run is finished and saved; a plot must not fail it
            print(f"Run report not written ({type(err).__name__}: {err}); try `finetune-kit report {out}`.",
                  file=sys.stderr)


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory allocated, on a GPU), in MiB."""
    import resource

    import torch

    peak = {"rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux reports KiB
    if torch.cuda.is_available():
        peak["cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def finish_run(trainer, cfg, recipe: str, metrics: dict[str, Any], decisions=None) -> None:
    """Save the model and everything that describes the run; only the main process writes.

    An adapter run also keeps its base config (label names, head size), so the adapter loads back onto the right
    head, and records the base model as the user named it. The trainer's model card (README.md), eval_results.json,
    config.yaml, run_info.json (with the decisions made for the user) and the report follow. Our PPO loop has the
    same methods as a transformers Trainer for this (save_model, is_world_process_zero, create_model_card, state).
    """
    from finetune_kit.config import config_to_dict

    args = trainer.args
    trainer.save_model(args.output_dir)  # model or adapter, plus the tokenizer / image processor
    if not trainer.is_world_process_zero():
        return
    if getattr(cfg.model, "use_peft", False):
        config = getattr(trainer, "peft_model", trainer.model).base_model.model.config
        if decisions is not None and "dtype" in decisions.record():
            # A bf16 base chosen for training speed on this CPU (hardware.fast_path_decisions) is not what the run
            # is: inference and export load the base in fp32, as its checkpoint holds it, under the fp32 adapters.
            import copy

            import torch

            config = copy.deepcopy(config)
            config.dtype = torch.float32
        config.save_pretrained(args.output_dir)
        record_base_model(args.output_dir, cfg.model.model_name_or_path)
    trainer.create_model_card(model_name=Path(args.output_dir).name)
    write_atomic(Path(args.output_dir) / "eval_results.json", json.dumps(metrics, indent=2, default=str))
    write_run_files(args.output_dir, config_to_dict(cfg), recipe, metrics, trainer.state.log_history, cfg.run.report,
                    decisions)
