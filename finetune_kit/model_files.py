"""A checkpoint folder's files, checked before any weights load: are the weights there and whole?"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from finetune_kit.errors import UserError

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
            except (ValueError, UnicodeDecodeError):
                return f"{path.name} has a damaged header"
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + length + end > size:
            return f"{path.name} is cut short ({size} bytes of {8 + length + end})"
    return None


def require_weights(name: str, resolved: str) -> None:
    """A full checkpoint folder's weights, checked before loading (adapter run folders have their own checks, in
    read_adapter_config and the adapter load)."""
    folder = Path(resolved)
    if folder.is_dir() and not (folder / "adapter_config.json").is_file() and (problem := weights_problem(folder)):
        raise UserError(f"model {name}: {problem}; copy or download the checkpoint again.")
