"""The `make sft` demo: teach SmolLM2-135M-Instruct a new identity, and score what it learnt and what it kept.

Zero-shot the model says it is SmolLM, made by Hugging Face. The generated dataset teaches it that it is
"Quokka, made by Lumen Labs", mixed with ordinary instructions of several kinds answered without the identity
(finetune_kit/demo_data.py), so it learns when to introduce itself rather than to introduce itself to everything.
The score, before and after training, on held-out prompts whose phrasings never appear in training:

- identity: share of held-out identity questions answered with the new name and maker (0-100);
- leakage: share of control answers (kinds absent from training: lists, stories, definitions, rewrites, yes / no
  questions, ...) that mention the identity although the prompt did not ask who the model is;
- control correct: control answers passing their simple check (a word the answer must contain, the yes / no it must
  give; demo_data.CONTROL), out of the control prompts that have one;
- seen kinds: held-out sums and capitals, kinds that are trained.

    python -m finetune_kit.demo data --out data/generated/identity
    python -m finetune_kit.demo score --model smollm2-135m-instruct --heldout .../heldout.jsonl --save before.json
    python -m finetune_kit.demo score --model runs/sft-smollm2-lora --heldout .../heldout.jsonl --before before.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from finetune_kit.demo_data import (
    CONTROL,
    HELDOUT_QUESTIONS,
    MAKER,
    NAME,
    SEEN_KINDS,
    general_rows,
    identity_row,
)


def make_dataset(out: Path, seed: int = 0, identity_rows: int = 96, general: int = 192) -> dict[str, int]:
    """Write train.jsonl (chat rows) and heldout.jsonl (prompts, each with its kind and the check of its answer)."""
    rng = random.Random(seed)
    rows = [identity_row(rng) for _ in range(identity_rows)] + general_rows(rng, general)
    rng.shuffle(rows)
    heldout = [{"prompt": q, "kind": "identity", "check": {"all": [NAME, MAKER]}} for q in HELDOUT_QUESTIONS]
    heldout += [{"prompt": q, "kind": "control", "category": c, "check": check} for c, q, check in CONTROL]
    heldout += [{"prompt": q, "kind": "seen", "check": check} for q, check in SEEN_KINDS]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    return {"train": len(rows), "heldout": len(heldout)}


def _has(answer: str, word: str) -> bool:
    # A word start, so "cat" matches "cats" but not "education"; case-insensitive.
    return re.search(r"\b" + re.escape(word.lower()), answer.lower()) is not None


def judge(check: dict | None, answer: str) -> bool | None:
    """Whether `answer` passes `check` (demo_data.CONTROL's forms, plus {"all": words}); None when there is none."""
    if check is None:
        return None
    if "all" in check:
        return all(_has(answer, w) for w in check["all"])
    if "any" in check:
        return any(_has(answer, w) for w in check["any"])
    if "count" in check:
        return sum(_has(answer, w) for w in check["of"]) >= check["count"]
    first = re.search(r"\b(yes|no)\b", answer.lower())
    return first is not None and first.group(1) == check["yes_no"]


def leaks(answer: str) -> bool:
    """The answer introduces the taught identity: it names the assistant or its maker."""
    return _has(answer, NAME) or _has(answer, MAKER)


def summarise(results: list[dict]) -> dict:
    """The demo's figures from judged answers (each: kind, answer, correct)."""
    def share(rows, test):
        return round(100 * sum(map(test, rows)) / len(rows), 1) if rows else None

    identity = [r for r in results if r["kind"] == "identity"]
    control = [r for r in results if r["kind"] == "control"]
    checked = [r for r in control if r["correct"] is not None]
    seen = [r for r in results if r["kind"] == "seen"]
    return {
        "identity_score": share(identity, lambda r: r["correct"]),
        "leakage_percent": share(control, lambda r: leaks(r["answer"])),
        "control_correct": sum(r["correct"] for r in checked), "control_checked": len(checked),
        "control_total": len(control),
        "seen_correct": sum(bool(r["correct"]) for r in seen), "seen_total": len(seen),
    }


def score(model_path: str, heldout_path: Path, max_new_tokens: int = 48) -> dict:
    """Greedy answers to every held-out prompt, judged (see the module docstring)."""
    from finetune_kit.generation import GenerationOptions, generate_batch
    from finetune_kit.models import load_for_inference

    items = [json.loads(line) for line in heldout_path.read_text().splitlines() if line.strip()]
    model, tokenizer = load_for_inference(model_path)
    answers = generate_batch(model, tokenizer, [item["prompt"] for item in items],
                             GenerationOptions(max_new_tokens=max_new_tokens))
    results = [dict(item, answer=answer, correct=judge(item["check"], answer)) for item, answer in zip(items, answers)]
    return {"model": model_path, **summarise(results), "answers": results}


def _mark(r: dict) -> str:
    mark = {True: "ok", False: "--", None: "  "}[r["correct"]]
    return mark + ("!" if r["kind"] != "identity" and leaks(r["answer"]) else " ")


def _figures(s: dict) -> str:
    return (f"identity {s['identity_score']}/100, leakage {s['leakage_percent']}% of {s['control_total']} control "
            f"answers, control correct {s['control_correct']}/{s['control_checked']}, seen kinds correct "
            f"{s['seen_correct']}/{s['seen_total']}")


def _print_score(result: dict, label: str) -> None:
    print(f"\n== {label}: {result['model']}   (ok / -- : check passed / failed; ! : names the identity unasked)")
    for r in result["answers"]:
        print(f"  [{_mark(r)}] {r['kind'][:8]:8} {r['prompt'][:44]!r:48} -> {r['answer'].strip()[:70]!r}")
    print(f"  {_figures(result)}")


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
        print(f"\nbefore: {_figures(before)}\nafter:  {_figures(result)}")
    else:
        _print_score(result, "score")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
