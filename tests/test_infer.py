"""``POST /infer`` against the real server: both input forms, sampling fields, async, errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Server
from .schemas import validate, validate_error
from .test_fuzz import json_values, message


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server() as s:
        yield s


def infer(srv: Server, body: Any) -> httpx.Response:
    with srv.client() as c:
        return c.post("/infer", json=body, headers=srv.auth)


def check_answer(body: dict[str, Any], text: str, finish: str = "stop") -> None:
    assert set(body) == {"id", "model", "output", "usage"}
    assert body["id"].startswith("infer-") and body["model"] == "iir/echo"
    assert body["output"] == {"text": text, "finish_reason": finish}
    validate(body["usage"], "CompletionUsage")


def test_prompt_input(srv: Server) -> None:
    r = infer(srv, {"model": "iir/echo", "input": {"prompt": "hello there"}})
    assert r.status_code == 200, r.text
    check_answer(r.json(), "hello there")


def test_messages_input(srv: Server) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second question"},
    ]
    r = infer(srv, {"model": "iir/echo", "input": {"messages": messages}, "async_": False})
    assert r.status_code == 200, r.text
    check_answer(r.json(), "second question")


def test_sampling_fields_top_level_and_in_input(srv: Server) -> None:
    text = "one two three four five"
    r = infer(srv, {"model": "iir/echo", "input": {"prompt": text}, "max_tokens": 2})
    check_answer(r.json(), "one two", "length")
    r = infer(srv, {"model": "iir/echo", "input": {"prompt": text, "stop": " three"}})
    check_answer(r.json(), "one two")
    r = infer(
        srv,
        {
            "model": "iir/echo",
            "input": {"prompt": text, "max_tokens": 3},
            "max_tokens": 3,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 7,
        },
    )
    check_answer(r.json(), "one two three", "length")
    # Given at both levels with different values, the one in ``input`` is used.
    r = infer(
        srv, {"model": "iir/echo", "input": {"prompt": text, "max_tokens": 2}, "max_tokens": 4}
    )
    check_answer(r.json(), "one two", "length")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": {"prompt": "x"}}, "model"),
        ({"model": "iir/echo"}, "input"),
        ({"model": "iir/echo", "input": "text"}, "input"),
        ({"model": "iir/echo", "input": {}}, "input"),
        ({"model": "iir/echo", "input": {"prompt": "x", "messages": []}}, "input"),
        ({"model": "iir/echo", "input": {"messages": None, "prompt": None}}, "input"),
        ({"model": "iir/echo", "input": {"messages": []}}, "input.messages"),
        (
            {
                "model": "iir/echo",
                "input": {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
            },
            "input",
        ),
        ({"model": "iir/echo", "input": {"prompt": 5}}, "input.prompt"),
        ({"model": "iir/echo", "input": {"prompt": "x", "colour": "red"}}, "input.colour"),
        (
            {"model": "iir/echo", "input": {"messages": [{"role": "bogus"}]}},
            "input.messages[0].role",
        ),
        ({"model": "iir/echo", "input": {"prompt": "x"}, "temperature": 5}, "temperature"),
        ({"model": "iir/echo", "input": {"prompt": "x", "max_tokens": 0}}, "input.max_tokens"),
        ({"model": "iir/echo", "input": {"prompt": "x"}, "async_": "yes"}, "async_"),
        ([], "body"),
    ],
)
def test_bad_input_is_400_naming_the_field(srv: Server, body: Any, param: str) -> None:
    r = infer(srv, body)
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == param


def test_unknown_model_is_404(srv: Server) -> None:
    for async_ in (False, True):
        r = infer(srv, {"model": "nope/none", "input": {"prompt": "x"}, "async_": async_})
        assert r.status_code == 404, r.text
        validate_error(r.json())
        assert r.json()["error"]["code"] == "model_not_found"


def test_async_infer_is_a_job(srv: Server) -> None:
    r = infer(srv, {"model": "iir/echo", "input": {"prompt": "later please"}, "async_": True})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json() == {"job_id": job_id, "status": "pending"}
    deadline = time.monotonic() + 60
    with srv.client() as c:
        while True:
            got = c.get(f"/v1/async/chat/completions/{job_id}", headers=srv.auth)
            assert got.status_code == 200
            if got.headers["x-iir-job-status"] == "succeeded":
                break
            assert got.headers["x-iir-job-status"] in ("pending", "running")
            assert time.monotonic() < deadline
            time.sleep(0.02)
    check_answer(got.json(), "later please")


def test_no_auth_is_401(srv: Server) -> None:
    r = httpx.post(srv.url + "/infer", json={"model": "iir/echo", "input": {"prompt": "x"}})
    assert r.status_code == 401
    validate_error(r.json())


infer_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["iir/echo", "nope/x", ""]) | json_values},
    optional={
        "input": st.fixed_dictionaries(
            {},
            optional={
                "prompt": st.text(max_size=40) | json_values,
                "messages": st.lists(message, max_size=3) | json_values,
                "max_tokens": st.integers(-2, 50) | json_values,
                "stop": json_values,
            },
        )
        | json_values,
        "async_": st.booleans() | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "top_p": st.floats(-1, 2),
        "seed": json_values,
    },
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=infer_body | json_values | st.binary(max_size=64))
def test_fuzzed_bodies_never_500(srv: Server, body: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with srv.client() as c:
        r = c.post("/infer", content=raw, headers=srv.auth)
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    if r.status_code >= 400:
        validate_error(r.json())
    elif r.status_code == 202:
        assert r.json()["status"] == "pending"
    else:
        out = r.json()
        assert isinstance(out["output"]["text"], str)
        validate(out["usage"], "CompletionUsage")
