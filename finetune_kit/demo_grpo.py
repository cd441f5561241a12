"""The `make grpo` demo: GRPO teaches SmolLM2-135M-Instruct to answer sums in a required format, rewarded by a program.

Each prompt asks "What is 7 + 5? End your reply with the line 'Answer: <number>' (for 1 + 2: 'Answer: 3')." (sums
and differences of 1..12). The base model mostly replies "7 + 5 = 12", right about a third of the time, and rarely
in the asked format. The rewards (`examples/arithmetic_rewards.py`): 1 when the reply's last number is the right
answer, 0.25 more when the reply ends with the line `Answer: <integer>`; nothing judges style. A first version gave
0.5 for the format whatever the number, and an example 'Answer: 12' in the prompt: the policy learned to answer
"Answer: 12" to everything (format 100%, right 0%), a reward hack; the right number now outweighs the format. Three disjoint sets of questions: training prompts, validation prompts (trl's evaluate
scores them for the run's guard and keep_policy: best), and test questions, used only here: answered greedily
before and after training and judged on three counts: exact (the format and the right number), format alone, and
value (the last number in the reply is right, whatever the format; arithmetic skill apart from the format).

    python -m finetune_kit.demo_grpo data --out data/generated/grpo
    python -m finetune_kit.demo_grpo score --model smollm2-135m-instruct --test data/generated/grpo/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

INSTRUCTION = "End your reply with the line 'Answer: <number>' (for 1 + 2: 'Answer: 3')."
QUESTION = re.compile(r"What is (\d+) ([+-]) (\d+)\?")
FINAL = re.compile(r"(?:^|\n)\s*Answer:\s*(-?\d+)\s*\.?\s*$")
SPLITS = {"validation": 32, "test": 64}  # the rest are training prompts


def questions(seed: int = 0) -> dict[str, list[tuple[int, str, int]]]:
    """Every a + b and a - b (a >= b) for a, b in 1..12, shuffled and split: no question is in two sets."""
    pairs = [(a, op, b) for a in range(1, 13) for b in range(1, 13) for op in "+-" if op == "+" or a >= b]
    random.Random(seed).shuffle(pairs)
    out, start = {}, 0
    for name, size in SPLITS.items():
        out[name], start = pairs[start:start + size], start + size
    out["prompts"] = pairs[start:]
    return out


def prompt(a: int, op: str, b: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {a} {op} {b}? {INSTRUCTION}"}]


def make_dataset(out: Path, seed: int = 0) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in questions(seed).items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": prompt(*q)}) + "\n" for q in rows))
        counts[name] = len(rows)
    return counts


def truth(question) -> int:
    """The right answer to a prompt (text or conversation) holding "What is a + b?" or "What is a - b?"."""
    text = question[-1]["content"] if isinstance(question, list) else str(question)
    found = QUESTION.search(text)
    if not found:
        raise ValueError(f"no 'What is a + b?' question in the prompt {text[:60]!r}")
    a, op, b = found.groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def final_answer(reply: str) -> int | None:
    """The integer of a reply's closing `Answer: <integer>` line; None when the reply does not end with one."""
    found = FINAL.search(reply.strip())
    return int(found.group(1)) if found else None


def last_number(reply: str) -> int | None:
    numbers = re.findall(r"-?\d+", reply)
    return int(numbers[-1]) if numbers else None


def judge(question, reply: str) -> dict[str, bool]:
    right, given = truth(question), final_answer(reply)
    return {"exact": given == right, "format": given is not None, "value": last_number(reply) == right}


def summarise(results: list[dict]) -> dict:
    n = len(results)
    return {"questions": n, **{f"{k}_percent": round(100 * sum(r[k] for r in results) / max(n, 1), 1)
                               for k in ("exact", "format", "value")}}


def score(model_path: str, test_path: Path, max_new_tokens: int = 32) -> dict:
    """Greedy replies to every test question, judged."""
    from finetune_kit.generation import GenerationOptions, generate_batch
    from finetune_kit.models import load_for_inference

    items = [json.loads(line) for line in test_path.read_text().splitlines() if line.strip()]
    model, tokenizer = load_for_inference(model_path)
    replies = generate_batch(model, tokenizer, [item["prompt"][-1]["content"] for item in items],
                             GenerationOptions(max_new_tokens=max_new_tokens))
    results = [{"question": item["prompt"][-1]["content"].split("?")[0] + "?", "reply": reply,
                **judge(item["prompt"], reply)} for item, reply in zip(items, replies)]
    return {"model": model_path, **summarise(results), "answers": results}


def _figures(s: dict) -> str:
    return (f"exact {s['exact_percent']}% (format and value), format {s['format_percent']}%, value "
            f"{s['value_percent']}% of {s['questions']} test questions")


def _print_score(result: dict, label: str) -> None:
    print(f"\n== {label}: {result['model']}   (ok: format and value right; f: format only; v: value only)")
    for r in result["answers"][:16]:
        mark = "ok" if r["exact"] else "f " if r["format"] else "v " if r["value"] else "--"
        print(f"  [{mark}] {r['question']:16} -> {r['reply'].strip()[:70]!r}")
    print(f"  ... ({len(result['answers'])} in all)\n  {_figures(result)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_grpo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write the training, validation and test questions")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    sc = commands.add_parser("score", help="answer the test questions greedily and judge the replies")
    sc.add_argument("--model", required=True)
    sc.add_argument("--test", type=Path, required=True)
    sc.add_argument("--save", type=Path, help="write the result as JSON")
    sc.add_argument("--before", type=Path, help="a saved earlier result to compare with")
    args = parser.parse_args(argv)

    if args.command == "data":
        counts = make_dataset(args.out, seed=args.seed)
        print(f"wrote {counts['prompts']} training, {counts['validation']} validation and {counts['test']} test "
              f"questions to {args.out}")
        return
    result = score(args.model, args.test)
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
