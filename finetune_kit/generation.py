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
    stop: tuple[str, ...] = ()  # texts that end the answer (not included in it)
    seed: int | None = None  # sampling seed: the same request gives the same answer

    def generate_kwargs(self, tokenizer=None) -> dict:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        stops = {"stop_strings": list(self.stop), "tokenizer": tokenizer} if self.stop and tokenizer else {}
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, **stops}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, **stops}


def cut_at_stop(text: str, stops) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


class _CountTokens(StoppingCriteria):
    """Never stops; records how many tokens were generated and whether the last one ended the sequence."""

    def __init__(self, prompt_length: int, eos_id, record: dict):
        self.prompt_length, self.eos_id, self.record = prompt_length, eos_id, record

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        self.record["tokens"] = input_ids.shape[1] - self.prompt_length
        self.record["eos"] = int(input_ids[0, -1]) == self.eos_id
        return False


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
                 stop: threading.Event | None = None, record: dict | None = None) -> Iterator[str]:
    """Yield the reply's text piece by piece; setting `stop` ends generation at the next token. `record` gets the
    number of generated tokens and whether the last ended the sequence (finish_reason `length` vs `stop`)."""
    stop = stop or threading.Event()
    record = {} if record is None else record
    inputs = encode_chat(model, tokenizer, messages, options.max_new_tokens)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []
    criteria = [_StopOnEvent(stop), _CountTokens(inputs["input_ids"].shape[1], tokenizer.eos_token_id, record)]

    def run():
        try:
            with torch.no_grad():
                model.generate(**inputs, **options.generate_kwargs(tokenizer), streamer=streamer,
                               pad_token_id=tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList(criteria))
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


def reply(model, tokenizer, messages: list[dict], options: GenerationOptions,
          stop: threading.Event | None = None) -> tuple[str, int, str]:
    """The whole reply at once (no streaming), the number of tokens it took (its end-of-sequence included) and
    OpenAI's finish_reason: `stop` (end of sequence or a stop string) or `length` (max_new_tokens reached). Setting
    `stop` (a client that hung up) ends generation at the next token."""
    inputs = encode_chat(model, tokenizer, messages, options.max_new_tokens)
    criteria = StoppingCriteriaList([_StopOnEvent(stop or threading.Event())])
    with torch.no_grad():
        output = model.generate(**inputs, **options.generate_kwargs(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                stopping_criteria=criteria)
    new = output[0, inputs["input_ids"].shape[1]:]
    # Count up to and including the first end-of-sequence token, as OpenAI counts the stop.
    eos = (new == tokenizer.eos_token_id).nonzero()
    used = int(eos[0]) + 1 if len(eos) else len(new)
    text, stopped = cut_at_stop(tokenizer.decode(new[:used], skip_special_tokens=True), options.stop)
    return text, used, "stop" if stopped or len(eos) or used < options.max_new_tokens else "length"


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
