"""`finetune-kit export`: fold LoRA adapters into the base model and save a standalone checkpoint.

The export holds safetensors weights in the chosen dtype, the tokenizer with its chat template, the generation
config (for generative models), label names (for classifiers) and a model card naming base and adapter.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from finetune_kit.errors import UserError
from finetune_kit.models import load_for_inference, read_adapter_config

DTYPES = ("float32", "bfloat16", "float16")


def export_model(source: str, out_dir: str, dtype: str = "float32", overwrite: bool = False) -> Path:
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    out = Path(out_dir)
    src = Path(source).expanduser()
    if src.exists() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise UserError(f"--out {out} is the source run (or inside it); export to another folder.")
    if src.exists() and out.resolve() in src.resolve().parents:  # --overwrite would replace the folder holding it
        raise UserError(f"--out {out} holds the source {source}; export to another folder (nothing was changed).")
    if (out / "run_info.json").is_file():  # not even with --overwrite: an export never replaces a training run
        raise UserError(f"--out {out} holds a finished training run (run_info.json); export to another folder "
                        "(nothing was changed).")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (nothing was changed).")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; nothing was changed. Choose another folder or pass --overwrite.")
    model, tokenizer = load_for_inference(source, merge=True)
    model = model.to(getattr(torch, dtype))
    # Written whole into a staging folder beside `out`, then swapped in: a failed export leaves `out` as it was.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-", dir=out.parent))
    try:
        model.save_pretrained(staging)  # safetensors, config (with id2label for classifiers), generation config
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(source, dtype, model))
        old = out.parent / f".{out.name}.replaced-export" if out.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def model_card(source: str, dtype: str, model) -> str:
    src = Path(source)
    adapter = read_adapter_config(src) if src.is_dir() else None
    info_path = src / "run_info.json" if src.is_dir() else None
    info = json.loads(info_path.read_text()) if info_path and info_path.is_file() else {}
    lines = ["# Exported with finetune_kit", ""]
    if adapter:
        lines += [f"- base model: `{adapter['base_model_name_or_path']}`",
                  f"- adapter: `{source}` ({adapter.get('peft_type')}, r={adapter.get('r')}, "
                  f"alpha={adapter.get('lora_alpha')}), merged into the base weights"]
    else:
        lines.append(f"- source: `{source}`")
    lines.append(f"- dtype: {dtype}; parameters: {sum(p.numel() for p in model.parameters()):,}")
    if any("Classification" in a for a in model.config.architectures or []):
        lines.append(f"- labels: {', '.join(str(v) for v in model.config.id2label.values())}")
    if info:
        lines.append(f"- trained with recipe `{info.get('recipe')}`; final metrics: "
                     + ", ".join(f"{k}={v:.4g}" for k, v in info.get("metrics", {}).items()
                                 if isinstance(v, (int, float))))
    return "\n".join(lines) + "\n"
