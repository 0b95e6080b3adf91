"""Every provider through the real IIR server and the official ``openai`` SDK, against fakes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from ..harness import Server
from ..schemas import validate, validate_error
from .conftest import KEYS, PROVIDERS
from .fakes import TOOL_ARGS, FakeProvider

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def model_of(provider: str) -> str:
    return f"{provider}/vendor/some-model" if provider == "openrouter" else f"{provider}/some-model"


def sse_bodies(text: str) -> list[Any]:
    """The JSON payloads of an SSE body, ``"[DONE]"`` kept as a string."""
    out: list[Any] = []
    for frame in text.split("\n\n"):
        if frame.startswith("data: "):
            data = frame[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def post(iir: Server, body: dict[str, Any]) -> httpx.Response:
    with iir.client() as c:
        return c.post("/v1/chat/completions", json=body, headers=iir.auth)


# --- models ----------------------------------------------------------------------------------------


def test_models_lists_each_configured_provider_refreshed_from_its_list(iir: Server) -> None:
    want = {f"{p}/fake-large" for p in PROVIDERS}
    deadline = time.monotonic() + 15
    while True:
        with iir.client() as c:
            body = c.get("/v1/models", headers=iir.auth).json()
        ids = {m["id"]: m for m in body["data"]}
        if want <= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert want <= set(ids), sorted(ids)
    for p in PROVIDERS:
        assert ids[f"{p}/fake-small"]["owned_by"] == p
    assert ids["anthropic/fake-large"]["created"] > 1_700_000_000  # parsed from created_at
    assert "iir/echo" in ids
    validate(body, "ListModelsResponse")


# --- every provider, streamed and not, with tools ----------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_completion(provider: str, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    model = model_of(provider)
    r = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}]
    )
    assert r.model == model
    assert r.choices[0].message.content is not None
    assert r.choices[0].message.content.strip() == "You said: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert (
        r.usage is not None
        and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    )
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    (req,) = fakes[provider].chat_requests()
    assert req.body["model"] == model.split("/", 1)[1]
    if provider == "anthropic":
        assert req.headers["x-api-key"] == KEYS[provider]
        assert req.headers["anthropic-version"] == "2023-06-01"
    else:
        assert req.headers["authorization"] == f"Bearer {KEYS[provider]}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream(provider: str, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    model = model_of(provider)
    chunks = list(
        sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hello stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    for ch in chunks:
        validate(ch.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        assert ch.model == model
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "You said: hello stream"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    (req,) = fakes[provider].chat_requests()
    assert req.body["stream"] is True


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tools(provider: str, sdk: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    model = model_of(provider)
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    r = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}

    # streamed: the tool call arrives in pieces and reassembles to the same arguments
    chunks = list(
        sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True)
    )
    for ch in chunks:
        validate(ch.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    args = ""
    names = []
    for ch in chunks:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            assert tc.index == 0
            if tc.function and tc.function.name:
                names.append(tc.function.name)
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
    assert names == ["get_weather"] and orjson.loads(args) == orjson.loads(TOOL_ARGS)
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["tool_calls"]

    # the result goes back: assistant tool_calls then a tool message
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": TOOL_ARGS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    r2 = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    sent = fakes[provider].chat_requests()[-1].body["messages"]
    if provider == "anthropic":
        assert sent[-2]["content"][-1] == {
            "type": "tool_use",
            "id": call.id,
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        assert sent[-1]["role"] == "user"
        assert sent[-1]["content"] == [
            {
                "type": "tool_result",
                "tool_use_id": call.id,
                "content": [{"type": "text", "text": "Sunny, 21 C"}],
            }
        ]
    else:
        assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}
        assert sent[-2]["tool_calls"][0]["id"] == call.id
    fakes[provider].reset()


def test_openai_request_passes_fields_and_asks_for_stream_usage(
    sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    list(
        sdk.chat.completions.create(
            model="openai/gpt-4o",
            messages=[{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}],
            temperature=0.3,
            max_tokens=20,
            stop=["END"],
            seed=7,
            stream=True,
        )
    )
    (req,) = fakes["openai"].chat_requests()
    b = req.body
    assert b["model"] == "gpt-4o" and b["temperature"] == 0.3 and b["max_tokens"] == 20
    assert b["stop"] == ["END"] and b["seed"] == 7
    assert b["stream_options"] == {"include_usage": True}
    assert b["messages"][0] == {"role": "system", "content": "terse"}


# --- Anthropic translation ---------------------------------------------------------------------------


def test_anthropic_request_translation(sdk: openai.OpenAI, fakes: dict[str, FakeProvider]) -> None:
    r = sdk.chat.completions.create(
        model="anthropic/claude-sonnet-4-5",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these? "},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "And STOP here"},
        ],
        stop="STOP",
        temperature=1.5,
        top_p=0.9,
        user="user-42",
    )
    (req,) = fakes["anthropic"].chat_requests()
    b = req.body
    assert req.path == "/v1/messages"
    assert b["system"] == "You are terse.\n\nAnswer in English."
    assert b["max_tokens"] == 4096  # the default: Anthropic requires one
    assert b["stop_sequences"] == ["STOP"]
    assert b["temperature"] == 1.0 and b["top_p"] == 0.9
    assert b["metadata"] == {"user_id": "user-42"}
    assert [m["role"] for m in b["messages"]] == ["user", "assistant", "user"]
    assert b["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these? "},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    # stop_sequence → stop, the text cut where the fake found the sequence
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "You said: And "
    # usage: cache tokens counted into the prompt, cache reads reported as cached
    assert r.usage is not None
    assert r.usage.prompt_tokens == 20 + 3 + 4 and r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    validate(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")


def test_anthropic_max_tokens_and_tool_choice(
    sdk: openai.OpenAI, fakes: dict[str, FakeProvider]
) -> None:
    r = sdk.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "one two three four five"}],
        max_completion_tokens=3,
    )
    assert r.choices[0].finish_reason == "length"
    assert fakes["anthropic"].chat_requests()[-1].body["max_tokens"] == 3
    sdk.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
    )
    b = fakes["anthropic"].chat_requests()[-1].body
    assert b["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert b["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    sdk.chat.completions.create(
        model="anthropic/claude-haiku-4-5",
        messages=[{"role": "user", "content": "weather?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert fakes["anthropic"].chat_requests()[-1].body["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
    }


def test_anthropic_stream_events_and_usage(iir: Server) -> None:
    r = post(
        iir,
        {
            "model": "anthropic/claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": TOOLS,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200
    bodies = sse_bodies(r.text)
    assert bodies[-1] == "[DONE]"
    chunks = bodies[:-1]
    for ch in chunks:
        validate(ch, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.strip() == "Let me check."
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 27,
        "completion_tokens": 7,
        "total_tokens": 34,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{broken"},
                            }
                        ],
                    },
                    {"role": "user", "content": "x"},
                ]
            },
            "messages[0].tool_calls[0]",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ],
)
def test_anthropic_refuses_what_it_cannot_translate(
    iir: Server, fakes: dict[str, FakeProvider], body: dict[str, Any], param: str
) -> None:
    full = {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
        **body,
    }
    r = post(iir, full)
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == param
    assert fakes["anthropic"].chat_requests() == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_streams_leave_the_connection_reusable(
    provider: str, iir: Server, fakes: dict[str, FakeProvider]
) -> None:
    # the body ends a little after the last event: closing early would drop the connection
    fakes[provider].tail_delay = 0.2
    for _ in range(3):
        r = post(
            iir,
            {
                "model": model_of(provider),
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        assert r.status_code == 200 and sse_bodies(r.text)[-1] == "[DONE]"
    peers = {req.peer for req in fakes[provider].chat_requests()}
    assert len(peers) == 1, peers  # one kept-alive connection served all three


def test_registry_status_and_refresh(iir: Server, fakes: dict[str, FakeProvider]) -> None:
    with iir.client() as c:
        body = c.get("/v1/registry/status", headers=iir.auth).json()
        providers = {p["name"]: p for p in body["providers"]}
        assert set(providers) == set(PROVIDERS)
        for p in providers.values():
            assert p["configured"] is True and p["circuit"] == "closed" and p["reason"] is None
        fakes["grok"].models = ["grok-next"]
        try:
            c.post("/v1/registry/refresh", headers=iir.auth).raise_for_status()
            ids = {m["id"] for m in c.get("/v1/models", headers=iir.auth).json()["data"]}
        finally:
            fakes["grok"].models = ["fake-large", "fake-small"]
        assert "grok/grok-next" in ids and "grok/fake-large" not in ids
        assert any(r.method == "GET" and r.path == "/v1/models" for r in fakes["grok"].requests)
        c.post("/v1/registry/refresh", headers=iir.auth).raise_for_status()
