"""The vision-language demo: a tiny SmolVLM-shaped model built from a config learns to name the colour or the shape
drawn in a picture.

Each picture is a coloured shape (6 colours x 4 shapes, random size, position and light background) drawn with PIL;
each row asks one question about it, "What colour is the shape?" or "What shape is this?" (a few phrasings), and the
answer is one word, so it can be checked exactly. Test and validation pictures are drawn apart from the training
ones. Chance is 1/6 for colours and 1/4 for shapes.

No pretrained vision-language weights load offline, so `data` also writes `smolvlm-tiny-from-config/`: an Idefics3
model (SmolVLM's architecture: a SigLIP-style vision tower, pixel-shuffle connector, Llama text model) with random
weights and a real processor: the embedded SmolLM2 tokenizer (SmolVLM's text tokenizer) with SmolVLM's image tokens
added, an Idefics3 image processor at 32x32 (4 image tokens a picture) and SmolVLM's chat template. A checkpoint
folder like any other: training, `inspect` and scoring load it the usual way.

    python -m finetune_kit.demo_vision_chat data --out data/generated/shapes
    python -m finetune_kit.demo_vision_chat score --model data/generated/shapes/smolvlm-tiny-from-config \
        --test data/generated/shapes/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (235, 200, 20),
           "purple": (140, 50, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "cross")
QUESTIONS = {"colour": ("What colour is the shape?", "Which colour is it?", "Name the colour of the shape."),
             "shape": ("What shape is this?", "Which shape is drawn?", "Name the shape.")}
SPLITS = {"train": 2000, "validation": 100, "test": 200}
PICTURE = 64  # pixels drawn; the processor resizes to IMAGE_SIZE
IMAGE_SIZE, PATCH, SCALE = 32, 8, 2  # (32 / 8)^2 patches, pixel-shuffled by 2: 4 image tokens per picture
# SmolVLM's tokens beyond its text tokenizer's: image markers and the row / column tags of split images.
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
MODEL_SIZES = {"vision_hidden": 64, "vision_layers": 2, "text_hidden": 64, "text_layers": 2}


def draw(colour: str, shape: str, rng: random.Random):
    """One picture: `shape` filled with `colour`, random size and place, on a light grey background."""
    from PIL import Image, ImageDraw

    grey = rng.randint(215, 255)
    image = Image.new("RGB", (PICTURE, PICTURE), (grey, grey, grey))
    size = rng.randint(26, 46)
    x, y = rng.randint(2, PICTURE - size - 2), rng.randint(2, PICTURE - size - 2)
    pen, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == "circle":
        pen.ellipse((x, y, x + size, y + size), fill=fill)
    elif shape == "square":
        pen.rectangle((x, y, x + size, y + size), fill=fill)
    elif shape == "triangle":
        pen.polygon([(x + size / 2, y), (x, y + size), (x + size, y + size)], fill=fill)
    else:
        bar = size // 3
        pen.rectangle((x + bar, y, x + 2 * bar, y + size), fill=fill)
        pen.rectangle((x, y + bar, x + size, y + 2 * bar), fill=fill)
    return image


def rows_for(split: str, count: int, out: Path, rng: random.Random) -> list[dict]:
    """`count` pictures saved under out/images/<split>/ and one question row each (trl's vision format)."""
    folder = out / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        kind = "colour" if i % 2 == 0 else "shape"
        name = f"images/{split}/{i:05d}.png"
        draw(colour, shape, rng).save(out / name)
        rows.append({"messages": [{"role": "user", "content": [{"type": "image"},
                                                                {"type": "text", "text": rng.choice(QUESTIONS[kind])}]},
                                  {"role": "assistant", "content": [{"type": "text",
                                                                     "text": colour if kind == "colour" else shape}]}],
                     "images": [name], "question": kind})
    return rows


def tiny_processor(image_size: int = IMAGE_SIZE, patch: int = PATCH, scale: int = SCALE):
    """SmolVLM's processor at a tiny image size: the embedded SmolLM2 tokenizer with the image tokens added, an
    Idefics3 image processor without tiling, SmolVLM's chat template (as trl ships it)."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor
    from trl.chat_template_utils import smolvlm_chat_template

    from finetune_kit.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    tokenizer.eos_token = "<end_of_utterance>"  # SmolVLM's: each turn of its chat template ends with it
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": image_size},
                                    max_image_size={"longest_edge": image_size})
    return Idefics3Processor(image_processor=images, tokenizer=tokenizer,
                             image_seq_len=(image_size // patch) ** 2 // scale ** 2, chat_template=smolvlm_chat_template)


def tiny_smolvlm(out: Path, seed: int = 0, image_size: int = IMAGE_SIZE, patch: int = PATCH,
                 initializer_range: float = 0.02, **sizes) -> Path:
    """An Idefics3 (SmolVLM) model with random weights sized by MODEL_SIZES (or `sizes`), saved with its processor as
    a checkpoint folder. A wide `initializer_range` (tests: 0.2) gives random text layers distinct features, so LoRA
    on a frozen random base learns within a few steps."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    s = {**MODEL_SIZES, **sizes}
    processor = tiny_processor(image_size, patch)
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    vision = Idefics3VisionConfig(hidden_size=s["vision_hidden"], intermediate_size=2 * s["vision_hidden"],
                                  num_hidden_layers=s["vision_layers"], num_attention_heads=4, image_size=image_size,
                                  patch_size=patch)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=s["text_hidden"], intermediate_size=2 * s["text_hidden"],
                       num_hidden_layers=s["text_layers"], num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=end, initializer_range=initializer_range)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=SCALE, tie_word_embeddings=True,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = end  # SmolVLM's turns end with <end_of_utterance>
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_dataset(out: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {}
    for split, count in (sizes or SPLITS).items():
        rows = rows_for(split, count, out, rng)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[split] = len(rows)
    tiny_smolvlm(out / "smolvlm-tiny-from-config", seed=seed)
    return counts


def load_for_answers(path: str):
    """(model, processor) of a checkpoint or a sft_vision run folder (full, or an adapter merged into its base)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from finetune_kit.models import read_adapter_config, resolve_checkpoint

    folder = Path(resolve_checkpoint(path))
    adapter = read_adapter_config(folder) if folder.is_dir() else None
    if adapter is None:
        return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    from peft import PeftModel

    base = AutoModelForImageTextToText.from_pretrained(resolve_checkpoint(adapter["base_model_name_or_path"]))
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload().eval(), AutoProcessor.from_pretrained(folder)


def answer(model, processor, rows: list[dict], folder: Path, batch_size: int = 32, max_new_tokens: int = 4) -> list[str]:
    """Greedy answers to each row's question (its conversation without the answer), as text."""
    import torch
    from PIL import Image

    answers = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        prompts = [processor.apply_chat_template(r["messages"][:-1], add_generation_prompt=True) for r in batch]
        images = [[Image.open(folder / p).convert("RGB") for p in r["images"]] for r in batch]
        inputs = processor(text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers += processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [a.strip() for a in answers]


def first_word(text: str) -> str:
    return text.split()[0].strip(".,!").lower() if text.split() else ""


def score(model_path: str, test_path: Path) -> dict:
    """Accuracy of the first word of each greedy answer, overall and by question (colour / shape)."""
    rows = [json.loads(line) for line in test_path.read_text().splitlines() if line.strip()]
    model, processor = load_for_answers(model_path)
    outputs = answer(model, processor, rows, test_path.parent)
    results = [{"question": r["messages"][0]["content"][-1]["text"], "kind": r["question"], "output": o,
                "target": r["messages"][-1]["content"][0]["text"]} for r, o in zip(rows, outputs)]
    for r in results:
        r["correct"] = first_word(r["output"]) == r["target"]
    by_kind = {kind: round(sum(r["correct"] for r in results if r["kind"] == kind)
                           / max(1, sum(r["kind"] == kind for r in results)), 4) for kind in QUESTIONS}
    return {"model": model_path, "rows": len(results), "accuracy": round(sum(r["correct"] for r in results)
                                                                         / len(results), 4),
            "accuracy_by_question": by_kind, "examples": results[:8]}


def _figures(result: dict) -> str:
    kinds = result["accuracy_by_question"]
    return (f"accuracy {result['accuracy']:.3f} on {result['rows']} held-out pictures (colour {kinds['colour']:.3f}, "
            f"shape {kinds['shape']:.3f}; chance 0.167 / 0.250)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_vision_chat",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="draw the pictures, write the rows and the untrained tiny model")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    sc = commands.add_parser("score", help="answer accuracy of a model on the held-out pictures")
    sc.add_argument("--model", required=True)
    sc.add_argument("--test", type=Path, required=True)
    sc.add_argument("--save", type=Path, help="write the result as JSON")
    sc.add_argument("--before", type=Path, help="a saved earlier result to compare with")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out, seed=args.seed)
        print(f"wrote {counts['train']} training, {counts['validation']} validation and {counts['test']} test rows, "
              f"their pictures and smolvlm-tiny-from-config/ to {args.out}")
        return
    result = score(args.model, args.test)
    for r in result["examples"]:
        print(f"  [{'ok' if r['correct'] else '--'}] {r['question']!r:34} -> {r['output']!r} (want {r['target']})")
    if args.before:
        before = json.loads(args.before.read_text())
        result["before"] = {k: before[k] for k in ("model", "accuracy", "accuracy_by_question")}
        print(f"before: {_figures(before)}")
    print(f"{'after' if args.before else 'score'}: {_figures(result)}")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
