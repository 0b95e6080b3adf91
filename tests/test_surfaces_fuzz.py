"""Hypothesis-generated bodies on every new route never produce a 500, a stack trace, or an error
body out of the route's shape; the answers they do get validate."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .schemas import validate, validate_error
from .test_fuzz import json_scalars, json_values

texts = st.text(max_size=30) | json_scalars
parts = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "input_text",
                    "output_text",
                    "text",
                    "image",
                    "tool_use",
                    "tool_result",
                    "input_image",
                    "web_search_call",
                    "nope",
                ]
            )
        },
        optional={
            "text": texts,
            "id": texts,
            "name": texts,
            "input": json_values,
            "tool_use_id": texts,
            "content": texts | json_values,
            "image_url": texts,
            "source": json_values,
        },
    ),
    max_size=3,
)
items = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(
                ["message", "function_call", "function_call_output", "reasoning", "item_reference"]
            )
            | texts,
            "role": st.sampled_from(["user", "assistant", "system", "developer", "bogus"]),
            "content": texts | parts,
            "call_id": texts,
            "name": texts,
            "arguments": texts,
            "output": texts | parts,
        },
    ),
    max_size=3,
)
optional = {
    k: json_values | st.integers(-5, 200) | st.floats(-3, 3) | st.booleans()
    for k in (
        "max_tokens",
        "max_output_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "store",
        "tools",
        "tool_choice",
        "text",
        "system",
        "stop_sequences",
        "suffix",
        "echo",
        "logprobs",
        "dimensions",
        "encoding_format",
        "metadata",
        "instructions",
        "previous_response_id",
        "background",
        "stop",
    )
}
models = st.sampled_from(["iir/echo", "iir/echo-embed", "nope/x", "auto", "claude-x", ""])

BODIES = {
    "/v1/responses": st.fixed_dictionaries(
        {"model": models, "input": texts | items | json_values}, optional=optional
    ),
    "/v1/messages": st.fixed_dictionaries(
        {
            "model": models,
            "messages": st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant", "x"])},
                    optional={"content": texts | parts},
                ),
                max_size=3,
            )
            | json_values,
        },
        optional=optional,
    ),
    "/v1/messages/count_tokens": st.fixed_dictionaries(
        {"model": models, "messages": json_values}, optional=optional
    ),
    "/v1/embeddings": st.fixed_dictionaries(
        {
            "model": models,
            "input": texts
            | st.lists(st.text(max_size=10), max_size=3)
            | st.lists(st.integers(-2, 2**40), max_size=3)
            | json_values,
        },
        optional=optional,
    ),
    "/v1/completions": st.fixed_dictionaries(
        {"model": models, "prompt": texts | st.lists(st.text(max_size=10), max_size=3)},
        optional=optional,
    ),
}
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
ANSWERS = {
    "/v1/responses": "Response",
    "/v1/embeddings": "CreateEmbeddingResponse",
    "/v1/completions": "CreateCompletionResponse",
}


def check(path: str, r: httpx.Response, body: dict[str, Any]) -> None:
    assert r.status_code < 500 or r.status_code == 503, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        if path.startswith("/v1/messages"):
            assert r.json()["type"] == "error" and isinstance(r.json()["error"]["message"], str)
        else:
            validate_error(r.json())
    elif r.headers["content-type"].startswith("text/event-stream"):
        last = r.text.strip().split("\n\n")[-1]
        if path == "/v1/completions":
            assert last == "data: [DONE]"
        else:  # a typed stream always ends with its terminal event
            ends = ("message_stop", "error") if path == "/v1/messages" else TERMINAL
            assert last.split("\n")[0].removeprefix("event: ") in ends, r.text
    elif path in ANSWERS and body.get("encoding_format") != "base64":  # (not in the schema)
        validate(r.json(), ANSWERS[path])


@pytest.mark.parametrize("path", list(BODIES))
def test_bodies_never_500(server: Any, path: str) -> None:
    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(body=BODIES[path])
    def run(body: dict[str, Any]) -> None:
        if isinstance(body.get("n"), int) and body["n"] > 4:
            body["n"] = 4
        headers = {**server.auth, "x-api-key": server.key}
        with server.client() as c:
            check(path, c.post(path, content=json.dumps(body), headers=headers), body)

    run()
