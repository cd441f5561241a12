"""Example reward functions for the ppo and grpo recipes (`reward_functions: [path.py:name]`).

A reward function gets the prompts (text, or conversations as lists of {"role", "content"} turns) and the answers
(text), and returns one finite number per answer. Several functions and a reward model are summed.
"""

from __future__ import annotations


def brevity(prompts: list, answers: list[str]) -> list[float]:
    """Prefer answers near 50 words: 1 at 50 words, falling linearly to 0 at 0 or 100 words."""
    return [max(0.0, 1.0 - abs(len(a.split()) - 50) / 50) for a in answers]


def opens_with_sure(prompts: list, answers: list[str]) -> list[float]:
    """The `make rlhf` house rule as a function: 1 when the answer opens with "Sure!", else 0."""
    return [1.0 if a.strip().startswith("Sure!") else 0.0 for a in answers]
