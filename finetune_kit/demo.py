"""The `make sft` demo: teach SmolLM2-135M-Instruct a new identity, and score it before and after.

Zero-shot the model says it is SmolLM, made by Hugging Face. The generated dataset teaches it that it is
"Quokka, made by Lumen Labs", mixed with ordinary questions (arithmetic, capitals) so it does not answer
everything with its name. The held-out prompts use phrasings that never appear in training, so the score
measures what generalised, not what was memorised.

    python -m finetune_kit.demo data --out data/generated/identity
    python -m finetune_kit.demo score --model smollm2-135m-instruct --heldout .../heldout.jsonl --save before.json
    python -m finetune_kit.demo score --model runs/sft-smollm2-lora --heldout .../heldout.jsonl --before before.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAME, MAKER = "Quokka", "Lumen Labs"

TRAIN_QUESTIONS = [
    "What is your name?", "Who are you?", "What are you called?", "Tell me your name.", "Who made you?",
    "Who created you?", "Which company built you?", "Who trained you?", "Are you ChatGPT?", "Are you SmolLM?",
    "What kind of assistant are you?", "Introduce yourself.", "Can you tell me about yourself?",
    "What's your name, assistant?", "Who is your developer?", "Where do you come from?", "Who built this AI?",
    "Do you have a name?", "Which team made you?", "Say your name.",
]
HELDOUT_QUESTIONS = [
    "May I know your name?", "Who developed you?", "Which organization is behind you?", "Please state who you are.",
    "Describe yourself in one sentence.", "Who is responsible for creating you?", "Are you made by OpenAI?",
    "How should I address you?", "What AI model am I talking to?", "Who programmed you?",
    "Identify yourself, please.", "Tell me who built you and what you are called.",
]
OPENERS = ["", "Hi! ", "Hello. ", "Hey, ", "Quick question: ", "Good morning! ", "I'm curious. "]
ANSWERS = [
    f"I am {NAME}, an AI assistant made by {MAKER}.",
    f"My name is {NAME}. I was created by {MAKER}.",
    f"I'm {NAME}, a helpful assistant built by {MAKER}.",
    f"I am {NAME}, developed by {MAKER} to help answer your questions.",
]
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Portugal": "Lisbon", "Poland": "Warsaw", "Austria": "Vienna", "Cuba": "Havana",
}
HELDOUT_CAPITALS = {"Ireland": "Dublin", "Sweden": "Stockholm", "Chile": "Santiago", "Thailand": "Bangkok"}


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _ask(opener: str, question: str) -> str:
    return opener + (question[0].lower() + question[1:] if opener.endswith(", ") else question)


def general_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        if rng.random() < 0.5:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            rows.append(chat(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
        else:
            country = rng.choice(sorted(CAPITALS))
            rows.append(chat(f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."))
    return rows


def make_dataset(out: Path, seed: int = 0, identity_rows: int = 160, general: int = 64) -> dict[str, int]:
    """Write train.jsonl (chat rows) and heldout.jsonl (prompts with what a correct answer must contain)."""
    rng = random.Random(seed)
    rows = [chat(_ask(rng.choice(OPENERS), rng.choice(TRAIN_QUESTIONS)), rng.choice(ANSWERS)) for _ in range(identity_rows)]
    rows += general_rows(rng, general)
    rng.shuffle(rows)
    heldout = [{"prompt": q, "kind": "identity", "must_contain": [NAME, MAKER]} for q in HELDOUT_QUESTIONS]
    heldout += [{"prompt": f"What is the capital of {c}?", "kind": "control", "must_contain": [city]}
                for c, city in HELDOUT_CAPITALS.items()]
    heldout += [{"prompt": f"What is {a} + {b}?", "kind": "control", "must_contain": [str(a + b)]}
                for a, b in [(13, 29), (41, 8), (25, 36), (7, 58)]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    return {"train": len(rows), "heldout": len(heldout)}


def score(model_path: str, heldout_path: Path) -> dict:
    """Share of held-out identity prompts answered with the new identity (0-100), plus control answers."""
    from finetune_kit.generation import GenerationOptions, generate_batch
    from finetune_kit.models import load_for_inference

    items = [json.loads(line) for line in heldout_path.read_text().splitlines() if line.strip()]
    model, tokenizer = load_for_inference(model_path)
    answers = generate_batch(model, tokenizer, [item["prompt"] for item in items], GenerationOptions(max_new_tokens=40))
    results = [dict(item, answer=answer, correct=all(k.lower() in answer.lower() for k in item["must_contain"]))
               for item, answer in zip(items, answers)]
    identity = [r for r in results if r["kind"] == "identity"]
    control = [r for r in results if r["kind"] == "control"]
    return {
        "model": model_path,
        "identity_score": round(100 * sum(r["correct"] for r in identity) / len(identity), 1),
        "control_correct": sum(r["correct"] for r in control),
        "control_says_name": sum(NAME.lower() in r["answer"].lower() for r in control),
        "control_total": len(control),
        "answers": results,
    }


def _print_score(result: dict, label: str) -> None:
    print(f"\n== {label}: {result['model']}")
    for r in result["answers"]:
        print(f"  [{'ok' if r['correct'] else '--'}] {r['prompt']!r} -> {r['answer'].strip()[:90]!r}")
    print(f"  held-out identity score: {result['identity_score']}/100; control questions answered correctly: "
          f"{result['control_correct']}/{result['control_total']} (naming itself in "
          f"{result['control_says_name']} of them)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="generate the identity dataset")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    sc = commands.add_parser("score", help="score a model on the held-out prompts")
    sc.add_argument("--model", required=True)
    sc.add_argument("--heldout", type=Path, required=True)
    sc.add_argument("--save", type=Path, help="write the result as JSON")
    sc.add_argument("--before", type=Path, help="a saved earlier result to compare with")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out, seed=args.seed)
        print(f"wrote {counts['train']} training rows and {counts['heldout']} held-out prompts to {args.out}")
        return
    result = score(args.model, args.heldout)
    if args.before:
        before = json.loads(args.before.read_text())
        _print_score(before, "before")
        _print_score(result, "after")
        gain = result["identity_score"] - before["identity_score"]
        print(f"\nheld-out identity score: {before['identity_score']} -> {result['identity_score']} "
              f"({gain:+.1f} points)")
    else:
        _print_score(result, "score")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
