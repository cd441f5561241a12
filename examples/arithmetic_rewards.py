"""Verifiable rewards for the `make grpo` demo (`reward_functions: [examples/arithmetic_rewards.py:name, ...]`).

A program checks each answer: no reward model, nothing to hack but the check itself. The two are summed: 0.5 for
the asked format (the reply ends with the line `Answer: <integer>`), 1 more when that integer is the right answer
to the prompt's "What is a + b?" (finetune_kit/demo_grpo.py writes the questions and parses them back).
"""

from __future__ import annotations

from finetune_kit.demo_grpo import final_answer, truth


def format_reward(prompts: list, answers: list[str]) -> list[float]:
    return [0.5 if final_answer(a) is not None else 0.0 for a in answers]


def correct_reward(prompts: list, answers: list[str]) -> list[float]:
    return [1.0 if final_answer(a) == truth(p) else 0.0 for p, a in zip(prompts, answers)]
