"""Every error status, its JSON body, and the SDK exception each one maps to."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest

from .harness import Server
from .schemas import validate_error

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _post(
    server: Server,
    body: object = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(server.auth)
    h.update(headers or {})
    with server.client() as c:
        if content is not None:
            return c.post(CHAT, content=content, headers=h)
        return c.post(CHAT, json=body, headers=h)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    validate_error(body)
    assert "Traceback" not in r.text
    return body


def test_missing_and_malformed_auth_is_401_with_challenge(server: Server) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer a b"},
    ):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        _error(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_unknown_key_is_403_and_not_echoed(server: Server) -> None:
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer nope-nope-nope"})
    body = _error(r, 403)
    assert "nope-nope-nope" not in r.text and body["error"]["code"] == "invalid_api_key"


def test_sdk_exception_classes(server: Server) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123456", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="Invalid API key"):
        bad.models.list()
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist") as nf:
        good.chat.completions.create(model="no/such-model", messages=OK_MESSAGES)
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="temperature") as br:
        good.chat.completions.create(model="iir/echo", messages=OK_MESSAGES, temperature=3)
    assert br.value.body["param"] == "temperature"
    unauth = openai.OpenAI(
        base_url=server.url + "/v1",
        api_key="x",
        max_retries=0,
        default_headers={"Authorization": ""},
    )
    with pytest.raises(openai.AuthenticationError, match="Authorization"):
        unauth.models.list()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "model"),
        ({"model": "iir/echo"}, "messages"),
        ({"model": "iir/echo", "messages": []}, "messages"),
        ({"model": 7, "messages": OK_MESSAGES}, "model"),
        (
            {"model": "iir/echo", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "iir/echo", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "iir/echo", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "iir/echo", "messages": [{"role": "assistant"}]}, "messages[0]"),
        (
            {"model": "iir/echo", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"model": "iir/echo", "messages": [{"role": "user", "content": [{"type": "gif"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"model": "iir/echo", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        (
            {"model": "iir/echo", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (
            {"model": "iir/echo", "messages": [{"role": "tool", "tool_call_id": "c"}]},
            "messages[0].content",
        ),
        ({"model": "iir/echo", "messages": "hi"}, "messages"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
        (
            {"model": "iir/echo", "messages": OK_MESSAGES, "max_completion_tokens": -1},
            "max_completion_tokens",
        ),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "temperature": 2.5}, "temperature"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "top_p": 1.5}, "top_p"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "n": 0}, "n"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "stream": "yes"}, "stream"),
        (
            {"model": "iir/echo", "messages": OK_MESSAGES, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "tool_choice": "sometimes"}, "tool_choice"),
        # Integers are bounded (the document says so): nothing a JSON parser cannot give back.
        ({"model": "iir/echo", "messages": OK_MESSAGES, "max_tokens": 2**24 + 1}, "max_tokens"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "max_tokens": 10**40}, "max_tokens"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "seed": 2**63}, "seed"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "seed": -(2**63) - 1}, "seed"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "n": 2.5}, "n"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "n": "2"}, "n"),
        ({"model": "iir/echo", "messages": OK_MESSAGES, "n": True}, "n"),
    ],
)
def test_invalid_fields_name_the_param(server: Server, body: dict, param: str) -> None:
    err = _error(_post(server, body), 400)
    assert err["error"]["param"] == param
    assert param.split("[")[0].split(".")[0] in err["detail"]


def test_unknown_fields_are_ignored(server: Server) -> None:
    r = _post(
        server,
        {
            "model": "iir/echo",
            "messages": OK_MESSAGES,
            "frobnicate": True,
            "seed": 3,
            "user": "u",
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "tool_choice": "auto",
            "response_format": {"type": "text"},
        },
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "content", [b"{", b"not json", b"", b"   ", b"[1,2]", b'"str"', b"\xff\xfe"]
)
def test_malformed_json_is_400(server: Server, content: bytes) -> None:
    err = _error(_post(server, content=content, headers={"content-type": "application/json"}), 400)
    assert err["error"]["param"] == "body"


def test_body_limits_with_and_without_content_length() -> None:
    with Server(env={"IIR_MAX_BODY_BYTES": "2048"}) as srv:
        big = (
            b'{"model": "iir/echo", "messages": [{"role": "user", "content": "'
            + (b"x" * 4096)
            + b'"}]}'
        )
        err = _error(_post(srv, content=big), 413)
        assert "2048" in err["detail"]

        def chunks():  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        with srv.client() as c:
            r = c.post(CHAT, content=chunks(), headers=srv.auth)
        assert "content-length" not in r.request.headers
        _error(r, 413)
        small = b'{"model": "iir/echo", "messages": [{"role": "user", "content": "fits"}]}'

        def small_chunks():
            yield small[:10]
            yield small[10:]

        with srv.client() as c:
            assert c.post(CHAT, content=small_chunks(), headers=srv.auth).status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_leaving_mid_body_is_no_server_error(chunked: bool) -> None:
    with Server() as srv:
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.key}\r\n"
            "Content-Type: application/json\r\n"
        )
        framing = (
            "Transfer-Encoding: chunked\r\n\r\n9\r\n" if chunked else "Content-Length: 900\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall((head + framing + '{"model":').encode())
            time.sleep(0.2)  # the server is now waiting for the rest of the body
        done = srv.wait_for_log(lambda ln: ln.get("route") == CHAT and "status" in ln)
        # With a declared length the server knows the body was cut short: 499. A chunked body
        # cut short reads as ending there: its JSON is incomplete, 400 (the client is gone anyway).
        assert done and done[0]["status"] == (400 if chunked else 499), srv.logs()
        assert not [ln for ln in srv.log_lines() if ln["level"] in ("error", "critical")]
        assert _post(srv, {"model": "iir/echo", "messages": OK_MESSAGES}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", CHAT), ("DELETE", "/v1/models"), ("POST", "/health"), ("PUT", "/version")],
)
def test_wrong_method_is_405(server: Server, method: str, path: str) -> None:
    r = httpx.request(method, server.url + path, headers=server.auth)
    _error(r, 405)
    assert r.headers["allow"]


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/v1/registry/nope",
        "/v1",
        "/v1/chat/completions/x",
    ],
)
def test_unknown_route_is_404(server: Server, path: str) -> None:
    _error(httpx.get(server.url + path, headers=server.auth), 404)


@pytest.mark.parametrize("path", ["/v1/async/chat/completions", "/infer"])
def test_get_on_a_post_route_is_405(server: Server, path: str) -> None:
    r = httpx.get(server.url + path, headers=server.auth)
    _error(r, 405)
    assert r.headers["allow"] == "POST"


def test_unknown_model_is_404(server: Server) -> None:
    err = _error(_post(server, {"model": "openai/gpt-404", "messages": OK_MESSAGES}), 404)
    assert err["error"]["param"] == "model"


@pytest.mark.parametrize(
    "messages",
    [
        # Every role's shape the document allows is accepted.
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}, *OK_MESSAGES],
        [
            *OK_MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "user", "content": "and?"},
        ],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            }
        ],
    ],
)
def test_every_documented_message_shape_is_accepted(server: Server, messages: list) -> None:
    r = _post(server, {"model": "iir/echo", "messages": messages})
    assert r.status_code == 200, r.text


def test_integral_floats_count_as_integers(server: Server) -> None:
    # JSON Schema's "integer" includes 2.0; so does the server.
    r = _post(server, {"model": "iir/echo", "messages": OK_MESSAGES, "n": 2.0, "max_tokens": 3.0})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2


def test_route_explains_an_explicit_model_too(server: Server) -> None:
    r = httpx.post(
        server.url + "/v1/route",
        json={"model": "iir/echo", "messages": OK_MESSAGES},
        headers=server.auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "iir/echo" and body["explicit"] is True
    assert body["candidates"][0] == "iir/echo"


def test_async_jobs_document_that_they_do_not_stream(server: Server) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    op = doc["paths"]["/v1/async/chat/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert doc["components"]["schemas"][ref]["properties"]["stream"]["const"] is False
    r = httpx.post(
        server.url + "/v1/async/chat/completions",
        json={"model": "iir/echo", "messages": OK_MESSAGES, "stream": True},
        headers=server.auth,
        timeout=30,
    )
    assert _error(r, 400)["error"]["param"] == "stream"
