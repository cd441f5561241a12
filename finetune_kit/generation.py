"""Generation for trained models: streamed replies that can be stopped, batched answers, context checks.

Streaming uses transformers' `TextIteratorStreamer` with `generate` in a background thread, so text reaches the
user as it forms. A `threading.Event` stops generation between tokens (Ctrl-C in the chat, a client that hung up
on the server) so no compute is spent on an answer nobody reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from finetune_kit.errors import UserError


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p}


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def context_window(model) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def encode_chat(model, tokenizer, messages: list[dict], max_new_tokens: int) -> dict:
    """Token ids of a conversation ready for the assistant's reply; an error if it cannot fit the context window."""
    if not tokenizer.chat_template:
        raise UserError("this tokenizer has no chat template, so a conversation cannot be rendered.")
    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    window = context_window(model)
    needed = batch["input_ids"].shape[1] + max_new_tokens
    if window is not None and needed > window:
        raise UserError(
            f"the conversation is {batch['input_ids'].shape[1]} tokens; with max_new_tokens={max_new_tokens} that "
            f"exceeds the model's context window of {window} tokens. Shorten it or lower max_new_tokens."
        )
    return {k: v.to(model.device) for k, v in batch.items()}


def stream_reply(model, tokenizer, messages: list[dict], options: GenerationOptions,
                 stop: threading.Event | None = None) -> Iterator[str]:
    """Yield the reply's text piece by piece; setting `stop` ends generation at the next token."""
    stop = stop or threading.Event()
    inputs = encode_chat(model, tokenizer, messages, options.max_new_tokens)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run():
        try:
            with torch.no_grad():
                model.generate(**inputs, **options.generate_kwargs(), streamer=streamer,
                               pad_token_id=tokenizer.pad_token_id,
                               stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]))
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:
        stop.set()  # the consumer stopped early (Ctrl-C, disconnect) or finished: either way, no more tokens
        thread.join()
    if errors:
        raise errors[0]


def reply(model, tokenizer, messages: list[dict], options: GenerationOptions) -> tuple[str, int]:
    """The whole reply at once (no streaming) and the number of tokens it took, its end-of-sequence included."""
    inputs = encode_chat(model, tokenizer, messages, options.max_new_tokens)
    with torch.no_grad():
        output = model.generate(**inputs, **options.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    new = output[0, inputs["input_ids"].shape[1]:]
    # Count up to and including the first end-of-sequence token, as OpenAI counts the stop.
    eos = (new == tokenizer.eos_token_id).nonzero()
    used = int(eos[0]) + 1 if len(eos) else len(new)
    return tokenizer.decode(new[:used], skip_special_tokens=True), used


def generate_batch(model, tokenizer, prompts: list[str], options: GenerationOptions) -> list[str]:
    """Replies to single-turn prompts, batched with left padding so every reply starts right after its prompt."""
    tokenizer.padding_side = "left"
    batch = tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts],
        add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True,
    )
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.no_grad():
        output = model.generate(**batch, **options.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
