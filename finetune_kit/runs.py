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
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from finetune_kit.errors import UserError

RUN_INFO = "run_info.json"
PACKAGES = ("finetune-kit", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")


def check_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: str | None) -> str | None:
    """Fail early on a non-empty output_dir; return the checkpoint to resume from, if any.

    `resume_from_checkpoint` is a checkpoint folder, or true / latest for the newest one in output_dir.
    """
    out = Path(output_dir)
    if resume_from_checkpoint:
        return _checkpoint_to_resume(out, resume_from_checkpoint)
    if out.exists() and not out.is_dir():
        raise UserError(f"output_dir {out} exists and is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a finished run" if (out / RUN_INFO).is_file() else "files from an earlier run"
        raise UserError(
            f"output_dir {out} already holds {what}; nothing was changed. Choose another output_dir, continue it "
            "with --resume_from_checkpoint latest, or replace it with --overwrite_output_dir true."
        )
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete.

    Our recipes publish checkpoints by rename (finetune_kit.checkpoints), so this is a second line of defence for
    folders written by other tools: transformers writes trainer_state.json last, after weights, optimizer, scheduler
    and RNG states, so a missing or cut-short trainer_state.json marks a save that did not finish.
    """
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short (the save did not finish)"
    weights = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "adapter_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / name).is_file() for name in weights):
        return "no model or adapter weights"
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
    problem = checkpoint_problem(Path(resume))
    if problem:
        raise UserError(f"resume_from_checkpoint: {resume} cannot be resumed from: {problem}.")
    return resume


def clear_output_dir(output_dir: str) -> None:
    """Empty output_dir for --overwrite_output_dir, called only once data and model have loaded."""
    out = Path(output_dir)
    if out.is_dir():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def record_base_model(output_dir: str, model_name_or_path: str) -> None:
    """Point a saved adapter at the model reference the user gave (embedded name, hub id) instead of a cache path."""
    path = Path(output_dir) / "adapter_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        # A local folder is recorded absolute, so the run loads from any working directory.
        local = Path(model_name_or_path).expanduser()
        config["base_model_name_or_path"] = str(local.resolve()) if local.exists() else model_name_or_path
        _write_atomic(path, json.dumps(config, indent=2))


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
                    log_history: list[dict[str, Any]], report: bool = True) -> None:
    """Write config.yaml, log_history.json and run_info.json (its presence marks the run finished), then the report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    _write_atomic(out / "log_history.json", json.dumps(log_history, indent=1))
    info = {
        "recipe": recipe,
        "command": [sys.executable, *sys.argv],
        "git_revision": git_revision(),
        "versions": package_versions(),
        "metrics": metrics,
        "peak_memory_mb": peak_memory_mb(),
    }
    _write_atomic(out / RUN_INFO, json.dumps(info, indent=2, default=str))
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


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def finish_run(trainer, cfg, recipe: str, metrics: dict[str, Any]) -> None:
    """Save the model and everything that describes the run; only the main process writes.

    An adapter run also keeps its base config (label names, head size), so the adapter loads back onto the right
    head, and records the base model as the user named it.
    """
    from finetune_kit.config import config_to_dict

    args = trainer.args
    trainer.save_model(args.output_dir)  # model or adapter, plus the tokenizer / image processor
    if not trainer.is_world_process_zero():
        return
    if getattr(cfg.model, "use_peft", False):
        trainer.model.base_model.model.config.save_pretrained(args.output_dir)
        record_base_model(args.output_dir, cfg.model.model_name_or_path)
    _write_atomic(Path(args.output_dir) / "eval_results.json", json.dumps(metrics, indent=2, default=str))
    write_run_files(args.output_dir, config_to_dict(cfg), recipe, metrics, trainer.state.log_history, cfg.run.report)
