"""`finetune-kit serve`: an OpenAI-compatible chat server (FastAPI + uvicorn), on loopback by default.

    POST /v1/chat/completions   (stream: true for server-sent events)
    GET  /v1/models
    GET  /health

One model answers one request at a time: requests wait on a lock in arrival order, so concurrent clients each get
the answer they would get alone. A client that disconnects mid-stream stops its generation.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from finetune_kit.errors import UserError
from finetune_kit.generation import GenerationOptions, encode_chat, reply, stream_reply


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False


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

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "finetune_kit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        max_tokens = body.max_tokens or min(256, max_tokens_limit)
        if max_tokens > max_tokens_limit:
            return openai_error(400, f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}.",
                                param="max_tokens")
        messages = [m.model_dump() for m in body.messages]
        try:
            prompt_tokens = encode_chat(model, tokenizer, messages, max_tokens)["input_ids"].shape[1]
        except UserError as err:
            return openai_error(400, str(err), param="messages", code="context_length_exceeded")
        options = GenerationOptions(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_name}
        if body.stream:
            return StreamingResponse(_events(messages, options, meta), media_type="text/event-stream")
        async with lock:
            text, completion_tokens = await asyncio.to_thread(reply, model, tokenizer, messages, options)
        finish = "length" if completion_tokens >= max_tokens else "stop"
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def _events(messages, options, meta):
        def chunk(delta: dict, finish: str | None = None) -> str:
            payload = {**meta, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload)}\n\n"

        async with lock:
            stop = threading.Event()
            pieces = stream_reply(model, tokenizer, messages, options, stop)
            done = object()
            try:
                yield chunk({"role": "assistant"})
                while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
                    if piece:
                        yield chunk({"content": piece})
                yield chunk({}, finish="stop")
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
