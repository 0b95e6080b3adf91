"""``/v1/messages`` on remote providers through the official ``anthropic`` SDK: natively on
Anthropic (its own request passed through, scrubbed, with the client's version headers), and
translated onto OpenAI-compatible chat completions."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION

from ..harness import Server
from .fakes import TOOL_ARGS, FakeProvider, Fault

TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
MODELS = ["anthropic/claude-x", "openai/fake-large", "openllama/fake-small"]


@pytest.fixture(scope="module")
def claude(iir: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=iir.url, api_key=iir.key, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_message_on_every_kind_of_provider(
    model: str, claude: anthropic.Anthropic, fakes: dict[str, FakeProvider]
) -> None:
    msg = claude.messages.create(
        model=model,
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello"}],
    )
    assert msg.model == model and msg.stop_reason == "end_turn"
    assert "".join(b.text for b in msg.content if b.type == "text").strip() == "You said: hello"
    sent = fakes[model.split("/")[0]].chat_requests()[-1]
    if model.startswith("anthropic/"):
        assert sent.path == "/v1/messages" and sent.body["system"] == "be brief"
        assert sent.body["model"] == "claude-x"
        assert msg.usage.cache_read_input_tokens == 4  # Anthropic's own usage, relayed
    else:
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent.body["max_tokens"] == 100
    with claude.messages.stream(
        model=model, max_tokens=100, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() == "You said: hello" and final.stop_reason == "end_turn"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(
    model: str, stream: bool, claude: anthropic.Anthropic, fakes: dict[str, FakeProvider]
) -> None:
    question = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        with claude.messages.stream(
            model=model, max_tokens=100, tools=TOOLS, messages=question
        ) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=question)
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].input == orjson.loads(TOOL_ARGS)
    second = claude.messages.create(
        model=model,
        max_tokens=100,
        tools=TOOLS,
        messages=[
            *question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21 C"}
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    sent = fakes[model.split("/")[0]].chat_requests()[-1].body
    wire = orjson.dumps(sent).decode()
    assert uses[0].id in wire and "sunny, 21 C" in wire
    if not model.startswith("anthropic/"):
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
        call = sent["messages"][1]["tool_calls"][0]
        assert call["function"]["name"] == "get_weather"
        assert orjson.loads(call["function"]["arguments"]) == orjson.loads(TOOL_ARGS)


def test_claude_names_and_version_headers_reach_anthropic(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    client = anthropic.Anthropic(
        base_url=iir.url,
        api_key=iir.key,
        max_retries=0,
        default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    msg = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"top_k": 5},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert msg.model == "anthropic/claude-sonnet-4-5"
    sent = fakes["anthropic"].chat_requests()[-1]
    assert sent.body["model"] == "claude-sonnet-4-5"
    assert sent.body["top_k"] == 5 and sent.body["thinking"]["budget_tokens"] == 1024
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    # The client's API version goes on; without one, IIR's own.
    assert sent.headers["anthropic-version"] == ANTHROPIC_API_VERSION
    assert sent.headers["x-api-key"] != iir.key  # the provider's key, never the client's
    r = httpx.post(
        iir.url + "/v1/messages",
        headers={"x-api-key": iir.key},
        json={"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 200
    assert fakes["anthropic"].chat_requests()[-1].headers["anthropic-version"] == "2023-06-01"


def test_server_tools_reach_anthropic_natively_and_nothing_else(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    body = {
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "news?"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
    }
    h = {"x-api-key": iir.key}
    r = httpx.post(
        iir.url + "/v1/messages", json={**body, "model": "anthropic/claude-x"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert fakes["anthropic"].chat_requests()[-1].body["tools"] == body["tools"]
    r = httpx.post(iir.url + "/v1/messages", json={**body, "model": "openai/fake-large"}, headers=h)
    assert r.status_code == 400 and "tools[0].type" in r.json()["error"]["message"]


@pytest.mark.parametrize("model", ["anthropic/claude-x", "openai/fake-large"])
def test_a_failure_mid_stream_is_an_error_event(
    model: str, iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    fakes[model.split("/")[0]].faults.append(Fault("error_event", at=4))
    body = {
        "model": model,
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four five"}],
    }
    r = httpx.post(iir.url + "/v1/messages", json=body, headers={"x-api-key": iir.key})
    last = r.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\n")
    data = orjson.loads(last.split("\n")[1].removeprefix("data: "))
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
