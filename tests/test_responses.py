"""``/v1/responses`` on ``iir/echo`` through the real server: the official SDK, OpenAI's schemas,
stored responses, conversations, background jobs (kill -9 included), limits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from .harness import Server
from .schemas import validate, validate_error

OTHER_KEY = "second-key-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server(env={"IIR_ALLOWED_KEYS": OTHER_KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=srv.key, max_retries=0)


def post(srv: Server, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or srv.key}"}
    return httpx.post(srv.url + "/v1/responses", json=body, headers=headers, timeout=30)


def events(raw: str) -> list[dict[str, Any]]:
    """The SSE events of a body, each checked: its ``event:`` line names its ``type``."""
    out = []
    for block in raw.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = orjson.loads(lines[1][len("data: ") :])
        assert data["type"] == lines[0][len("event: ") :]
        out.append(data)
    return out


def test_plain_response_matches_openais_schema(srv: Server, sdk: openai.OpenAI) -> None:
    r = post(srv, {"model": "iir/echo", "input": "hello there", "instructions": "be brief"})
    assert r.status_code == 200
    body = r.json()
    validate(body, "Response")
    assert body["status"] == "completed" and body["store"] is True
    assert body["output"][0]["content"][0]["text"] == "hello there"
    assert body["instructions"] == "be brief"
    assert body["usage"]["output_tokens"] == 2
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 2
    # The SDK reads the same.
    resp = sdk.responses.create(model="iir/echo", input="one two three", max_output_tokens=2)
    assert resp.output_text == "one two"
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"


def test_input_items_roles_and_parts(srv: Server) -> None:
    body = {
        "model": "iir/echo",
        "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"role": "assistant", "content": "b"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look "},
                    {"type": "input_image", "image_url": "https://example.com/x.png"},
                    {"type": "input_text", "text": "here"},
                ],
            },
        ],
    }
    r = post(srv, body)
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == "look here"


def test_stream_is_typed_events_with_sequence_numbers(srv: Server, sdk: openai.OpenAI) -> None:
    with httpx.stream(
        "POST",
        srv.url + "/v1/responses",
        json={"model": "iir/echo", "input": "alpha beta gamma", "stream": True},
        headers=srv.auth,
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        evs = events(r.read().decode())
    for ev in evs:
        validate(ev, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    kinds = [e["type"] for e in evs]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
    assert text == "alpha beta gamma"
    final = evs[-1]["response"]
    validate(final, "Response")
    assert final["output"][0]["content"][0]["text"] == text
    # The stored response is the streamed one.
    assert sdk.responses.retrieve(final["id"]).output_text == text
    # And the SDK's own stream helper assembles the same.
    with sdk.responses.stream(model="iir/echo", input="one two") as stream:
        seen = [e.type for e in stream]
        done = stream.get_final_response()
    assert done.output_text == "one two" and seen[-1] == "response.completed"


def test_conversation_continues_with_previous_response_id(srv: Server, sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model="iir/echo", input="my name is Ada", instructions="hi")
    second = sdk.responses.create(
        model="iir/echo", input="what is my name", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    # Earlier turns count: the prompt is longer than the same question alone.
    alone = sdk.responses.create(model="iir/echo", input="what is my name", store=False)
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens
    # input_items lists this turn's input only, newest first by default.
    r = httpx.get(f"{srv.url}/v1/responses/{second.id}/input_items", headers=srv.auth)
    validate(r.json(), "ResponseItemList")
    assert [i["content"][0]["text"] for i in r.json()["data"]] == ["what is my name"]
    listed = sdk.responses.input_items.list(first.id, order="asc")
    assert listed.data[0].type == "message"
    # Another key sees none of it.
    other = openai.OpenAI(base_url=srv.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    r = post(srv, {"model": "iir/echo", "input": "x", "previous_response_id": first.id}, OTHER_KEY)
    assert r.status_code == 404 and r.json()["error"]["param"] == "previous_response_id"
    validate_error(r.json())
    # store: false keeps nothing.
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(alone.id)


def test_delete(srv: Server, sdk: openai.OpenAI) -> None:
    resp = sdk.responses.create(model="iir/echo", input="short lived")
    r = httpx.delete(f"{srv.url}/v1/responses/{resp.id}", headers=srv.auth)
    assert r.json() == {"id": resp.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(resp.id)
    assert httpx.delete(f"{srv.url}/v1/responses/{resp.id}", headers=srv.auth).status_code == 404
    bad = httpx.get(f"{srv.url}/v1/responses/not-an-id", headers=srv.auth)
    assert bad.status_code == 404 and "not-an-id" not in bad.text


def wait_done(sdk: openai.OpenAI, response_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        resp = sdk.responses.retrieve(response_id)
        if resp.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_background_response_is_a_job(srv: Server, sdk: openai.OpenAI) -> None:
    resp = sdk.responses.create(model="iir/echo", input="in the background", background=True)
    assert resp.status in ("queued", "in_progress") and resp.background is True
    done = wait_done(sdk, resp.id)
    assert done.status == "completed" and done.output_text == "in the background"
    validate(httpx.get(f"{srv.url}/v1/responses/{resp.id}", headers=srv.auth).json(), "Response")
    follow = sdk.responses.create(model="iir/echo", input="next", previous_response_id=resp.id)
    assert follow.output_text == "next"
    for body, param in (
        ({"background": True, "store": False}, "store"),
        ({"background": True, "stream": True}, "stream"),
    ):
        r = post(srv, {"model": "iir/echo", "input": "x", **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    # Only background responses can be cancelled.
    r = httpx.post(f"{srv.url}/v1/responses/{follow.id}/cancel", headers=srv.auth)
    assert r.status_code == 400


def test_background_cancel() -> None:
    with Server(env={"IIR_ECHO_TOKEN_DELAY_MS": "50"}) as s:
        sdk = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        resp = sdk.responses.create(model="iir/echo", input="tick " * 200, background=True)
        cancelled = sdk.responses.cancel(resp.id)
        assert cancelled.status == "cancelled"
        assert sdk.responses.retrieve(resp.id).status == "cancelled"
        assert sdk.responses.cancel(resp.id).status == "cancelled"  # once more: the same


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(p) for p in (task / "children").read_text().split())
    return out


def test_background_response_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    slow = Server(env={"IIR_ECHO_TOKEN_DELAY_MS": "100"}, data_dir=data)
    with slow:
        sdk = openai.OpenAI(base_url=slow.url + "/v1", api_key=slow.key, max_retries=0)
        resp = sdk.responses.create(model="iir/echo", input="tok " * 30, background=True)
        deadline = time.monotonic() + 10
        while sdk.responses.retrieve(resp.id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert slow.proc is not None
        for pid in [*_children(slow.proc.pid), slow.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        slow.proc.wait(10)
    with Server(data_dir=data) as fresh:
        sdk = openai.OpenAI(base_url=fresh.url + "/v1", api_key=fresh.key, max_retries=0)
        done = wait_done(sdk, resp.id)
        assert done.status == "completed" and done.output_text.startswith("tok tok")


def test_responses_expire_after_their_ttl() -> None:
    with Server(env={"IIR_RESPONSE_TTL_SECONDS": "1"}) as s:
        sdk = openai.OpenAI(base_url=s.url + "/v1", api_key=s.key, max_retries=0)
        resp = sdk.responses.create(model="iir/echo", input="brief")
        deadline = time.monotonic() + 15
        while True:
            try:
                sdk.responses.retrieve(resp.id)
            except openai.NotFoundError:
                break
            assert time.monotonic() < deadline, "the response outlived its TTL"
            time.sleep(0.2)
        assert s.wait_for_log(lambda ln: ln.get("event") == "responses_purged", timeout=15)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"temperature": 3}, "temperature"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"previous_response_id": 7}, "previous_response_id"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    srv: Server, extra: dict[str, Any], param: str
) -> None:
    r = post(srv, {"model": "iir/echo", "input": "hi", **extra})
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == param


def test_fields_clients_send_routinely_are_accepted(srv: Server) -> None:
    r = post(
        srv,
        {
            "model": "iir/echo",
            "input": "ok",
            "include": ["reasoning.encrypted_content"],
            "truncation": "auto",
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "reasoning": {"effort": "low"},
            "metadata": {"ticket": "42"},
            "user": "u1",
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_object"}},
            "tool_choice": "none",
        },
    )
    assert r.status_code == 200, r.text
    validate(r.json(), "Response")
    assert r.json()["metadata"] == {"ticket": "42"}


def test_whole_floats_count_as_integers(srv: Server) -> None:
    r = post(srv, {"model": "iir/echo", "input": "a b c d", "max_output_tokens": 2.0})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "incomplete" and r.json()["usage"]["output_tokens"] == 2
    r = post(srv, {"model": "iir/echo", "input": "x", "top_logprobs": 2.0, "max_tool_calls": 3.0})
    assert r.status_code == 200, r.text
    for name in ("max_output_tokens", "top_logprobs", "max_tool_calls"):
        r = post(srv, {"model": "iir/echo", "input": "x", name: 2.5})
        assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text


def test_an_image_without_a_url_is_refused_on_translated_models(srv: Server) -> None:
    """The document asks for ``image_url``: an image by ``file_id`` alone is OpenAI's own."""
    part = {"type": "input_image", "file_id": "file-1"}
    r = post(srv, {"model": "iir/echo", "input": [{"role": "user", "content": [part]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].content[0]", r.text
    part = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    r = post(srv, {"model": "iir/echo", "input": [{"role": "user", "content": [part]}]})
    assert r.status_code == 200, r.text


def test_unknown_model_is_404(srv: Server) -> None:
    r = post(srv, {"model": "nowhere/model", "input": "x"})
    assert r.status_code == 404
    validate_error(r.json())


def test_limits_hold_on_responses() -> None:
    env = {"IIR_MAX_PROMPT_TOKENS": "50", "IIR_RATE_LIMIT_TPM_PER_KEY": "400"}
    with Server(env=env) as s:
        r = post(s, {"model": "iir/echo", "input": "word " * 300})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        r = post(s, {"model": "iir/echo", "input": "hello there", "max_output_tokens": 100})
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "400"
        left = int(r.headers["x-ratelimit-remaining-tokens"])
        r2 = post(s, {"model": "iir/echo", "input": "hello there", "max_output_tokens": 100})
        after = int(r2.headers["x-ratelimit-remaining-tokens"])
        # Both reserved prompt + 100; the first was settled to what it used (a dozen tokens)
        # before the second came, so the second found all but those left. Without the
        # settlement it would find 100 more tokens gone.
        assert 0 < left - after < 40
        big = post(s, {"model": "iir/echo", "input": "x", "max_output_tokens": 5000})
        assert big.status_code == 429 and "Request too large" in big.json()["detail"]
