"""The correctness guards of tests/test_fast_paths.py, on the device, and the FSDP2 launch of the SFT recipe.

Each guard trains our SFT recipe (LoRA, SGD, no dropout, the same examples in the same order) in two or three shapes
that must learn the same thing, and reports the differences with the tolerance they must meet and `ok`:
- padded vs bfd-packed vs padding-free rows: the same per-token loss and LoRA update (sdpa, and flash attention
  where installed: its varlen kernels are what packing is for);
- gradient accumulation 1 x 8 vs 8 x 1: the same update (loss normalised over the accumulated batch's tokens);
- bf16 vs fp32: the bf16 loss within 1% of fp32's (tests/test_fast_paths.py states why its bounds are what they are).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# tests/test_fast_paths.py's bf16 bounds (LOSS_REL, UPDATE_TOL) for the 16-bit comparisons, 1% for bf16 vs fp32.
LOSS_REL, UPDATE_ATOL, UPDATE_RTOL, BF16_LOSS_REL = 2e-3, 3e-3, 1.6e-2, 1e-2


def _sft(model: str, data: Path, out: Path, **cfg) -> tuple[list[float], dict]:
    """Our SFT recipe in this process; its losses and its LoRA weights."""
    from safetensors.torch import load_file

    from finetune_kit import recipes

    base = {"model_name_or_path": model, "dataset_name": str(data), "output_dir": str(out), "use_peft": True,
            "lora_r": 4, "lora_dropout": 0.0, "learning_rate": 0.5, "optim": "sgd", "max_length": 1024,
            "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0, "logging_steps": 1,
            "report": False, "train_sampling_strategy": "sequential", "overwrite_output_dir": True, **cfg}
    config = out.with_suffix(".yaml")  # YAML, not flags: `max_length: null` has no command-line spelling
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    recipes.get("sft").load().main(["--config", str(config)])
    losses = [row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]
    return losses, load_file(out / "adapter_model.safetensors")


def _differences(a: dict, b: dict) -> dict:
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(b[k].float().abs().max().item() for k in b if "lora_B" in k)
    return {"update_max_abs_diff": worst, "lora_B_max_abs": scale,
            "update_ok": worst <= UPDATE_ATOL + UPDATE_RTOL * scale and scale > 1e-3}


def packed_equals_padded(model: str, data: Path, work: Path, bf16: bool) -> dict:
    from benchmarks.gpu.arms import flash_attention

    shapes = {"padded": {"packing": False}, "packed": {"packing": True, "packing_strategy": "bfd"},
              "padding_free": {"packing": False, "padding_free": True, "max_length": None}}  # trl: rows stay whole
    result = {}
    for attention in ["sdpa", *filter(None, [flash_attention()])]:
        runs = {name: _sft(model, data, work / f"{attention}-{name}", bf16=bf16, max_steps=1, attn_implementation=attention,
                           per_device_train_batch_size=8, **extra) for name, extra in shapes.items()}
        for name in ("packed", "padding_free"):
            loss, base = runs[name][0][0], runs["padded"][0][0]
            rel = abs(loss - base) / abs(base)
            result[f"{attention}/{name}"] = {"loss": loss, "padded_loss": base, "loss_rel_diff": rel,
                                             "loss_ok": rel <= LOSS_REL, **_differences(runs[name][1], runs["padded"][1])}
    result["ok"] = all(r["loss_ok"] and r["update_ok"] for r in result.values())
    return result


def accumulation_matches(model: str, data: Path, work: Path, bf16: bool) -> dict:
    one = _sft(model, data, work / "1x8", bf16=bf16, max_steps=1, per_device_train_batch_size=8,
               gradient_accumulation_steps=1)
    eight = _sft(model, data, work / "8x1", bf16=bf16, max_steps=1, per_device_train_batch_size=1,
                 gradient_accumulation_steps=8)
    result = {"losses_1x8": one[0], "losses_8x1": eight[0], **_differences(eight[1], one[1])}
    result["ok"] = result["update_ok"]
    return result


def bf16_close_to_fp32(model: str, data: Path, work: Path) -> dict:
    fp32 = _sft(model, data, work / "fp32", bf16=False, max_steps=1, per_device_train_batch_size=8)
    bf16 = _sft(model, data, work / "bf16", bf16=True, max_steps=1, per_device_train_batch_size=8)
    rel = [abs(a - b) / abs(b) for a, b in zip(bf16[0], fp32[0])]
    return {"losses_bf16": bf16[0], "losses_fp32": fp32[0], "loss_rel_diff": rel, "ok": max(rel) <= BF16_LOSS_REL}


# ---- FSDP2 through accelerate launch: a few steps, a sharded checkpoint, a resume from it ----

def fsdp2_launch(model: str, data: Path, work: Path, steps: int = 4) -> dict:
    """The SFT recipe (full fine-tuning) under `accelerate launch --config_file recipes/accelerate/fsdp2.yaml
    --num_processes 1`: `steps` steps with a sharded checkpoint half-way, then a copy of that checkpoint resumed in a
    second launch; the resumed losses must repeat the first run's."""
    config = {"model_name_or_path": model, "dataset_name": str(data), "max_steps": steps, "save_steps": steps // 2,
              "save_strategy": "steps", "logging_steps": 1, "per_device_train_batch_size": 2, "max_length": 256,
              "report_to": "none", "disable_tqdm": True, "seed": 0, "report": False, "overwrite_output_dir": True,
              "train_sampling_strategy": "sequential"}
    first, resumed = work / "first", work / "resumed"
    launched = [_launch({**config, "output_dir": str(first)}, work / "first.yaml")]
    half = f"checkpoint-{steps // 2}"
    if launched[0]["returncode"] == 0:
        resumed.mkdir(parents=True, exist_ok=True)
        shutil.copytree(first / half, resumed / half)
        launched.append(_launch({**config, "output_dir": str(resumed), "overwrite_output_dir": False,
                                 "resume_from_checkpoint": "latest"}, work / "resumed.yaml"))
    result = {"launches": launched}
    if len(launched) == 2 and launched[1]["returncode"] == 0:
        straight, again = _losses_by_step(first), _losses_by_step(resumed)
        later = [s for s in straight if s > steps // 2]
        result.update({"losses": straight, "resumed_losses": again,
                       "checkpoint_files": sorted(str(p.relative_to(first / half)) for p in (first / half).rglob("*")
                                                  if p.is_file())})
        result["sharded"] = any(name.endswith(".distcp") for name in result["checkpoint_files"])
        result["resume_matches"] = [again.get(s) for s in later] == [straight[s] for s in later]
        # On a CPU accelerate runs the FSDP config as plain data parallelism and saves one state dict (the dry run
        # checks the launch and the resume; tests/test_fsdp_cpu.py checks sharding); on a GPU the shards must exist.
        result["ok"] = result["resume_matches"] and (result["sharded"] or not torch.cuda.is_available())
    else:
        result["ok"] = False
    return result


def _launch(config: dict, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "1",
               "--main_process_port", str(29500 + os.getpid() % 500), "-m", "finetune_kit.recipes.sft",
               "--config", str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return {"command": " ".join(command[1:]), "returncode": done.returncode,
            "tail": (done.stdout[-1500:] + done.stderr[-2500:]) if done.returncode else done.stdout[-600:]}


def _losses_by_step(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row}
