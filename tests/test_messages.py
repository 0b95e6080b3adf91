"""``/v1/messages`` and ``/v1/messages/count_tokens`` on ``iir/echo`` through the real server,
with the official ``anthropic`` SDK: answers, streams, auth by ``x-api-key``, Anthropic's error
shape, limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from .harness import Server


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture(scope="module")
def claude(srv: Server) -> anthropic.Anthropic:
    """The SDK as Claude Code's configuration points it: base URL and key (sent as x-api-key)."""
    return anthropic.Anthropic(base_url=srv.url, api_key=srv.key, max_retries=0)


def post(
    srv: Server, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    h = {"x-api-key": srv.key, "anthropic-version": "2023-06-01", **(headers or {})}
    return httpx.post(srv.url + "/v1/messages", json=body, headers=h, timeout=30)


def anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == kind and isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


def test_create_through_the_sdk(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="iir/echo",
        max_tokens=64,
        system=[{"type": "text", "text": "be nice"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.content[0].type == "text" and msg.content[0].text == "hello world"
    assert msg.stop_reason == "end_turn" and msg.model == "iir/echo"
    assert msg.usage.output_tokens == 2 and msg.usage.input_tokens > 0
    cut = claude.messages.create(
        model="iir/echo", max_tokens=1, messages=[{"role": "user", "content": "one two"}]
    )
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "one"  # type: ignore[union-attr]


def test_stream_is_anthropics_events(srv: Server, claude: anthropic.Anthropic) -> None:
    r = post(
        srv,
        {
            "model": "iir/echo",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "alpha beta"}],
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    names = []
    for block in r.text.strip().split("\n\n"):
        event, data = block.split("\n")
        name = event.removeprefix("event: ")
        assert orjson.loads(data.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    with claude.messages.stream(
        model="iir/echo", max_tokens=50, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "stream me" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 2


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(
        model="iir/echo", messages=[{"role": "user", "content": "a few words"}]
    )
    longer = claude.messages.count_tokens(
        model="iir/echo",
        system="a system prompt too",
        messages=[{"role": "user", "content": "a few words"}],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
    )
    assert 0 < short.input_tokens < longer.input_tokens


def test_auth_by_x_api_key_or_bearer(srv: Server) -> None:
    body = {"model": "iir/echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert post(srv, body).status_code == 200
    bearer = httpx.post(srv.url + "/v1/messages", json=body, headers=srv.auth, timeout=30)
    assert bearer.status_code == 200
    anthropic_error(
        httpx.post(srv.url + "/v1/messages", json=body, timeout=30), 401, "authentication_error"
    )
    wrong = post(srv, body, {"x-api-key": "not-the-key-0123456789"})
    anthropic_error(wrong, 403, "permission_error")
    # Chat completions still want the Authorization header.
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"x-api-key": srv.key}, json={})
    assert r.status_code == 401 and "detail" in r.json()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            {"max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},
            "temperature",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0].type",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "document", "source": {"type": "text", "data": "d"}}],
                    }
                ],
            },
            "document",
        ),
        # Anthropic's own (not in the document): refused on every other model, field named.
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "stop_sequences": ["a", "b", "c", "d", "e"],
            },
            "'stop_sequences'",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ],
            },
            "'messages[0].content[0].source.type'",
        ),
    ],
)
def test_bad_requests_are_400_in_anthropics_shape(
    srv: Server, body: dict[str, Any], words: str
) -> None:
    message = anthropic_error(
        post(srv, {"model": "iir/echo", **body}), 400, "invalid_request_error"
    )
    assert words in message


def test_whole_floats_count_as_integers(srv: Server) -> None:
    body = {"model": "iir/echo", "messages": [{"role": "user", "content": "a b c d"}]}
    r = post(srv, {**body, "max_tokens": 2.0, "top_k": 5.0})
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["usage"]["output_tokens"] == 2
    for name in ("max_tokens", "top_k"):
        message = anthropic_error(
            post(srv, {"max_tokens": 5, **body, name: 2.5}), 400, "invalid_request_error"
        )
        assert f"'{name}'" in message  # the field is named


def test_claude_names_mean_anthropic(srv: Server) -> None:
    body = {
        "model": "claude-opus-4-1",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    message = anthropic_error(post(srv, body), 404, "not_found_error")
    assert "anthropic/claude-opus-4-1" in message and "ANTHROPIC_API_KEY" in message


def test_version_headers_are_checked(srv: Server) -> None:
    body = {"model": "iir/echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    ok = post(
        srv, body, {"anthropic-beta": "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14"}
    )
    assert ok.status_code == 200
    bad = post(srv, body, {"anthropic-beta": "x" * 600})
    assert "anthropic-beta" in anthropic_error(bad, 400, "invalid_request_error")


def test_limits_hold_on_messages() -> None:
    env = {"IIR_MAX_PROMPT_TOKENS": "50", "IIR_RATE_LIMIT_TPM_PER_KEY": "400"}
    with Server(env=env) as s:
        big = {
            "model": "iir/echo",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "word " * 300}],
        }
        message = anthropic_error(post(s, big), 400, "invalid_request_error")
        assert "max token limit" in message
        body = {
            "model": "iir/echo",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hello there"}],
        }
        first = post(s, body)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "400"
        second = post(s, body)
        left = int(first.headers["x-ratelimit-remaining-tokens"])
        after = int(second.headers["x-ratelimit-remaining-tokens"])
        assert 0 < left - after < 40  # the first reservation was settled to what it used
        huge = {**body, "max_tokens": 5000}
        assert "Request too large" in anthropic_error(post(s, huge), 429, "rate_limit_error")
        # count_tokens reserves nothing.
        for _ in range(5):
            r = httpx.post(
                s.url + "/v1/messages/count_tokens",
                headers={"x-api-key": s.key},
                json={"model": "iir/echo", "messages": body["messages"]},
            )
            assert r.status_code == 200 and "x-ratelimit-remaining-tokens" not in r.headers
