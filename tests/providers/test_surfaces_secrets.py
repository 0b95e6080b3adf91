"""Secrets planted in every field a request of each API surface can carry them never reach a
provider (the fakes record the bytes they get), natively passed through or translated; and
secrets a provider answers with never reach the client, split across stream events or not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ..harness import Server
from .conftest import provider_env
from .fakes import FakeProvider

OPENAI_KEY = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 2
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
ENV_SECRET = "correct-horse-battery-staple-42"
SECRETS = (OPENAI_KEY, GITHUB, ENV_SECRET)


def s(i: int) -> str:
    """Text with secret number ``i`` (of three) inside."""
    return f"use {SECRETS[i % 3]} now"


@pytest.fixture(scope="module")
def srv(fakes: dict[str, FakeProvider]) -> Iterator[Server]:
    env = {**provider_env(fakes), "DEPLOY_TOKEN": ENV_SECRET, "IIR_UPSTREAM_RETRIES": "0"}
    with Server(env=env) as server:
        yield server


def responses_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "instructions": s(0),
        "input": [
            {"role": "system", "content": s(1)},
            {"role": "user", "content": s(2)},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": s(3)}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": s(4)}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": GITHUB,
                "arguments": orjson.dumps({"token": OPENAI_KEY}).decode(),
            },
            {"type": "function_call_output", "call_id": "call_1", "output": s(5)},
            {"role": "user", "content": s(6)},
        ],
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": s(7),
                "parameters": {"type": "object", "description": s(8)},
            }
        ],
        "metadata": {"note": s(9)},
        "user": s(10),
    }


def messages_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "system": [{"type": "text", "text": s(0)}],
        "messages": [
            {"role": "user", "content": s(1)},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": s(2)},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": GITHUB,
                        "input": {"token": OPENAI_KEY, "nested": [s(3)]},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": s(4)},
                    {"type": "text", "text": s(5)},
                ],
            },
            {"role": "assistant", "content": s(6)},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": s(7)}],
                    },
                    {"type": "text", "text": s(8)},
                ],
            },
        ],
        "tools": [
            {
                "name": "lookup",
                "description": s(9),
                "input_schema": {"type": "object", "description": s(10)},
            }
        ],
        "metadata": {"user_id": s(11)},
    }


def completions_body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": [s(0), s(1)], "suffix": s(2), "user": s(3), "stop": [s(4)]}


def embeddings_body(model: str) -> dict[str, Any]:
    return {"model": model, "input": [s(0), s(1), s(2)], "user": s(3)}


# (route, body builder, models: the first gets the request natively, the others translated)
CASES: list[tuple[str, Any, list[str]]] = [
    (
        "/v1/responses",
        responses_body,
        ["openai/fake-large", "openllama/fake-small", "anthropic/claude-x"],
    ),
    (
        "/v1/messages",
        messages_body,
        ["anthropic/claude-x", "openai/fake-large", "openllama/fake-small"],
    ),
    ("/v1/completions", completions_body, ["openai/fake-large", "openllama/fake-small"]),
    ("/v1/embeddings", embeddings_body, ["openai/text-embedding-3-small"]),
]


@pytest.mark.parametrize(
    ("route", "build", "model", "stream"),
    [
        (route, build, model, stream)
        for route, build, models in CASES
        for model in models
        for stream in ((False,) if route == "/v1/embeddings" else (False, True))
    ],
)
def test_no_planted_secret_reaches_a_provider(
    srv: Server,
    fakes: dict[str, FakeProvider],
    route: str,
    build: Any,
    model: str,
    stream: bool,
) -> None:
    body = {**build(model), "stream": stream}
    r = httpx.post(srv.url + route, json=body, headers=srv.auth, timeout=30)
    assert r.status_code == 200, r.text
    fake = fakes[model.split("/")[0]]
    sent = fake.chat_requests()[-1]
    wire = orjson.dumps(sent.body).decode() + orjson.dumps(sent.headers).decode()
    for secret in SECRETS:
        assert secret not in wire, (route, model, secret)
    assert "REDACTED" in wire
    for secret in SECRETS:
        assert secret not in r.text


@pytest.mark.parametrize("chunk_chars", [1, 4, 9])
@pytest.mark.parametrize(
    ("route", "model", "delta", "done"),
    [
        ("/v1/responses", "openai/fake-large", "response.output_text.delta", "text"),
        ("/v1/messages", "anthropic/claude-x", "content_block_delta", None),
        ("/v1/completions", "openllama/fake-small", "text", None),
    ],
)
def test_secrets_split_across_native_stream_events_are_scrubbed(
    srv: Server,
    fakes: dict[str, FakeProvider],
    route: str,
    model: str,
    delta: str,
    done: str | None,
    chunk_chars: int,
) -> None:
    fake = fakes[model.split("/")[0]]
    fake.reply = f"A {OPENAI_KEY} B {ENV_SECRET} C {GITHUB} D"
    fake.chunk_chars = chunk_chars
    body = {
        "model": model,
        "input": "?",
        "prompt": "?",
        "messages": [{"role": "user", "content": "?"}],
        "stream": True,
        "max_tokens": 100,
    }
    r = httpx.post(srv.url + route, json=body, headers=srv.auth, timeout=30)
    assert r.status_code == 200
    for secret in SECRETS:
        assert secret not in r.text
    clean = "A REDACTED B REDACTED C REDACTED D"
    pieces, whole = [], None
    for block in r.text.strip().split("\n\n"):
        if block == "data: [DONE]":
            continue
        data = orjson.loads(next(ln for ln in block.split("\n") if ln.startswith("data: "))[6:])
        if data.get("type") == delta:
            pieces.append(
                data["delta"]["text"] if isinstance(data["delta"], dict) else data["delta"]
            )
        if delta == "text" and data.get("choices"):  # legacy completions: text chunks
            pieces.append(data["choices"][0]["text"])
        if done and data.get("type") == delta.replace(".delta", ".done"):
            whole = data[done]
    assert "".join(pieces).strip() == clean and whole in (None, clean)
    plain = httpx.post(srv.url + route, json={**body, "stream": False}, headers=srv.auth)
    for secret in SECRETS:
        assert secret not in plain.text
    assert clean in plain.text
