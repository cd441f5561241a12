"""Verifiable rewards for the `make grpo` demo (`reward_functions: [examples/arithmetic_rewards.py:name, ...]`).

A program checks each answer: no reward model, nothing to hack but the check itself, so the check must not pay
for what a policy can give without solving the task (a format bonus as large as half the right answer's reward
taught "Answer: 12" to every question). The two are summed: 1 when the reply's last number is the right answer to
the prompt's "What is a + b?", 0.25 more for the asked format (the reply ends with the line `Answer: <integer>`).
finetune_kit/demo_grpo.py writes the questions and parses them back.
"""

from __future__ import annotations

from finetune_kit.demo_grpo import final_answer, last_number, truth


def format_reward(prompts: list, answers: list[str]) -> list[float]:
    return [0.25 if final_answer(a) is not None else 0.0 for a in answers]


def correct_reward(prompts: list, answers: list[str]) -> list[float]:
    return [1.0 if last_number(a) == truth(p) else 0.0 for p, a in zip(prompts, answers)]
