"""Detect instruction-data formats and normalise rows to trl's shapes, validating each row on the way.

Chat formats (alpaca, sharegpt, messages) become trl's conversational `{"messages": [{"role", "content"}]}`;
`prompt`/`completion` and plain `text` rows pass through in trl's own shapes. Every problem names the row.
"""

from __future__ import annotations

from typing import Any

from finetune_kit.errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "function_call": "assistant", "tool": "tool"}
MESSAGE_ROLES = {"system", "user", "assistant", "tool"}

# What each format needs, for detection and for the "unknown format" message.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


def apply_column_mapping(row: dict[str, Any], mapping: dict[str, str] | None) -> dict[str, Any]:
    """Rename the user's columns to the format's names: mapping is {format_name: user_column}."""
    if not mapping:
        return row
    row = dict(row)
    for canonical, user_column in mapping.items():
        if user_column in row:
            row[canonical] = row.pop(user_column)
    return row


def require_mapped_columns(rows: list[tuple[str, dict]], mapping: dict[str, str] | None, source: str) -> None:
    """A column_mapping entry whose column no row of `source` has is a typo (apply_column_mapping skips it)."""
    for canonical, user_column in (mapping or {}).items():
        if rows and not any(user_column in row or canonical in row for _, row in rows):
            raise DataError(f"{source}: column_mapping maps {canonical} to column '{user_column}', which no row has "
                            f"(columns of row 1: {', '.join(sorted(rows[0][1]))}).")


def detect_format(row: dict[str, Any], where: str) -> str:
    """The format of a row, judged by its columns."""
    for name, columns in FORMAT_COLUMNS.items():
        if all(c in row for c in columns):
            return name
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMAT_COLUMNS.items())
    raise DataError(
        f"{where}: unknown data format, columns are {sorted(row)}. Expected one of ({expected}). "
        "Set column_mapping (e.g. {instruction: question, output: answer}) or dataset_format."
    )


def normalise(row: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    """One row in trl's shape for its format; `DataError` naming row and field when it is malformed."""
    return _NORMALISERS[fmt](row, where)


def _text_field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise DataError(f"{where}: missing field '{key}'.")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}.")
    if required and not value.strip():
        raise DataError(f"{where}: field '{key}' is empty.")
    return value


def _check_conversation(messages: list[dict[str, str]], where: str, field: str) -> list[dict[str, str]]:
    if not messages:
        raise DataError(f"{where}: field '{field}' holds no turns.")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: field '{field}': the conversation ends with a '{messages[-1]['role']}' turn, not an "
            "assistant turn, so there is nothing to learn from it."
        )
    return messages


def _from_messages(row: dict[str, Any], where: str) -> dict[str, Any]:
    turns = row["messages"]
    if not isinstance(turns, list):
        raise DataError(f"{where}: field 'messages' must be a list of turns, got {type(turns).__name__}.")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: messages[{i}] must be an object with role and content.")
        spot = f"{where}: messages[{i}]"
        role = turn.get("role")
        if role not in MESSAGE_ROLES:
            raise DataError(f"{spot}.role is {role!r}; expected one of {sorted(MESSAGE_ROLES)}.")
        content = _text_field(turn, "content", spot)
        messages.append({"role": role, "content": content})
    return {"messages": _check_conversation(messages, where, "messages")}


def _from_sharegpt(row: dict[str, Any], where: str) -> dict[str, Any]:
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise DataError(f"{where}: field 'conversations' must be a list of turns, got {type(turns).__name__}.")
    messages = []
    system = _text_field(row, "system", where, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        spot = f"{where}: conversations[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{spot} must be an object.")
        if "role" in turn and "content" in turn:  # OpenAI-style turns under a 'conversations' column
            turn = {"from": turn["role"], "value": turn["content"]}
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{spot}.from is {speaker!r}; expected one of {sorted(SHAREGPT_ROLES)}.")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": _text_field(turn, "value", spot)})
    return {"messages": _check_conversation(messages, where, "conversations")}


def _from_alpaca(row: dict[str, Any], where: str) -> dict[str, Any]:
    instruction = _text_field(row, "instruction", where)
    extra = _text_field(row, "input", where, required=False)
    output = _text_field(row, "output", where)
    messages = []
    system = _text_field(row, "system", where, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [question, answer] pairs.")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise DataError(f"{where}: history[{i}] must be a [question, answer] pair of strings.")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    # LLaMA-Factory joins instruction and input with a newline; we do the same so data behaves the same.
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages}


def _from_prompt_completion(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"prompt": _text_field(row, "prompt", where), "completion": _text_field(row, "completion", where)}


def _from_text(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"text": _text_field(row, "text", where)}


_NORMALISERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "text": _from_text,
}
