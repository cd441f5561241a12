"""The OpenAI-compatible server, exercised with the real `openai` client over 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    import uvicorn

    import finetune_kit.serve as serve_module
    from conftest import tiny_llama
    from finetune_kit.models import load_for_inference

    # A long context window, so a stream can run thousands of tokens when nobody stops it.
    model, tokenizer = load_for_inference(str(tiny_llama(tmp_path_factory.mktemp("served"), tokenizer,
                                                         max_positions=8192)))
    steps = [0]
    model.register_forward_hook(lambda *args: steps.__setitem__(0, steps[0] + 1))
    calls: list[dict] = []
    original = serve_module.stream_reply

    def recording_stream_reply(*args, **kwargs):
        # Record each streamed generation: how many pieces it yielded and whether its reader left early.
        record = {"pieces": 0, "closed_early": False, "done": False}
        calls.append(record)
        try:
            for piece in original(*args, **kwargs):
                record["pieces"] += 1
                try:
                    yield piece
                except GeneratorExit:
                    record["closed_early"] = True
                    raise
        finally:
            record["done"] = True

    serve_module.stream_reply = recording_stream_reply
    port = free_port()
    app = serve_module.create_app(model, tokenizer, "tiny", max_tokens_limit=6000)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield {"base": f"http://127.0.0.1:{port}", "calls": calls, "steps": steps}
    server.should_exit = True
    thread.join(timeout=10)
    serve_module.stream_reply = original


def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0)


def ask(server, content: str, **kwargs) -> str:
    result = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=20, **kwargs)
    return result.choices[0].message.content


def test_health_and_models(server):
    assert httpx.get(server["base"] + "/health").json()["status"] == "ok"
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_non_streaming_and_streaming_agree(server):
    result = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say apple"}], temperature=0, max_tokens=20)
    text = result.choices[0].message.content
    assert text and result.usage.completion_tokens > 0 and result.choices[0].finish_reason in ("stop", "length")
    stream = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say apple"}], temperature=0, max_tokens=20, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed == text


def test_concurrent_requests_each_get_their_own_answer(server):
    prompts = [f"Say {w}" for w in ("apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano")]
    alone = [ask(server, p) for p in prompts]
    assert len(set(alone)) > 1  # the prompts really lead to different answers
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda p: ask(server, p), prompts))
    assert together == alone


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "word " * 9000}]}, "messages"),
])
def test_bad_requests_get_openai_style_400s(server, body, param):
    response = httpx.post(server["base"] + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert httpx.get(server["base"] + "/health").status_code == 200  # the server stays up


def test_context_overflow_has_its_code(server):
    body = {"messages": [{"role": "user", "content": "word " * 9000}]}
    error = httpx.post(server["base"] + "/v1/chat/completions", json=body).json()["error"]
    assert error["code"] == "context_length_exceeded" and "context window" in error["message"]


def test_client_disconnect_stops_generation(server):
    body = {"messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 6000, "temperature": 0,
            "stream": True}
    before_calls, before_steps = len(server["calls"]), server["steps"][0]
    with httpx.stream("POST", server["base"] + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    # The client hung up after a few chunks: generation must stop far short of its 6000 tokens.
    record = server["calls"][before_calls]
    deadline = time.time() + 30
    while not record["done"] and time.time() < deadline:
        time.sleep(0.05)
    assert record["done"] and record["closed_early"], record
    assert server["steps"][0] - before_steps < 2000, server["steps"][0] - before_steps
    assert ask(server, "Say apple")  # and the server is free for the next request


def test_stop_strings_end_the_answer_streaming_too(server):
    full = ask(server, "Say apple")
    stop = full[4:7]
    assert stop.strip() and full.find(stop) == 4  # a stop text from inside the unconstrained answer
    result = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say apple"}], temperature=0, max_tokens=20, stop=[stop])
    assert result.choices[0].message.content == full[:4] and result.choices[0].finish_reason == "stop"
    stream = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say apple"}], temperature=0, max_tokens=20, stop=stop,
        stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:4]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_length_limit_n_seed_and_usage(server):
    messages = [{"role": "user", "content": "Tell a long story"}]
    result = client(server).chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                    max_completion_tokens=3)
    assert result.choices[0].finish_reason == "length" and result.usage.completion_tokens == 3
    stream = list(client(server).chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=3,
                                                         stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"
    assert stream[-1].choices == [] and stream[-1].usage.completion_tokens == 3
    sampled = [client(server).chat.completions.create(model="tiny", messages=messages, temperature=1.0, max_tokens=8,
                                                      seed=7, n=2) for _ in range(2)]
    texts = [[c.message.content for c in r.choices] for r in sampled]
    assert texts[0] == texts[1] and len(texts[0]) == 2  # a seed repeats the answers; n gives n choices


def test_text_parts_and_the_developer_role_are_accepted(server):
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "apple"}]
    result = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}],
        temperature=0, max_tokens=20)
    assert result.choices[0].message.content


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
    ({"n": 2, "stream": True}, "n"),
])
def test_parameters_it_cannot_honour_are_refused_by_name(server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(**{"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 4, **extra})
    assert err.value.body["param"] == param


def test_unknown_paths_and_methods_answer_in_openai_shape(server):
    missing = httpx.post(server["base"] + "/v1/completions", json={})
    wrong = httpx.get(server["base"] + "/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and "GET /v1/chat/completions" in wrong.json()["error"]["message"]


def test_a_non_streaming_request_whose_client_left_stops_generating(server):
    before = server["steps"][0]
    body = {"messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 6000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server["base"] + "/v1/chat/completions", json=body, timeout=1.5)
    start = time.time()
    assert ask(server, "Say apple")  # the next request is not stuck behind 6000 tokens nobody will read
    assert time.time() - start < 15 and server["steps"][0] - before < 3000
