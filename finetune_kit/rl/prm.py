"""A process reward model (a run of the prm recipe) as the reward of GRPO / RLOO / PPO, and the step scoring the recipe
uses for its held-out solution ranking: one function, so the ranking measures what the reward will be.

An answer is split at the run's `step_separator` into steps (blank pieces dropped, each stripped), put after the
prompt as in training (tasks/steps.encode), and each step's P(right) is read at the separator token after it; the
answer's reward is the run's `solution_score` of those (min by default), in [0, 1]. An answer with no step, or whose
steps all fall beyond max_length, scores 0. A conversation prompt becomes its turns' contents, one per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from finetune_kit.errors import UserError
from finetune_kit.tasks.steps import IGNORE, encoder, solution_score

RECIPE = "prm"


def run_folder(path: str) -> Path | None:
    """The prm run a path names: the run folder, or the run holding a checkpoint-N folder; None for anything else."""
    for folder in (Path(path).expanduser(), Path(path).expanduser().parent):
        info = folder / "run_info.json"
        try:
            if info.is_file() and json.loads(info.read_text()).get("recipe") == RECIPE:
                return folder
        except (OSError, json.JSONDecodeError):
            return None
    return None


def split_steps(answer: str, separator: str) -> list[str]:
    return [piece.strip() for piece in answer.split(separator) if piece.strip()]


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(str(turn.get("content", "")) for turn in prompt)
    return str(prompt)


@torch.no_grad()
def step_probabilities(model, tokenizer, prompts: list[str], step_lists: list[list[str]], separator: str,
                       max_length: int, batch_size: int = 16) -> list[list[float]]:
    """P(step is right) of each step that fits within max_length, per solution, from one forward pass each."""
    encoded = encoder(tokenizer, separator, max_length)(
        {"prompt": prompts, "completions": step_lists, "labels": [[True] * len(s) for s in step_lists]})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device, training = next(model.parameters()).device, model.training
    model.eval()
    # Batches of similar lengths pad less; the results go back in the order given.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded["input_ids"][i]))
    out: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids = [encoded["input_ids"][i] for i in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
        right = model(input_ids=input_ids, attention_mask=mask).logits.float().softmax(-1)[..., 1].cpu().tolist()
        for i, row in zip(batch, right):
            out[i] = [p for p, label in zip(row, encoded["labels"][i]) if label != IGNORE]
    model.train(training)
    return out


class ProcessRewardScorer:
    """Scores (prompt, answer) pairs with a prm run: the answer's solution score, one number in [0, 1] each."""

    def __init__(self, path: str, device: torch.device | str = "cpu", batch_size: int = 16):
        from finetune_kit.files import read_yaml_mapping
        from finetune_kit.models import load_for_inference

        folder = run_folder(path)
        if folder is None:
            raise UserError(f"reward_model {path}: not a run of the prm recipe (its run_info.json names another).")
        # How the prm run split and scored steps: its saved config says, and scoring any other way would be wrong.
        settings = read_yaml_mapping(folder / "config.yaml")
        needed = ("step_separator", "max_length", "solution_score")
        missing = [key for key in needed if key not in (settings or {})]
        if missing:
            state = "is missing or not YAML" if settings is None else f"lacks {', '.join(missing)}"
            raise UserError(f"reward_model {path}: {folder / 'config.yaml'} {state}; the prm run saves "
                            f"{', '.join(needed)} there: restore the file or retrain the prm run.")
        self.separator, self.max_length = settings["step_separator"], settings["max_length"]
        self.how = settings["solution_score"]
        model, self.tokenizer = load_for_inference(path)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not type(base).__name__.endswith("ForTokenClassification") or base.config.num_labels != 2:
            raise UserError(f"reward_model {path} is a {type(base).__name__} with {base.config.num_labels} labels, not "
                            "the 2-way token classifier a prm run saves.")
        self.model, self.batch_size = model.to(device), batch_size
        self.__name__ = f"process reward model {path}"

    def __call__(self, prompts: list, answers: list[str]) -> list[float]:
        steps = [split_steps(answer, self.separator) for answer in answers]
        probabilities = step_probabilities(self.model, self.tokenizer, [prompt_text(p) for p in prompts], steps,
                                           self.separator, self.max_length, self.batch_size)
        return [solution_score(p, self.how) for p in probabilities]
