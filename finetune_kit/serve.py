"""`finetune-kit serve`: an OpenAI-compatible chat server (FastAPI + uvicorn), on loopback by default.

    POST /v1/chat/completions   (stream: true for server-sent events)
    GET  /v1/models
    GET  /health

One model answers one request at a time: requests wait on a lock in arrival order, so concurrent clients each get
the answer they would get alone. A client that disconnects stops its generation (streaming or not).

OpenAI's parameters are honoured (max_tokens / max_completion_tokens, temperature, top_p, stop, n, seed,
stream_options.include_usage, content as a list of text parts) or refused with a 400 that names them (tools,
logprobs, image parts, penalties, ...): never silently ignored.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from finetune_kit.errors import UserError
from finetune_kit.generation import (
    GenerationOptions,
    cut_at_stop,
    encode_chat,
    reply,
    stream_reply,
)

# Accepted and without effect on a local model's answer: OpenAI's bookkeeping fields.
BOOKKEEPING = {"user", "metadata", "store", "service_tier"}


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def text_parts(cls, value: Any) -> Any:
        """A list of content parts is accepted when every part is text (joined); an image or audio part is not."""
        if not isinstance(value, list):
            return value
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"only text content parts are supported, not '{kind}'")
        return "".join(part["text"] for part in value)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest is checked by unsupported(): refused by name, not ignored

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = None

    def unsupported(self) -> str | None:
        """The first parameter this server cannot honour, or None."""
        for name, value in (self.model_extra or {}).items():
            if name in BOOKKEEPING or value in (None, False, [], {}, 0, 0.0):
                continue  # an explicit "off" asks for nothing
            if name == "response_format" and value == {"type": "text"}:
                continue
            return name
        if self.n > 1 and self.stream:
            return "n"
        if isinstance(self.stop, list) and len(self.stop) > 4:
            return "stop"
        return None


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}})


def create_app(model, tokenizer, model_name: str, max_tokens_limit: int = 1024) -> FastAPI:
    app = FastAPI(title="finetune_kit server")
    lock = asyncio.Lock()  # one generation at a time; waiting requests queue here in arrival order

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p != "body")
        return openai_error(400, f"{param}: {first['msg']}", param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404 / 405 in OpenAI's shape, as its clients expect
        return openai_error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                            code="not_found" if exc.status_code == 404 else None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "finetune_kit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if (name := body.unsupported()) is not None:
            return openai_error(400, f"{name}: not supported by this server (a local finetune_kit model); leave it "
                                "out.", param=name, code="unsupported_parameter")
        if body.max_tokens and body.max_completion_tokens and body.max_tokens != body.max_completion_tokens:
            return openai_error(400, "max_tokens and max_completion_tokens differ; give one.", param="max_tokens")
        max_tokens = body.max_completion_tokens or body.max_tokens or min(256, max_tokens_limit)
        if max_tokens > max_tokens_limit:
            return openai_error(400, f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}.",
                                param="max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        # OpenAI's developer role is the system role of older models and of chat templates
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in body.messages]
        try:
            prompt_tokens = encode_chat(model, tokenizer, messages, max_tokens)["input_ids"].shape[1]
        except UserError as err:
            return openai_error(400, str(err), param="messages", code="context_length_exceeded")
        stops = tuple([body.stop] if isinstance(body.stop, str) else body.stop or ())
        options = GenerationOptions(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                    stop=stops, seed=body.seed)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_events(messages, options, meta, prompt_tokens, usage),
                                     media_type="text/event-stream")
        choices, completion_tokens = [], 0
        async with lock:
            for index in range(body.n):
                stop = threading.Event()
                job = asyncio.create_task(asyncio.to_thread(reply, model, tokenizer, messages, options, stop))
                while not job.done():  # a client that hung up stops the generation, so the next request runs
                    await asyncio.wait({job}, timeout=0.2)
                    if not job.done() and await request.is_disconnected():
                        stop.set()
                text, tokens, finish = await job
                if stop.is_set():
                    return JSONResponse(status_code=499, content={})  # nobody is listening
                completion_tokens += tokens
                choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish})
                options.seed = None if options.seed is None else options.seed + 1  # n different, reproducible
        return {**meta, "object": "chat.completion", "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def _events(messages, options, meta, prompt_tokens: int, include_usage: bool):
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
            payload = {**meta, "object": "chat.completion.chunk", "choices": choices}
            payload.update({"usage": usage} if usage else {})
            return f"data: {json.dumps(payload)}\n\n"

        async with lock:
            stop, record = threading.Event(), {}
            pieces = stream_reply(model, tokenizer, messages, options, stop, record)
            done = object()
            try:
                yield chunk({"role": "assistant"})
                # Text that could still grow into a stop string is held back until it cannot.
                held, stopped = "", False
                while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
                    text, stopped = cut_at_stop(held + piece, options.stop)
                    if stopped:
                        held = text
                        break
                    keep = max((k for s in options.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                    held, ready = text[len(text) - keep:], text[:len(text) - keep]
                    if ready:
                        yield chunk({"content": ready})
                if held:
                    yield chunk({"content": held})
                length = not stopped and not record.get("eos") and record.get("tokens", 0) >= options.max_new_tokens
                yield chunk({}, finish="length" if length else "stop")
                if include_usage:  # OpenAI's last chunk: no choices, the usage of the whole answer
                    used = record.get("tokens", 0)
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                             "total_tokens": prompt_tokens + used}
                    yield chunk({}, usage=usage)
                yield "data: [DONE]\n\n"
            finally:
                # Reached on normal completion and when the client disconnects (the task is cancelled).
                stop.set()
                await asyncio.to_thread(pieces.close)

    return app


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def serve(model, tokenizer, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          max_tokens_limit: int = 1024) -> None:
    import uvicorn

    if not port_is_free(host, port):
        raise UserError(f"port {port} on {host} is already in use; pick another with --port.")
    uvicorn.run(create_app(model, tokenizer, model_name, max_tokens_limit), host=host, port=port, log_level="info")
