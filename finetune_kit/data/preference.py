"""Preference (DPO / reward model) and unpaired (KTO) rows in the shapes people have, normalised to trl's shapes.

Pairs become `{"prompt", "chosen", "rejected"}`, conversational (lists of turns) or plain strings, which trl's
`RewardTrainer` and `DPOTrainer` take as they are. Accepted input:

- `prompt` / `chosen` / `rejected` as strings, or as conversations (`prompt` may be a string or a list of turns,
  `chosen` / `rejected` a string, one turn or a list of assistant turns);
- sharegpt: `conversations` plus `chosen` / `rejected` turns (LLaMA-Factory's `dpo_en_demo.json`);
- whole dialogues in `chosen` / `rejected` that share a prefix, as lists of turns or as Anthropic HH text
  (`\\n\\nHuman: ... \\n\\nAssistant: ...`): the shared turns become the prompt.

Unpaired rows become `{"prompt", "completion", "label"}`: `prompt` / `completion` / `label`, or `messages` (the last
assistant turn is the completion) / `conversations` plus a boolean `label` (LLaMA-Factory's `kto_en_demo.json`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from finetune_kit.data.formats import MESSAGE_ROLES, SHAREGPT_ROLES
from finetune_kit.errors import DataError

logger = logging.getLogger(__name__)
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def normalise_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One preference pair in trl's shape; `DataError` naming the row and field when it is not usable."""
    for side in ("chosen", "rejected"):
        if side not in row or row[side] is None:
            raise DataError(f"{where}: missing field '{side}' (preference rows need chosen and rejected).")
    if "conversations" in row:
        pair = {"prompt": _turns(row["conversations"], where, "conversations"),
                "chosen": _answer(row["chosen"], where, "chosen"), "rejected": _answer(row["rejected"], where, "rejected")}
    elif "prompt" in row:
        pair = _explicit_pair(row, where)
    else:
        pair = _implicit_pair(row, where)
    if pair["chosen"] == pair["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair prefers nothing.")
    return pair


def normalise_scored_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A reward-model pair: normalise_pair's, plus its `margin` (None when the row has none): a number, how much better
    chosen is, which trl's RewardTrainer subtracts inside the loss (Llama 2's margin loss). Always a key, so a column
    given on some rows only is seen (datasets takes its columns from the first row)."""
    pair, margin = normalise_pair(row, where), row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        raise DataError(f"{where}: field 'margin' must be a finite number (how much better 'chosen' is), got "
                        f"{margin!r}.")
    return {**pair, "margin": None if margin is None else float(margin)}


def margins_on_every_row_or_none(dataset, where: str):
    """The dataset with its margins when every row has one, without the column when none has (trl reads `margin` on
    every row of a batch once the first has one); margins on some rows only are refused."""
    if dataset is None or "margin" not in dataset.column_names:
        return dataset
    missing = [i for i, margin in enumerate(dataset["margin"]) if margin is None]
    if len(missing) == len(dataset):
        return dataset.remove_columns("margin")
    if missing:
        raise DataError(f"{where}: {len(missing)} of {len(dataset)} rows have no 'margin' (the first: row "
                        f"{missing[0] + 1} as read); give every row a margin, or none.")
    return dataset


def require_both_labels(dataset, where: str) -> int:
    """KTO weighs desirable against undesirable rows: training rows of one label only are refused (by the kto recipe
    and `check` alike). Returns the number of desirable rows."""
    good = sum(dataset["label"])
    if good in (0, len(dataset)):
        raise DataError(f"{where}: every training row has label {bool(good)}; KTO needs both desirable and "
                        "undesirable examples: add rows of the other label.")
    return good


def normalise_unpaired(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One KTO row: prompt, completion and a boolean label (true: desirable)."""
    label = row.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: field 'label' must be true or false (desirable or not), got {label!r}.")
    if "prompt" in row and "completion" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return {"prompt": _text(prompt, where, "prompt"), "completion": _text(row["completion"], where,
                                                                                  "completion"), "label": label}
        return {"prompt": _turns(prompt, where, "prompt"), "completion": _answer(row["completion"], where, "completion"),
                "label": label}
    key = "messages" if "messages" in row else "conversations" if "conversations" in row else None
    if key is None:
        raise DataError(f"{where}: unpaired rows need prompt + completion + label, or messages + label; "
                        f"columns are {sorted(row)}.")
    turns = _turns(row[key], where, key)
    if turns[-1]["role"] != "assistant" or len(turns) < 2:
        raise DataError(f"{where}: field '{key}' must end with an assistant turn that follows a prompt.")
    return {"prompt": turns[:-1], "completion": turns[-1:], "label": label}


def _explicit_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt = row["prompt"]
    if isinstance(prompt, str) and isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        return {"prompt": _text(prompt, where, "prompt"), "chosen": _text(row["chosen"], where, "chosen"),
                "rejected": _text(row["rejected"], where, "rejected")}
    prompt_turns = [{"role": "user", "content": _text(prompt, where, "prompt")}] if isinstance(prompt, str) \
        else _turns(prompt, where, "prompt")
    return {"prompt": prompt_turns, "chosen": _answer(row["chosen"], where, "chosen"),
            "rejected": _answer(row["rejected"], where, "rejected")}


def _implicit_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Whole dialogues: the turns both sides share are the prompt, the rest are the answers."""
    sides = {side: _dialogue(row[side], where, side) for side in ("chosen", "rejected")}
    # Imported here, after the rows' own checks: importing trl takes seconds, and few datasets need it.
    from trl.data_utils import extract_prompt

    pair = extract_prompt(sides)
    if not pair["prompt"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' share no opening turns, so there is no prompt; "
                        "add a 'prompt' field.")
    for side in ("chosen", "rejected"):
        if not pair[side] or pair[side][0]["role"] != "assistant":
            raise DataError(f"{where}: field '{side}' has no assistant answer after the shared prompt.")
    return pair


def _dialogue(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if isinstance(value, list):
        return _turns(value, where, field)
    text = _text(value, where, field)
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        raise DataError(f"{where}: field '{field}' is a string without a shared prompt; give 'prompt' separately or "
                        "write the dialogue as '\\n\\nHuman: ...\\n\\nAssistant: ...'.")
    turns = [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
             for speaker, content in zip(parts[1::2], parts[2::2])]
    for i, turn in enumerate(turns):
        if not turn["content"] and i < len(turns) - 1:
            raise DataError(f"{where}: field '{field}': turn {i} ({turn['role']}) is empty.")
    if not turns[-1]["content"]:
        raise DataError(f"{where}: field '{field}': the final {turns[-1]['role']} turn is empty.")
    return turns


def _answer(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """A completion as a list of assistant turns: from a string, one turn, or a list of turns."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, where, field)}]
    turns = _turns([value] if isinstance(value, dict) else value, where, field)
    if turns[0]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}' must start with an assistant turn, got '{turns[0]['role']}'.")
    return turns


def _turns(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """OpenAI-style or sharegpt-style turns as `{"role", "content"}` dicts, each checked."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of turns, got {_kind(value)}.")
    turns = []
    for i, turn in enumerate(value):
        spot = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {spot} must be an object with role and content.")
        if "from" in turn:
            role = SHAREGPT_ROLES.get(turn["from"])
            content = turn.get("value")
        else:
            role, content = turn.get("role"), turn.get("content")
        if role not in MESSAGE_ROLES:
            raise DataError(f"{where}: {spot} has role {turn.get('role', turn.get('from'))!r}; expected one of "
                            f"{sorted(MESSAGE_ROLES)} (or sharegpt's {sorted(SHAREGPT_ROLES)}).")
        turns.append({"role": role, "content": _text(content, where, spot)})
    return turns


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {_kind(value)}.")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty.")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else "an empty list" if value == [] else type(value).__name__


def normalise_prompt(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A prompt for online RL (PPO / GRPO): `prompt` (text or turns), `messages` / `conversations` (a trailing
    assistant turn is dropped), or alpaca `instruction` (+ `input`). Text prompts become one user turn."""
    if "prompt" in row:
        prompt = row["prompt"]
        turns = [{"role": "user", "content": _text(prompt, where, "prompt")}] if isinstance(prompt, str) \
            else _turns(prompt, where, "prompt")
    elif "messages" in row or "conversations" in row:
        key = "messages" if "messages" in row else "conversations"
        turns = _turns(row[key], where, key)
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        if not turns:
            raise DataError(f"{where}: field '{key}' has no prompt turns before the answer.")
    elif "instruction" in row:
        extra = row.get("input") or ""
        text = _text(row["instruction"], where, "instruction") + (f"\n{extra}" if str(extra).strip() else "")
        turns = [{"role": "user", "content": text}]
    else:
        raise DataError(f"{where}: no prompt: expected a 'prompt', 'messages', 'conversations' or 'instruction' "
                        f"field; columns are {sorted(row)}.")
    if turns[-1]["role"] == "assistant":
        raise DataError(f"{where}: the prompt ends with an assistant turn; it must end with a user turn.")
    return {"prompt": turns}


def encode_prompt(tokenizer, prompt: list[dict[str, str]], max_length: int, where: str) -> list[int]:
    """Token ids of a prompt ready for the answer: chat template with the generation prompt, or plain text."""
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = ids["input_ids"]
    else:
        ids = tokenizer("\n".join(turn["content"] for turn in prompt))["input_ids"]
    if len(ids) > max_length:
        raise DataError(f"{where}: the prompt is {len(ids)} tokens, over max_prompt_length ({max_length}).")
    return ids


def pairs_with_answer_room(dataset, tokenizer, max_length: int, skip: bool, where: str):
    """The pairs whose prompt leaves at least one answer token within `max_length`, as trl's ORPO / CPO trainers
    (1.16) tokenize them: they keep the prompt whole and cut only the answers, so a prompt that fills max_length leaves
    empty answers, whose length-averaged log-probability is 0 / 0 (NaN: the first such batch ends the run). Such
    pairs are a `DataError` naming the first and how many; with `skip` (skip_invalid_rows) they are dropped and
    counted."""
    from trl.data_utils import maybe_apply_chat_template

    bos = tokenizer.bos_token_id

    def prompt_tokens(row) -> int:
        ids = tokenizer(maybe_apply_chat_template(row, tokenizer)["prompt"], add_special_tokens=False)["input_ids"]
        return len(ids) + (bos is not None and (not ids or ids[0] != bos))  # trl adds a BOS where there is none

    lengths = [prompt_tokens(row) for row in dataset]
    full = [i for i, n in enumerate(lengths) if n >= max_length]
    if not full:
        return dataset
    if not skip:
        raise DataError(f"{where}: {len(full)} of {len(dataset)} pairs have a prompt of max_length={max_length} "
                        f"tokens or more (row {full[0] + 1}: {lengths[full[0]]}), leaving no answer to score (this "
                        "recipe keeps prompts whole and cuts answers). Raise max_length, or set skip_invalid_rows: "
                        "true to drop them.")
    if len(full) == len(dataset):
        raise DataError(f"{where}: every prompt is max_length={max_length} tokens or longer; raise max_length.")
    logger.warning("%s: dropped %d of %d pairs whose prompt alone is max_length=%d tokens or more (skip_invalid_rows)",
                   where, len(full), len(dataset), max_length)
    dropped = set(full)
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])
