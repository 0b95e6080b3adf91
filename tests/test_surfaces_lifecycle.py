"""A client that goes away cancels the generation on every new route, streamed or not."""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import pytest

from .harness import Server

WORDS = "word " * 500  # 20 ms a token: an uncancelled generation would run for 10 s

BODIES: dict[str, dict[str, Any]] = {
    "/v1/responses": {"model": "iir/echo", "input": WORDS},
    "/v1/messages": {
        "model": "iir/echo",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": WORDS}],
    },
    "/v1/completions": {"model": "iir/echo", "prompt": WORDS, "max_tokens": 1000},
}


def _send(srv: Server, path: str, body: dict[str, Any]) -> socket.socket:
    raw = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {srv.key}\r\n".encode()
        + f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    return sock


@pytest.fixture(scope="module")
def srv() -> Any:
    with Server(env={"IIR_ECHO_TOKEN_DELAY_MS": "20"}) as s:
        yield s


@pytest.mark.parametrize("path", list(BODIES))
def test_disconnect_mid_stream_cancels_generation(srv: Server, path: str) -> None:
    before = len(srv.wait_for_log(lambda ln: ln.get("event") == "cancelled", timeout=0))
    sock = _send(srv, path, {**BODIES[path], "stream": True})
    received = b""
    while received.count(b"data: ") < 6:
        received += sock.recv(65536)
    sock.close()
    deadline = time.monotonic() + 5
    while True:
        cancelled = srv.wait_for_log(lambda ln: ln.get("event") == "cancelled", timeout=0)
        if len(cancelled) > before or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(cancelled) > before, srv.logs()
    assert cancelled[-1]["tokens"] < 100  # stopped long before the 500 tokens
    assert srv.wait_for_log(lambda ln: ln.get("event") == "disconnect" and ln.get("route") == path)


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_disconnect_before_the_answer_cancels_it(srv: Server, path: str) -> None:
    sock = _send(srv, path, BODIES[path])
    time.sleep(0.3)
    sock.close()
    found = srv.wait_for_log(
        lambda ln: ln.get("route") == path and ln.get("status") == 499, timeout=5
    )
    # 499 is what the disconnect watch answers once it has cancelled the work.
    assert found, srv.logs()
