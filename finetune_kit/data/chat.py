"""Tokenize conversations with a loss mask on the assistant turns, for any prefix-preserving chat template.

trl's `assistant_only_loss` needs `{% generation %}` markers, which most checkpoints' templates (SmolLM2's
included) lack, and trl patches only templates it knows. Rendering the conversation turn by turn works with any
template whose rendering of the first k turns is a prefix of the whole: the assistant span of turn k is the text
between "turns < k + generation prompt" and "turns <= k". The end-of-turn token (EOS) falls inside that span, so
the model learns to stop, and because the mask is positional, pad == eos cannot remove it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_kit.errors import UserError


def read_chat_template(path: str) -> str:
    """The Jinja text of `chat_template_path`: read by the sft recipe, the preflight and `check` alike."""
    template = Path(path).expanduser()
    if not template.is_file():
        raise UserError(f"chat_template_path: file not found: {path}")
    try:
        return template.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"chat_template_path {path}: not UTF-8 text ({err.reason} at byte {err.start}); a chat template "
                        "is a Jinja text file.") from None


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (end-of-turn token included)."""
    text = render(tokenizer, messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = render(tokenizer, messages[:k], add_generation_prompt=True)
        end_text = render(tokenizer, messages[: k + 1])
        if not (text.startswith(end_text) and end_text.startswith(start_text)):
            raise UserError(
                "the chat template does not render conversations prefix by prefix (turn "
                f"{k} renders differently inside the whole conversation), so assistant turns cannot be masked. "
                "Set chat_template_path to a template without history-dependent rendering."
            )
        # Trailing whitespace after the end-of-turn token belongs to the template's layout, not the answer.
        end = len(end_text.rstrip())
        spans.append((len(start_text), end))
    return text, spans


def tokenize_conversation(tokenizer, messages: list[dict[str, str]]) -> dict[str, Any]:
    """`input_ids` and `assistant_masks` (1 on tokens the model should learn to produce)."""
    text, spans = assistant_spans(tokenizer, messages)
    # The template already wrote any BOS / special tokens as text, so the tokenizer must not add them again.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= tok_start < end for start, end in spans)) for tok_start, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}


def end_of_turn_is_trained(tokenizer) -> bool:
    """Whether the EOS token closing an assistant turn carries loss, checked on a sample conversation."""
    sample = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    tokens = tokenize_conversation(tokenizer, sample)
    eos = tokenizer.eos_token_id
    return any(t == eos and m for t, m in zip(tokens["input_ids"], tokens["assistant_masks"]))
