"""The core API through the official ``openai`` SDK and raw HTTP, every body schema-checked."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest
from openapi_spec_validator import validate as validate_openapi

from .harness import Server
from .schemas import validate


def test_health_version_and_metrics_need_no_key(server: Server) -> None:
    with server.client() as c:
        assert c.get("/health").json() == {"status": "ok"}
        version = c.get("/version").json()["version"]
        from importlib.metadata import version as pkg_version

        assert version == pkg_version("iir")
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert f'iir_build_info{{version="{version}"}} 1.0' in r.text


def test_models_lists_echo(client: openai.OpenAI, server: Server) -> None:
    models = client.models.list()
    ids = {m.id: m for m in models.data}
    assert "iir/echo" in ids and ids["iir/echo"].owned_by == "iir"
    with server.client() as c:
        validate(c.get("/v1/models", headers=server.auth).json(), "ListModelsResponse")


def test_chat_completion_echoes_last_user_message(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="iir/echo",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "Hello, IIR!"},
        ],
    )
    assert r.choices[0].message.content == "Hello, IIR!"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 4  # "Hello" "," " IIR" "!"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")


def test_content_parts_max_tokens_stop_and_n(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="iir/echo",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "one two "},
                    {"type": "text", "text": "three four five"},
                ],
            }
        ],
        max_tokens=3,
        n=2,
    )
    assert [c.message.content for c in r.choices] == ["one two three"] * 2
    assert {c.finish_reason for c in r.choices} == {"length"}
    assert r.usage.completion_tokens == 6
    r = client.chat.completions.create(
        model="iir/echo", stop=["STOP", "x"], messages=[{"role": "user", "content": "abc STOP def"}]
    )
    assert r.choices[0].message.content == "abc " and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(
        model="iir/echo",
        max_completion_tokens=1,
        messages=[{"role": "user", "content": "alpha beta"}],
    )
    assert r.choices[0].message.content == "alpha"


def test_streaming_through_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="iir/echo",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream me, please"}],
    )
    chunks = list(stream)
    for ch in chunks:
        validate(ch.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream me, please"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1


def test_sse_wire_format(server: Server) -> None:
    body = {"model": "iir/echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    with (
        server.client() as c,
        c.stream("POST", "/v1/chat/completions", json=body, headers=server.auth) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        raw = b"".join(r.iter_bytes())
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    for frame in frames[:-2]:
        assert frame.startswith(b"data: ")
        chunk = orjson.loads(frame[6:])
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert "usage" not in chunk  # include_usage was not asked for


def test_request_id_is_echoed_or_generated(server: Server) -> None:
    with server.client() as c:
        r = c.get("/health", headers={"x-request-id": "abc-123.X"})
        assert r.headers["x-request-id"] == "abc-123.X"
        r = c.get("/health", headers={"x-request-id": "bad id with spaces"})
        assert r.headers["x-request-id"] != "bad id with spaces"
        assert len(r.headers["x-request-id"]) == 32
        r = c.get("/nope", headers={"x-request-id": "trace-404"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "trace-404"
    lines = server.wait_for_log(lambda ln: ln.get("request_id") == "trace-404")
    assert lines and lines[0]["status"] == 404 and lines[0]["route"] == "unmatched"


def test_logs_are_json_without_keys_or_bodies(server: Server) -> None:
    secret_text = "very-private-prompt-text"
    with server.client() as c:
        c.post(
            "/v1/chat/completions",
            headers=server.auth,
            json={"model": "iir/echo", "messages": [{"role": "user", "content": secret_text}]},
        )
    chat = server.wait_for_log(lambda ln: ln.get("route") == "/v1/chat/completions")
    text = server.logs()
    assert server.key not in text and secret_text not in text
    assert (
        chat
        and {"time", "level", "request_id", "method", "route", "status", "duration_ms", "model"}
        <= chat[-1].keys()
    )


def test_metrics_count_requests_and_tokens(server: Server, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="iir/echo", messages=[{"role": "user", "content": "count me"}]
    )
    text = httpx.get(server.url + "/metrics").text
    assert 'iir_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    assert 'iir_tokens_total{kind="completion",model="iir/echo"}' in text
    assert "iir_request_duration_seconds_bucket" in text and "iir_inflight_requests" in text
    assert server.key not in text


def test_openapi_document_is_valid_and_complete(server: Server) -> None:
    with server.client() as c:
        doc = c.get("/openapi.json").json()
    validate_openapi(doc)
    assert doc["openapi"].startswith("3.1")
    for path in ("/health", "/version", "/metrics", "/v1/models", "/v1/chat/completions"):
        assert path in doc["paths"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatRequest"
    )
    assert chat["security"] == [{"bearer": []}]
    # Each answer refers to its own shapes (two models of one name would share one schema).
    schemas = doc["components"]["schemas"]
    assert "message" in schemas["CompletionChoice"]["required"]
    assert "text" in schemas["TextCompletionChoice"]["required"]
    assert "tool_call_id" in schemas["AssistantMessage"]["properties"]  # the request's


def test_two_schemas_of_one_name_stop_the_document() -> None:
    from pydantic import BaseModel

    from iir.api.openapi import build
    from iir.api.router import Route
    from iir.api.services import ROUTES

    class ChatCompletion(BaseModel):  # the name of the chat answer's model
        other: int

    async def handler() -> None: ...

    extra = Route("GET", "/clash", handler, "clash", response=ChatCompletion)
    with pytest.raises(ValueError, match="'ChatCompletion'"):
        build([*ROUTES, extra])
    assert build(ROUTES)["paths"]


def test_docs_page_is_served_offline(server: Server) -> None:
    with server.client() as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "//" not in page.text.replace("http://www.w3", "").split("<body>")[1].replace(
            "// ", ""
        )  # no absolute (CDN) URLs
        for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
            r = c.get(f"/docs/assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 1000, asset
        assert c.get("/docs/assets/../../etc/passwd").status_code == 404
        assert c.get("/docs/assets/index.html").status_code == 404


@pytest.mark.parametrize("key_env", ["IIR_API_KEY", "IIR_ALLOWED_KEYS"])
def test_both_configured_keys_work(server: Server, key_env: str) -> None:
    key = server.key if key_env == "IIR_API_KEY" else "second-key-0123456789abcdef0123456789abcdef"
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
