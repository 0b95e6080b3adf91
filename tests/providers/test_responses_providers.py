"""``/v1/responses`` on remote providers: natively on OpenAI (the Responses API passed through,
scrubbed both ways), translated onto chat completions and onto Anthropic's Messages API."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from ..harness import Server
from ..schemas import validate
from .fakes import TOOL_ARGS, FakeProvider, Fault

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def sse_events(srv: Server, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST", srv.url + "/v1/responses", json=body, headers=srv.auth, timeout=30
    ) as r:
        assert r.status_code == 200, r.read()
        raw = r.read().decode()
    out = []
    for block in raw.strip().split("\n\n"):
        data = next(ln for ln in block.split("\n") if ln.startswith("data: "))
        out.append(orjson.loads(data[len("data: ") :]))
    return out


@pytest.mark.parametrize(
    "model", ["openai/fake-large", "openllama/fake-small", "anthropic/claude-x"]
)
def test_response_on_every_kind_of_provider(
    model: str, iir: Server, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    r = httpx.post(
        iir.url + "/v1/responses",
        json={"model": model, "input": "hello", "instructions": "be brief"},
        headers=iir.auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "Response")
    assert body["model"] == model and body["id"].startswith("resp_")
    assert body["output"][0]["content"][0]["text"].strip() == "You said: hello"
    provider = model.split("/")[0]
    sent = fakes[provider].chat_requests()[-1]
    if provider == "openai":  # natively: the Responses API itself, IIR keeping the state
        assert sent.path == "/v1/responses"
        assert sent.body["store"] is False and sent.body["model"] == "fake-large"
        assert sent.body["instructions"] == "be brief" and sent.body["input"] == "hello"
    elif provider == "openllama":
        assert sent.path == "/v1/chat/completions"
        assert sent.body["messages"][0] == {"role": "system", "content": "be brief"}
    else:
        assert sent.path == "/v1/messages" and sent.body["system"] == "be brief"
    streamed = sse_events(iir, {"model": model, "input": "hello", "stream": True})
    for ev in streamed:
        validate(ev, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in streamed] == list(range(len(streamed)))
    assert streamed[0]["type"] == "response.created"
    assert streamed[-1]["type"] == "response.completed"
    assert {e["response"]["id"] for e in streamed if "response" in e} == {
        streamed[0]["response"]["id"]
    }
    text = "".join(e["delta"] for e in streamed if e["type"] == "response.output_text.delta")
    assert text.strip() == "You said: hello"
    # What was streamed is what is stored.
    stored = sdk.responses.retrieve(streamed[-1]["response"]["id"])
    assert stored.output_text.strip() == "You said: hello" and stored.model == model


@pytest.mark.parametrize(
    "model", ["openai/fake-large", "openllama/fake-small", "anthropic/claude-x"]
)
@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(
    model: str, stream: bool, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    if stream:
        with sdk.responses.stream(model=model, input="weather in Paris?", tools=TOOLS) as s:
            first = s.get_final_response()
    else:
        first = sdk.responses.create(model=model, input="weather in Paris?", tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and orjson.loads(call.arguments) == orjson.loads(TOOL_ARGS)
    second = sdk.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=TOOLS,
    )
    assert second.status == "completed"
    sent = fakes[model.split("/")[0]].chat_requests()[-1].body
    wire = orjson.dumps(sent).decode()
    # The earlier turns went along: the question, the call and its output.
    assert "weather in Paris?" in wire and call.call_id in wire and "sunny, 21 C" in wire
    if model.startswith("openai/"):
        assert "previous_response_id" not in sent
        kinds = [i.get("type", "message") for i in sent["input"]]
        assert kinds == ["message", "function_call", "function_call_output"]
    elif model.startswith("openllama/"):
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_built_in_tools_reach_openai_natively_and_nothing_else(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    body = {"input": "news?", "tools": [{"type": "web_search"}]}
    r = httpx.post(
        iir.url + "/v1/responses",
        json={**body, "model": "openai/fake-large"},
        headers=iir.auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert fakes["openai"].chat_requests()[-1].body["tools"] == [{"type": "web_search"}]
    r = httpx.post(
        iir.url + "/v1/responses",
        json={**body, "model": "openllama/fake-small"},
        headers=iir.auth,
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].type"
    assert "web_search" in r.json()["error"]["message"]


def test_a_failure_mid_stream_ends_with_error_and_failed(
    iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    fakes["openai"].faults.append(Fault("error_event", at=4))
    evs = sse_events(iir, {"model": "openai/fake-large", "input": "one two three", "stream": True})
    kinds = [e["type"] for e in evs]
    assert kinds[-2:] == ["error", "response.failed"]
    for ev in evs:
        validate(ev, "ResponseStreamEvent")
    assert evs[-1]["response"]["status"] == "failed"
    assert evs[-1]["response"]["error"]["code"] == "server_error"


def test_fallback_to_a_translated_backend(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    """openai/flaky falls back (IIR_FALLBACKS) to anthropic: native first, translated next."""
    fakes["openai"].always = Fault("status", status=503)
    r = httpx.post(
        iir.url + "/v1/responses",
        json={"model": "openai/flaky", "input": "hi"},
        headers=iir.auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "anthropic/claude-fallback"
    validate(r.json(), "Response")
