"""Reward sources for online RL (PPO, GRPO): a trained reward model, and Python reward functions.

A reward model is scored through text: the prompt and the answer are rendered with the reward model's own
tokenizer and chat template, so a policy and a reward model with different tokenizers work together; a run of the
prm recipe scores the answer's steps instead (finetune_kit/rl/prm.py: its solution score, in [0, 1]). A function is
named `module:function` or `path/to/file.py:function`; it gets the prompts (text or conversations) and the answers
(text) and returns one number per answer. Several sources are summed. Wrong counts, non-finite values and
exceptions are reported with the source's name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from finetune_kit.errors import UserError
from finetune_kit.rl.prm import ProcessRewardScorer, run_folder
from finetune_kit.rl.reward_functions import load_reward_function, require_reward_sources


class RewardModelScorer:
    """Scores (prompt, answer) pairs with a one-score sequence classifier (a run of the reward recipe)."""

    def __init__(self, path: str, device: torch.device | str = "cpu", batch_size: int = 16):
        from finetune_kit.models import load_for_inference

        model, self.tokenizer = load_for_inference(path)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not type(base).__name__.endswith("ForSequenceClassification"):
            raise UserError(f"reward_model {path} is a {type(base).__name__}, not a sequence classifier with a score "
                            "head: train one with `finetune-kit train reward`.")
        if base.config.num_labels != 1:
            raise UserError(f"reward_model {path} has a {base.config.num_labels}-way head; a reward model outputs a "
                            "single score (num_labels: 1).")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base.config.pad_token_id = self.tokenizer.pad_token_id
        self.model, self.device, self.batch_size = model.to(device), device, batch_size
        self.__name__ = f"reward model {path}"

    def render(self, prompt: Any, answer: str) -> str:
        """The text the reward model was trained on: chat template for conversations, prompt + answer + EOS else."""
        tok = self.tokenizer
        if isinstance(prompt, list):
            conversation = [*prompt, {"role": "assistant", "content": answer}]
            if tok.chat_template:
                return tok.apply_chat_template(conversation, tokenize=False)
            prompt = "\n".join(turn["content"] for turn in prompt)
        return prompt + answer + (tok.eos_token or "")

    @torch.no_grad()
    def __call__(self, prompts: list, answers: list[str]) -> list[float]:
        texts = [self.render(p, a) for p, a in zip(prompts, answers)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, return_tensors="pt",
                                   add_special_tokens=False).to(self.device)
            scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


class RewardSources:
    """The sum of a reward model and / or reward functions, each checked for count and finiteness."""

    def __init__(self, reward_model: str | None, functions: list[str] | None, device="cpu"):
        require_reward_sources(reward_model, functions)  # before anything loads, each error naming its key
        self.sources: list[Callable] = [load_reward_function(spec) for spec in functions or []]
        self.names = list(functions or [])
        if reward_model:  # a prm run scores the answer's steps (rl/prm.py); any other, the whole answer
            scorer = ProcessRewardScorer if run_folder(reward_model) else RewardModelScorer
            self.sources.append(scorer(reward_model, device))
            self.names.append(self.sources[-1].__name__)

    def __call__(self, prompts: list, answers: list[str]) -> torch.Tensor:
        total = torch.zeros(len(answers))
        for name, source in zip(self.names, self.sources):
            total += call_reward(source, name, prompts, answers)
        return total

    def for_trl(self) -> list[Callable]:
        """The sources as trl reward functions: (prompts, completions, **columns) -> list of floats."""
        def wrap(name, source):
            def reward(prompts, completions, **_):
                answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
                return call_reward(source, name, prompts, answers).tolist()
            # trl logs rewards/<name>/mean: the function's own name, or reward_model
            reward.__name__ = "reward_model" if isinstance(source, (RewardModelScorer, ProcessRewardScorer)) \
                else name.rpartition(":")[2]
            return reward
        return [wrap(name, source) for name, source in zip(self.names, self.sources)]


def call_reward(source: Callable, name: str, prompts: list, answers: list[str]) -> torch.Tensor:
    try:
        scores = source(prompts, answers)
    except UserError:
        raise
    except Exception as err:  # user code: report it with its name instead of a deep traceback
        raise UserError(f"reward {name} raised {type(err).__name__}: {err}") from None
    return check_scores(scores, name, len(answers))


def check_scores(scores, source: str, n: int) -> torch.Tensor:
    """Rewards as a float tensor; a clear error for a wrong count or a non-finite value."""
    try:
        values = torch.as_tensor(scores, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"reward {source} returned {type(scores).__name__}, not numbers ({err}).") from None
    if values.numel() != n:
        raise UserError(f"reward {source} returned {values.numel()} values for {n} answers.")
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        raise UserError(f"reward {source} returned a non-finite value ({values[bad[0]].item()}) for answer {bad[0]}.")
    return values
