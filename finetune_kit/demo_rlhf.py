"""The `make rlhf` demo: SFT -> reward model -> PPO on SmolLM2-135M-Instruct, with a preference you can check.

The house rule: an answer opens with "Sure!". The SFT data follows it only 30% of the time (other answers open
with "Okay.", "Well," ...), so the SFT model sometimes follows it. The reward model learns the rule from pairs that
differ only in the opener; PPO then moves the policy towards it. Held-out questions (other countries, other sums)
are scored before and after PPO, by the reward model and by the rule itself.

    python -m finetune_kit.demo_rlhf data --out data/generated/rlhf
    python -m finetune_kit.demo_rlhf report --ppo runs/rlhf-ppo --reward runs/rlhf-reward
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from finetune_kit.demo import leaks
from finetune_kit.demo_data import (
    ANSWERS,
    CAPITALS,
    HELDOUT_CAPITALS,
    HELDOUT_QUESTIONS,
    TRAIN_QUESTIONS,
)

RULE = "Sure!"
OTHER_OPENERS = ["Okay.", "Well,", "Hmm,", "Right.", "So,"]


def qa_pairs(rng: random.Random, n: int, capitals: dict[str, str], sums: range) -> list[tuple[str, str]]:
    """Questions with their plain answers: capitals, sums, and the identity questions of `make sft`."""
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            country = rng.choice(sorted(capitals))
            out.append((f"What is the capital of {country}?", f"The capital of {country} is {capitals[country]}."))
        elif kind < 0.8:
            a, b = rng.choice(sums), rng.choice(sums)
            out.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
        else:
            out.append((rng.choice(TRAIN_QUESTIONS), rng.choice(ANSWERS)))
    return out


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def follows_rule(answer: str) -> bool:
    return answer.strip().startswith(RULE)


def make_dataset(out: Path, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    sft = [{"messages": [user(q), assistant(f"{RULE if rng.random() < 0.3 else rng.choice(OTHER_OPENERS)} {a}")]}
           for q, a in qa_pairs(rng, 192, CAPITALS, range(2, 50))]
    # Conversations, so the reward model learns on the chat-template rendering it will score in PPO.
    pairs = [{"prompt": [user(q)], "chosen": [assistant(f"{RULE} {a}")],
              "rejected": [assistant(f"{rng.choice(OTHER_OPENERS)} {a}")]}
             for q, a in qa_pairs(rng, 240, CAPITALS, range(2, 50))]
    prompts = [{"prompt": q} for q, _ in qa_pairs(rng, 128, CAPITALS, range(2, 50))]
    heldout = [{"prompt": q} for q, _ in qa_pairs(rng, 16, HELDOUT_CAPITALS, range(50, 99))]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft", sft), ("pairs", pairs), ("prompts", prompts), ("heldout_prompts", heldout)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"sft": len(sft), "pairs": len(pairs), "prompts": len(prompts), "heldout": len(heldout)}


def _leakage(metrics: dict) -> float:
    """Share of answers naming the `make sft` identity among those whose prompt did not ask who the model is."""
    asked = set(TRAIN_QUESTIONS) | set(HELDOUT_QUESTIONS)
    prompts = metrics.get("prompts") or [""] * len(metrics["answers"])
    unasked = [a for p, a in zip(prompts, metrics["answers"]) if p not in asked]
    return sum(map(leaks, unasked)) / len(unasked) if unasked else 0.0


def report(ppo_dir: Path, reward_dir: Path) -> dict:
    ppo = json.loads((ppo_dir / "run_info.json").read_text())["metrics"]
    rm = json.loads((reward_dir / "run_info.json").read_text())["metrics"]
    summary = {"reward_model_heldout_pairwise_accuracy": rm.get("eval_accuracy")}
    for when in ("before", "after"):
        m = ppo[when]
        summary[when] = {"reward_mean": m["reward_mean"], "reward_std": m["reward_std"], "kl": m["kl"],
                         "follows_rule": sum(map(follows_rule, m["answers"])) / len(m["answers"]),
                         # The SFT stage learnt the `make sft` identity too: does it creep into other answers?
                         "leakage": _leakage(m)}
        print(f"\n== {when} PPO: held-out answers")
        for answer, score in list(zip(m["answers"], m["scores"]))[:6]:
            print(f"  [{score:+.2f}] {answer.strip()[:80]!r}")
    b, a = summary["before"], summary["after"]
    print(f"\nreward model: held-out pairwise accuracy {summary['reward_model_heldout_pairwise_accuracy']:.3f}")
    print(f"held-out mean reward: {b['reward_mean']:.3f} (sd {b['reward_std']:.3f}) -> {a['reward_mean']:.3f} "
          f"(sd {a['reward_std']:.3f}); KL to the SFT reference {a['kl']:.2f} nats per answer")
    print(f"answers opening with '{RULE}': {b['follows_rule']:.0%} -> {a['follows_rule']:.0%}; naming the identity "
          f"unasked (leakage): {b['leakage']:.0%} -> {a['leakage']:.0%}")
    (ppo_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_kit.demo_rlhf", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="generate the SFT, preference and prompt files")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--seed", type=int, default=0)
    rep = commands.add_parser("report", help="summarise the reward model and PPO runs")
    rep.add_argument("--ppo", type=Path, required=True)
    rep.add_argument("--reward", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "data":
        print(f"wrote {make_dataset(args.out, args.seed)} rows to {args.out}")
    else:
        report(args.ppo, args.reward)


if __name__ == "__main__":
    from finetune_kit.errors import run_cli

    run_cli(main)
