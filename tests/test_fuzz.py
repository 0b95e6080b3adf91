"""Hypothesis-generated request bodies never produce a 500, a stack trace or a non-JSON error."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Server
from .schemas import validate, validate_error

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=20,
)

roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"]) | st.text(
    max_size=8
)
content = (
    st.text(max_size=60)
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "nope"])},
            optional={
                "text": st.text(max_size=20) | json_scalars,
                "image_url": st.fixed_dictionaries({"url": st.text(max_size=20)}),
            },
        ),
        max_size=3,
    )
    | json_values
)
message = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": content,
        "name": st.text(max_size=8) | json_scalars,
        "tool_call_id": st.text(max_size=8),
        "tool_calls": json_values,
    },
)
chat_body = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["iir/echo", "nope/x", ""]) | json_scalars,
        "messages": st.lists(message, max_size=3) | json_values,
    },
    optional={
        k: json_values | st.integers(-5, 200) | st.floats(-3, 3)
        for k in (
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "n",
            "stop",
            "stream",
            "stream_options",
            "seed",
            "user",
            "tools",
            "tool_choice",
            "response_format",
            "logprobs",
            "top_logprobs",
        )
    },
)


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        validate_error(r.json())
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n")
    else:
        validate(r.json(), "CreateChatCompletionResponse")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=chat_body)
def test_chat_like_bodies_never_500(server: Server, body: dict) -> None:
    with server.client() as c:
        if isinstance(body.get("n"), int) and body["n"] > 8:
            body["n"] = 8
        _check(c.post("/v1/chat/completions", content=json.dumps(body), headers=server.auth))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values | st.binary(max_size=64))
def test_arbitrary_bodies_never_500(server: Server, body: object) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with server.client() as c:
        _check(c.post("/v1/chat/completions", content=raw, headers=server.auth))
