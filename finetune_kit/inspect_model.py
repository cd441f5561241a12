"""`finetune-kit inspect` and `finetune-kit tokenize`: what a checkpoint is, and how its tokenizer splits text.

`inspect` reads configs, safetensors headers and GGUF metadata, never the weights, so it answers in seconds.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

from finetune_kit import recipes
from finetune_kit.errors import UserError
from finetune_kit.model_files import require_gguf_header
from finetune_kit.models import EMBEDDED, embedded_path

VISION_TYPES = {"vit", "deit", "beit", "swin", "convnext", "dinov2", "mobilevit", "clip_vision_model", "siglip_vision_model",
                "timm_wrapper", "resnet", "efficientnet", "mobilenet_v2", "regnet"}
IMAGE_TEXT_TYPES = {"clip", "siglip", "siglip2"}  # dual encoders: image and text towers, a contrastive loss
FAMILY_HEADS = {
    "decoder": ["CausalLM (generation)", "SequenceClassification (reward model)"],
    "encoder": ["SequenceClassification", "TokenClassification", "QuestionAnswering", "MaskedLM"],
    "vision": ["ImageClassification"],
    "encoder-decoder": ["Seq2SeqLM"],
    "image-text": ["image and text towers (contrastive, zero-shot classification)"],
    "vision-language": ["ImageTextToText (text generated from images + text)"],
}


def is_vision_language(config) -> bool:
    """An image-text-to-text checkpoint (SmolVLM / Idefics3, LLaVA, Qwen2-VL, PaliGemma, ...), as transformers' own
    AutoModelForImageTextToText mapping lists them; a text-only class of such a family (ForCausalLM) stays a decoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    archs = " ".join(getattr(config, "architectures", None) or [])
    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and "CausalLM" not in archs


def family_of(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if config.model_type in IMAGE_TEXT_TYPES and hasattr(config, "text_config") and hasattr(config, "vision_config"):
        return "image-text"  # the whole CLIP / SigLIP; its vision tower alone (clip_vision_model) is "vision"
    if is_vision_language(config):
        return "vision-language"
    if config.model_type in VISION_TYPES:
        return "vision"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or config.model_type in {"llama", "gpt2", "mistral", "qwen2", "qwen3", "gemma", "phi3",
                                                     "smollm3", "gpt_neox", "falcon", "olmo2"}:
        return "decoder"
    return "encoder"


def safetensors_parameters(folder: Path) -> int | None:
    """Parameter count from the safetensors headers (8-byte length + JSON), without reading tensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def describe_gguf(path: Path) -> dict:
    from gguf import GGUFReader

    require_gguf_header(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - a cut-short or damaged file fails in the binary parser in any way
        raise UserError(f"{path}: gguf cannot read this file ({type(err).__name__}: {err}); it may be damaged or cut "
                        "short.") from None

    def field(name):
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    return {"source": str(path), "format": "gguf", "family": "decoder", "architecture": arch,
            "name": field("general.name"), "parameters": sum(int(prod(t.shape)) for t in reader.tensors),
            "size_on_disk": path.stat().st_size, "modality": "text",
            "quantization": sorted({t.tensor_type.name for t in reader.tensors}),
            "chat_template": field("tokenizer.chat_template") is not None,
            "context_length": field(f"{arch}.context_length"),
            "heads": FAMILY_HEADS["decoder"], "recipes": recipes.for_family("decoder"),
            "note": "trained after a one-time dequantization into safetensors (see finetune_kit.models)"}


def describe(source: str) -> dict:
    """A summary of a checkpoint: hub id, local folder, .gguf file, embedded name, or a run folder."""
    from transformers import AutoConfig

    path = embedded_path(source) if source in EMBEDDED else Path(source).expanduser()
    if source in EMBEDDED and path.suffix == ".pth":  # a legacy state dict: its converted (cached) folder
        from finetune_kit.models import resolve_checkpoint

        path = Path(resolve_checkpoint(source))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file not found: {source}")
        return describe_gguf(path)
    if source.startswith((".", "/", "~")) and not path.exists():
        raise UserError(f"model path not found: {source}")
    run = {}
    if (path / "adapter_config.json").is_file():
        adapter = json.loads((path / "adapter_config.json").read_text())
        run["adapter"] = {k: adapter.get(k) for k in ("peft_type", "task_type", "r", "lora_alpha", "target_modules",
                                                     "use_dora")}
        run["base_model"] = adapter.get("base_model_name_or_path")
        summary = describe(run["base_model"])
        summary.update(run, source=source, format=f"run folder: adapter on a {summary['format']} base",
                       size_on_disk=_size(path.iterdir()))
        return _with_training(summary, path)
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else source)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot inspect '{source}': {str(err).splitlines()[0]}") from None
    family = family_of(config)
    folder = path if path.is_dir() else None
    summary = {"source": source, "format": "transformers", "family": family,
               "architecture": (getattr(config, "architectures", None) or [config.model_type])[0],
               "model_type": config.model_type,
               "parameters": safetensors_parameters(folder) if folder else None,
               "size_on_disk": _size(folder.iterdir()) if folder else None,
               "modality": {"vision": "image", "image-text": "image + text"}.get(family, "text"),
               "heads": FAMILY_HEADS[family], "recipes": recipes.for_family(family)}
    if family == "vision-language":
        summary["modality"] = "image + text"
    if folder:
        tok = folder / "tokenizer_config.json"
        summary["tokenizer"] = json.loads(tok.read_text()).get("tokenizer_class") if tok.is_file() else None
        # transformers 5 keeps a multimodal processor's image settings in processor_config.json
        summary["image_processor"] = any((folder / name).is_file() for name in (
            "preprocessor_config.json", "processor_config.json")) or config.model_type == "timm_wrapper"
        summary["chat_template"] = (folder / "chat_template.jinja").is_file() or (
            tok.is_file() and "chat_template" in json.loads(tok.read_text()))
        if getattr(config, "id2label", None) and (folder / "config.json").is_file() and \
                "id2label" in json.loads((folder / "config.json").read_text()):
            summary["labels"] = list(config.id2label.values())
        _with_training(summary, folder)
    return summary


def _with_training(summary: dict, folder: Path) -> dict:
    """Add what a finetune_kit run folder records about its training."""
    info = folder / "run_info.json"
    if info.is_file():
        summary["training"] = {k: v for k, v in json.loads(info.read_text()).items() if k in ("recipe", "metrics")}
    return summary


def print_summary(summary: dict) -> None:
    for key, value in summary.items():
        if value is None:
            continue
        if key == "parameters":
            value = f"{value:,}"
        elif key == "size_on_disk":
            value = f"{value / 2**20:.1f} MiB"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        print(f"{key:>16}: {value}")


def tokenize_text(tokenizer, text: str, chat: bool = False) -> list[tuple[int, str, bool]]:
    """(id, token, is_special) for each token of `text`, or of `text` as a user turn rendered by the chat template."""
    if chat:
        if not tokenizer.chat_template:
            raise UserError("this tokenizer has no chat template; drop --chat.")
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]  # with the special tokens the model sees ([CLS]/[SEP], BOS, ...)
    special = set(tokenizer.all_special_ids)
    return [(i, tok, i in special) for i, tok in zip(ids, tokenizer.convert_ids_to_tokens(ids))]


def print_tokens(rows: list[tuple[int, str, bool]]) -> None:
    for pos, (token_id, token, special) in enumerate(rows):
        print(f"{pos:>5}  {token_id:>7}  {token!r}{'  (special)' if special else ''}")
    print(f"{len(rows)} tokens, {sum(s for *_, s in rows)} special")
