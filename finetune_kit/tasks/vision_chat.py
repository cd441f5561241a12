"""Vision-language SFT helpers: image + chat rows read and checked, the processor, the max_length check on image
tokens, the model and its LoRA targets.

A row is trl's vision format: `messages` whose content holds `{"type": "image"}` and `{"type": "text", "text": ...}`
parts, and `images`, the image files in placeholder order (paths relative to the data file). The LLaVA / ShareGPT
shape is read too: `conversations` of `from` / `value` turns (or string contents) with `<image>` in the text, and
`image` (one path) or `images`. A row with images but no placeholder at all gets them before its first user text, as
trl places them. Nothing here imports torch or datasets at module level: the preflight runs `chat_rows` first.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune_kit.data.formats import SHAREGPT_ROLES, apply_column_mapping, require_mapped_columns
from finetune_kit.decisions import Decision
from finetune_kit.errors import DataError, UserError

PLACEHOLDER = "<image>"  # LLaVA's, and SmolVLM's / Idefics3's image token: in text it always means an image
ROLES = {"system", "user", "assistant"}
IMAGE_PAYLOADS = ("image", "path", "url")
LABELS = {"train": "training", "validation": "validation"}  # how messages name the rows of each split


def text_parts(text: str) -> list[dict]:
    """A text with `<image>` placeholders as content parts, in order."""
    pieces = re.split(f"({re.escape(PLACEHOLDER)})", text)
    return [{"type": "image"} if p == PLACEHOLDER else {"type": "text", "text": p} for p in pieces if p]


def content_parts(content, spot: str) -> list[dict]:
    """One turn's content as parts; a part that is neither text nor an image placeholder is named."""
    if isinstance(content, str):
        return text_parts(content)
    if not isinstance(content, list):
        raise DataError(f"{spot}.content must be text or a list of parts, got {type(content).__name__}.")
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            if any(part.get(key) is not None for key in IMAGE_PAYLOADS):
                raise DataError(f"{spot}.content[{i}]: put image paths in the row's 'images' list (in placeholder "
                                "order); a part holds only {\"type\": \"image\"}.")
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts += text_parts(part["text"])
        else:
            raise DataError(f"{spot}.content[{i}] must be {{\"type\": \"text\", \"text\": ...}} or "
                            f"{{\"type\": \"image\"}}, got {part!r:.80}.")
    return parts


def turns_of(row: dict, where: str) -> list[dict]:
    """The conversation as messages with structured content: from `messages` or ShareGPT `conversations`."""
    field = "messages" if "messages" in row else "conversations" if "conversations" in row else None
    if field is None:
        raise DataError(f"{where}: missing field 'messages' (turns of role and content, images as {{\"type\": "
                        "\"image\"}} parts) or 'conversations' (ShareGPT / LLaVA: from and value, <image> in the text).")
    turns = row[field]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of turns.")
    messages = []
    for i, turn in enumerate(turns):
        spot = f"{where}: {field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{spot} must be an object with role and content.")
        role, content = (turn.get("role"), turn.get("content")) if "role" in turn else \
            (SHAREGPT_ROLES.get(turn.get("from")), turn.get("value"))
        if role not in ROLES:
            raise DataError(f"{spot}: role {turn.get('role', turn.get('from'))!r} is not one of system, user, "
                            "assistant (ShareGPT: system, human, gpt).")
        messages.append({"role": role, "content": content_parts(content, spot)})
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}' ends with a '{messages[-1]['role']}' turn, not an assistant turn, "
                        "so there is nothing to learn from it.")
    return messages


def images_of(row: dict, where: str, folder: Path | None) -> list:
    """The row's images in order: paths (relative ones resolved against the data file's folder) or PIL images."""
    value = row.get("images", row.get("image"))
    values = [] if value is None else value if isinstance(value, list) else [value]
    images = []
    for i, image in enumerate(values):
        if isinstance(image, str):
            path = Path(image).expanduser()
            images.append(str(path if path.is_absolute() or folder is None else folder / path))
        elif hasattr(image, "getbands"):  # a PIL image: a hub dataset's Image feature, already decoded
            images.append(image)
        else:
            raise DataError(f"{where}: images[{i}] must be a path to an image file, got {type(image).__name__}.")
    return images


def normalise_row(row: dict, where: str, folder: Path | None = None) -> dict:
    """{messages, images} in trl's vision shape; placeholders and images must pair up."""
    messages, images = turns_of(row, where), images_of(row, where, folder)
    placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if placeholders == 0 and images:  # trl's rule for rows without placeholders: images before the first user text
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise DataError(f"{where}: {len(images)} image(s) but no user turn to put them in.")
        first["content"] = [{"type": "image"} for _ in images] + first["content"]
    elif placeholders != len(images):
        raise DataError(f"{where}: {placeholders} image placeholder(s) in the conversation but {len(images)} image(s) "
                        "in 'images'; they pair up in order: add or remove placeholders or images.")
    return {"messages": messages, "images": images}


def open_images(where: str, row: dict) -> None:
    """Decode every image file of a row now: a missing file or one that is not an image stops the run here, named."""
    from finetune_kit.tasks.images import check_images

    for i, image in enumerate(row["images"]):
        if isinstance(image, str):
            if not Path(image).is_file():
                raise DataError(f"{where}: images[{i}]: file not found: {image} (relative paths are read from the "
                                "data file's folder).")
            check_images([(f"{where}: images[{i}]", {"image": image})])


def chat_splits(cfg) -> dict[str, list[tuple[str, dict]]]:
    """chat_rows, with validation rows split off the training rows when eval_split_ratio asks: by the sft_vision recipe
    and the preflight (recipe table `data_check`), so `check` refuses a ratio the rows cannot meet, as training would."""
    from finetune_kit.data import split_off_validation

    return split_off_validation(chat_rows(cfg), cfg)


def chat_rows(cfg) -> dict[str, list[tuple[str, dict]]]:
    """Every training and validation row as (where, {messages, images}), every image decoded, before any model loads.
    The recipe and the preflight (recipe table `data_check`) both call it. skip_invalid_rows drops bad rows (counted)."""
    from finetune_kit.data.readers import is_local, read_rows

    out = {}
    for split, source in (("train", cfg.data.dataset_name), ("validation", cfg.data.eval_dataset_name)):
        if not source:
            continue
        path = Path(source).expanduser()
        folder = path if path.is_dir() else path.parent if is_local(source) else None
        kept, problems = [], []
        rows = list(read_rows(source, cfg.data.dataset_train_split if split == "train" else split,
                              cfg.data.dataset_config))
        require_mapped_columns(rows, cfg.data.column_mapping, source)  # a typo, not every row's own problem
        for where, row in rows:
            try:
                chat = normalise_row(apply_column_mapping(row, cfg.data.column_mapping), where, folder)
                open_images(where, chat)
                kept.append((where, chat))
            except DataError as err:
                if not cfg.data.skip_invalid_rows:
                    raise
                problems.append(str(err))
        if problems:
            print(f"{source}: skipped {len(problems)} of {len(problems) + len(kept)} rows (skip_invalid_rows); "
                  f"first: {problems[0]}")
        if not kept:
            raise DataError(f"{source}: no valid rows left; first problem: {problems[0]}")
        out[split] = kept
    return out


def load_processor(model_args, args):
    """The checkpoint's AutoProcessor (tokenizer, image processor, chat template), chat_template_path applied; a
    checkpoint without one (a text-only model) is named."""
    from transformers import AutoProcessor, ProcessorMixin

    from finetune_kit.models import _hub_error, resolve_checkpoint

    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    try:
        processor = AutoProcessor.from_pretrained(resolve_checkpoint(source), revision=model_args.model_revision,
                                                  trust_remote_code=args.trust_remote_code)
    except OSError as err:
        raise _hub_error(source, err) from None
    if not isinstance(processor, ProcessorMixin) or not hasattr(processor, "image_processor"):
        raise UserError(f"{source} has no image processor: sft_vision needs a vision-language checkpoint "
                        "(`finetune-kit inspect` names the recipes that fit a checkpoint; sft trains text models).")
    if args.chat_template_path:
        template = Path(args.chat_template_path)
        if not template.is_file():
            raise UserError(f"chat_template_path: file not found: {args.chat_template_path}")
        processor.chat_template = template.read_text()
        args.chat_template_path = None  # applied here, so trl must not apply it again
    if not processor.chat_template:
        raise UserError(f"{source}'s processor has no chat template, so conversations cannot be rendered; set "
                        "chat_template_path to a .jinja file.")
    return processor


def training_template(processor) -> str | None:
    """The template trl renders with for loss on answers only: None when the processor's own has {% generation %}
    markers; UserError when trl has no training version of it (what trl would raise after the model loads)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(processor.chat_template):
        return None
    try:
        return get_training_chat_template(processor)
    except ValueError:
        raise UserError("assistant_only_loss: the chat template has no {% generation %} markers and trl has no "
                        "training version of it; set chat_template_path to a template with markers around the "
                        "assistant turns, or assistant_only_loss: false.") from None


def answers_only(args, processor) -> Decision | None:
    """assistant_only_loss where left unset: on when trl can mask the prompt with this chat template."""
    if args.assistant_only_loss is not None:
        return None
    try:
        training_template(processor)
    except UserError:
        return Decision("assistant_only_loss", False, "the chat template has no generation markers and trl has no "
                        "training version of it: the loss covers the prompt and its image tokens too")
    return Decision("assistant_only_loss", True, "the chat template lets trl mask the prompt (its image tokens "
                    "included): loss on the answers only")


def image_token_id(processor) -> int | None:
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return token_id


def encode(processor, row: dict, template: str | None, masks: bool, max_length: int | None = None) -> dict:
    """One row as trl's vision collator encodes it (DataCollatorForVisionLanguageModeling, trl 1.16): the messages
    with their images put in, rendered and tokenized by the processor, which expands each image into its tokens and
    then cuts at max_length (keep_start)."""
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(row["messages"], images=row["images"])
    kwargs = {"truncation": max_length is not None, "max_length": max_length, "add_special_tokens": False}
    out = processor.apply_chat_template([messages], chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=masks, processor_kwargs=kwargs)
    return {"input_ids": list(out["input_ids"][0]), "assistant_masks": list(out["assistant_masks"][0]) if masks else None}


def cut_kind(processor, row: dict, template: str | None, masks: bool, max_length: int | None) -> tuple[int, str | None]:
    """(tokens, what max_length does to the row): None (fits), "text" (cut after its image tokens), "answer" (cut
    before any answer token), "image" (cut inside its image tokens: the processor raises, or the model would get
    fewer image tokens than image features; either stops training at the row's batch)."""
    full = encode(processor, row, template, masks)
    n = len(full["input_ids"])
    if not max_length or n <= max_length:
        return n, None
    image_id = image_token_id(processor)
    try:
        cut = encode(processor, row, template, masks, max_length)
    except (ValueError, TypeError):  # transformers 5: a ValueError (token count check), or Idefics3's TypeError
        return n, "image"
    if image_id is None:  # no image token to count: any cut of a row with images is refused
        lost = bool(row["images"])
    else:
        lost = cut["input_ids"].count(image_id) < full["input_ids"].count(image_id)
    if lost:
        return n, "image"
    return n, "answer" if masks and not any(full["assistant_masks"][:max_length]) else "text"


def within_max_length(dataset, wheres: list[str], processor, args, skip: bool, label: str):
    """The rows trl's collator can encode: a row whose image tokens max_length would cut is a `DataError` naming it
    (skip_invalid_rows: dropped, counted); rows cut after their image tokens are counted. Returns (kept dataset,
    lengths, count of cut rows, count of rows left with no answer token)."""
    masks = bool(args.assistant_only_loss)
    template = training_template(processor) if masks else None
    lengths, image_cut, counts = [], [], {"text": 0, "answer": 0}
    for i in range(len(dataset)):
        n, kind = cut_kind(processor, dataset[i], template, masks, args.max_length)
        lengths.append(n)
        if kind == "image":
            image_cut.append(i)
        elif kind:
            counts[kind] += 1
    if image_cut and not skip:
        first = image_cut[0]
        raise DataError(f"{wheres[first]}: {lengths[first]} tokens once its images are expanded into image tokens; "
                        f"max_length={args.max_length} would cut inside them and training would crash at its batch "
                        f"({len(image_cut)} of {len(dataset)} {label} rows are so). Raise max_length to "
                        f"{max(lengths[i] for i in image_cut)}, use smaller images (fewer image tokens), or shorten "
                        "the text before the image; skip_invalid_rows: true drops such rows.")
    if len(image_cut) == len(dataset):
        raise DataError(f"every {label} row's image tokens would be cut at max_length={args.max_length} (the first: "
                        f"{wheres[0]}); raise it to {max(lengths)}.")
    if image_cut:
        print(f"{label}: dropped {len(image_cut)} of {len(dataset)} rows whose image tokens max_length="
              f"{args.max_length} would cut (skip_invalid_rows)")
        dropped = set(image_cut)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])
        lengths = [n for i, n in enumerate(lengths) if i not in dropped]
    return dataset, lengths, counts["text"] + counts["answer"], counts["answer"]


def to_dataset(rows: list[tuple[str, dict]]):
    """A datasets.Dataset of {messages, images}; image paths are decoded to PIL images as rows are read (the
    processor gets PIL images: transformers' own path loading needs torchvision's compiled ops)."""
    import datasets

    features = datasets.Dataset.from_list([{"messages": row["messages"]} for _, row in rows]).features
    features["images"] = datasets.List(datasets.Image())  # given, not cast: no progress bar for a cast
    return datasets.Dataset.from_list([row for _, row in rows], features=features)


def cut_warnings(label: str, total: int, cut: int, no_answer: int, max_length: int | None) -> list[str]:
    out = [(f"{cut} of {total} {label} rows are longer than max_length={max_length} and will be truncated (after "
            "their image tokens).")] if cut else []
    if no_answer:
        out.append(f"{no_answer} of {total} {label} rows keep no answer token within max_length={max_length}: they "
                   "train nothing.")
    return out


def check_lengths(cfg, tokenizer=None) -> list[str]:
    """`finetune-kit check` (recipe table `length_check`): every row encoded by the processor as training will, the
    refusal train would give for a row whose image tokens max_length cuts, counts of the rows it cuts otherwise."""
    import statistics

    rows = chat_rows(cfg)
    processor = load_processor(cfg.model, cfg.training)
    decision = answers_only(cfg.training, processor)
    if decision:
        print(f"decision: {decision}")
        cfg.training.assistant_only_loss = decision.value
    warnings = []
    for name, part in rows.items():
        label, dataset = LABELS[name], to_dataset(part)
        _, lengths, cut, no_answer = within_max_length(dataset, [w for w, _ in part], processor, cfg.training,
                                                       cfg.data.skip_invalid_rows, label)
        print(f"{label}: {len(part)} rows, {sum(len(r['images']) for _, r in part)} images; tokens per row (image "
              f"tokens included): min {min(lengths)}, median {int(statistics.median(lengths))}, max {max(lengths)}")
        warnings += cut_warnings(label, len(lengths), cut, no_answer, cfg.training.max_length)
    return warnings


def load_model(model_args, args):
    """The image-text-to-text model (quantized as asked, an adapter run merged into its base): models.load_model."""
    from transformers import AutoModelForImageTextToText

    from finetune_kit.models import load_model as load

    try:
        return load(AutoModelForImageTextToText, _without_peft_check(model_args), args.trust_remote_code)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise UserError(f"{model_args.model_name_or_path} is not an image-text-to-text model (SmolVLM, Idefics3, "
                        "LLaVA, Qwen2-VL, PaliGemma, ...); sft_vision needs one (`finetune-kit inspect` names the "
                        "recipes that fit a checkpoint).") from None


def _without_peft_check(model_args):
    """models.load_model checks LoRA targets on a causal-LM skeleton, which a VLM config does not build; peft checks
    them on the real model instead (tasks/vision_chat.lora_targets chooses them from it)."""
    import dataclasses

    return dataclasses.replace(model_args, use_peft=False)


def lora_targets(model, model_args, user: set[str]) -> Decision | None:
    """lora_target_modules where left unset: every linear layer of the language model, as one regex over full module
    names. The vision tower stays as pretrained: it was trained contrastively on far more images than a fine-tuning
    set holds, and adapting it to a few thousand images mostly costs general visual features (LLaVA's and SmolVLM's
    fine-tuning recipes freeze it too)."""
    import torch

    if not model_args.use_peft or "lora_target_modules" in user:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    prefix = names.get(id(model.get_decoder()))
    if not prefix:
        raise UserError(f"{model_args.model_name_or_path}: its language model could not be found to put LoRA on; set "
                        "lora_target_modules (names from `finetune-kit inspect`).")
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if n.startswith(prefix + ".") and isinstance(m, torch.nn.Linear)})
    regex = rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})"
    return Decision("lora_target_modules", regex, f"the language model's linear layers ({', '.join(leaves)} under "
                    f"{prefix}); the vision tower and connector keep their weights")
