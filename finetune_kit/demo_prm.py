"""A small step-labelled set for the prm recipe, checkable offline: chains of arithmetic, some with a wrong step.

Each problem is a chain of 2 to 4 operations on small whole numbers ("Start with 7, add 5, multiply by 3, then
subtract 4. What is the result?"); a solution takes one step per operation ("7 + 5 = 12", "12 times 3 is 36", ...)
and a final "The answer is 32." Each problem gets 4 candidate solutions: one right, one wrong, two either way, in a
random order and random wordings. A wrong solution goes wrong at one step, in one of two ways, and carries on
correctly from there:
- arithmetic: the step's result is off ("12 * 3 = 38");
- copy: the step starts from another number than the result before it (after "= 12": "13 * 3 = 39"), or the final
  answer is not the last result.
Labels follow PRM800K / Math-Shepherd: a step is true while the solution is still right, so the first wrong step and
every step after it are false (a later step that is right on its own, building on a wrong number, is false too).
`labels_of` recomputes the labels from the text alone; the generator's labels are checked against it.

    python -m finetune_kit.demo_prm data --out data/generated/prm

writes train.jsonl, validation.jsonl and test.jsonl (no problem in two files), deterministic by `--seed`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SPLITS = {"train": 200, "validation": 32, "test": 64}  # problems; 4 candidate solutions each
CANDIDATES = 4
OPS = {"add": ("add {b}", lambda x, b: x + b), "sub": ("subtract {b}", lambda x, b: x - b),
       "mul": ("multiply by {b}", lambda x, b: x * b)}
# Each wording ends with x, b, y in that order: labels_of reads the last three numbers of a step.
WORDINGS = {"add": ("{x} + {b} = {y}", "{x} plus {b} is {y}.", "Add {b}: {x} + {b} = {y}."),
            "sub": ("{x} - {b} = {y}", "{x} minus {b} is {y}.", "Subtract {b}: {x} - {b} = {y}."),
            "mul": ("{x} * {b} = {y}", "{x} times {b} is {y}.", "Multiply by {b}: {x} * {b} = {y}.")}
FINAL = ("The answer is {y}.", "So the result is {y}.")
STEP_IN_PROMPT = re.compile(r"(add|subtract|multiply by) (\d+)")


def problem(rng: random.Random) -> tuple[int, list[tuple[str, int]]]:
    """A start and 2-4 operations keeping every value whole, positive and below 100."""
    while True:
        start = value = rng.randint(2, 12)
        ops = []
        for _ in range(rng.randint(2, 4)):
            name = rng.choice(["add", "sub", "mul"])
            b = rng.randint(2, 4) if name == "mul" else rng.randint(1, 9)
            if name == "sub" and b >= value:
                name = "add"
            value = OPS[name][1](value, b)
            ops.append((name, b))
        if value < 100 and len({n for n, _ in ops}) > 1:
            return start, ops


def prompt_of(start: int, ops: list[tuple[str, int]]) -> str:
    parts = [OPS[name][0].format(b=b) for name, b in ops]
    return f"Start with {start}, {', '.join(parts[:-1])}, then {parts[-1]}. What is the result?"


def solution(rng: random.Random, start: int, ops: list[tuple[str, int]], wrong_at: int | None) -> list[str]:
    """The steps of one candidate; `wrong_at` (an index into the steps, the final one included) goes wrong there."""
    steps, value = [], start
    for i, (name, b) in enumerate(ops):
        apply, x = OPS[name][1], value
        copy = i == wrong_at and rng.random() < 0.5
        if copy:  # start from another number than the last result (never one that makes the result negative)
            x = rng.choice([v for v in (x - 2, x - 1, x + 1, x + 2, x + 10) if v >= 1 and apply(v, b) >= 0])
        y = apply(x, b)
        if i == wrong_at and not copy:  # arithmetic: the result is off
            y = rng.choice(_off(y))
        steps.append(rng.choice(WORDINGS[name]).format(x=x, b=b, y=y))
        value = y
    final = value if wrong_at != len(ops) else rng.choice(_off(value))
    steps.append(rng.choice(FINAL).format(y=final))
    return steps


def _off(value: int) -> list[int]:
    """Wrong values near `value`, none negative (the checker reads whole numbers without a sign)."""
    return [v for v in (value - 10, value - 2, value - 1, value + 1, value + 2, value + 10) if v >= 0]


def labels_of(prompt: str, steps: list[str]) -> list[bool]:
    """The labels of a solution, recomputed from its text: a step is right when it starts from the last result (the
    start for the first), applies the prompt's operation and states its result; true while every step so far is."""
    start = int(re.search(r"Start with (\d+)", prompt).group(1))
    ops = [({"add": "add", "subtract": "sub", "multiply by": "mul"}[word], int(b))
           for word, b in STEP_IN_PROMPT.findall(prompt)]
    labels, value, ok = [], start, True
    for i, step in enumerate(steps):
        numbers = [int(n) for n in re.findall(r"\d+", step)]
        if i < len(ops):
            name, b = ops[i]
            x, given_b, y = numbers[-3:]
            ok = ok and x == value and given_b == b and y == OPS[name][1](x, b)
            value = y
        else:
            ok = ok and numbers[-1] == value
        labels.append(ok)
    return labels


def rows_of(rng: random.Random, start: int, ops: list[tuple[str, int]]) -> list[dict]:
    prompt, n = prompt_of(start, ops), len(ops) + 1
    wrong = [None, rng.randrange(n)] + [rng.choice([None, rng.randrange(n)]) for _ in range(CANDIDATES - 2)]
    rng.shuffle(wrong)
    rows = []
    for wrong_at in wrong:
        steps = solution(rng, start, ops, wrong_at)
        rows.append({"prompt": prompt, "completions": steps, "labels": labels_of(prompt, steps)})
        expected = [wrong_at is None or i < wrong_at for i in range(n)]
        assert rows[-1]["labels"] == expected, (prompt, steps, expected)  # the generator and the checker agree
    return rows


def make_dataset(out: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Write the three files; returns the rows in each. Problems are drawn once and dealt out: none repeats."""
    rng, sizes = random.Random(seed), sizes or SPLITS
    problems, seen = [], set()
    while len(problems) < sum(sizes.values()):
        start, ops = problem(rng)
        if prompt_of(start, ops) not in seen:
            seen.add(prompt_of(start, ops))
            problems.append((start, ops))
    out.mkdir(parents=True, exist_ok=True)
    counts, first = {}, 0
    for name, size in sizes.items():
        rows = [row for start, ops in problems[first:first + size] for row in rows_of(rng, start, ops)]
        first += size
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[name] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_prm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write train / validation / test step-labelled solutions")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = make_dataset(args.out, seed=args.seed)
    print(f"wrote {', '.join(f'{n} {name}' for name, n in counts.items())} solutions ({CANDIDATES} per problem) to "
          f"{args.out}")


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
