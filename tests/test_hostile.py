"""Hostile clients against the real server: no request may hold the one worker, and nothing a
client sends may grow without bound.

Each test sends what an attacker on the LAN would (huge paths and field names, bodies and heads
that trickle, streams that hold slots, probe floods, forged ``X-Forwarded-For`` chains) over real
sockets. Waits are bounded by a generous ceiling so that a regression fails instead of hanging;
nothing here asserts a duration.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from .harness import Server
from .schemas import validate_error

SECOND = "second-key-0123456789abcdef0123456789abcdef"
THIRD = "third-key-0123456789abcdef0123456789abcdef0"
# Far above the deadline the servers here get (1 s): reaching it means nothing cut the client.
CEILING = 20.0


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    env = {
        "IIR_BODY_TIMEOUT": "1",
        "IIR_MAX_INFLIGHT_PER_KEY": "2",
        "IIR_MAX_INFLIGHT_PER_IP": "3",
        "IIR_ECHO_TOKEN_DELAY_MS": "50",
        "IIR_ALLOWED_KEYS": f"{SECOND},{THIRD}",
    }
    with Server(env=env) as s:
        yield s


def _raw(srv: Server, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.settimeout(CEILING)
    sock.sendall(head + body)
    return sock


def _response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or a whole answer arrived."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                return data


def _stream(srv: Server, key: str, words: int = 400) -> socket.socket:
    """A streamed chat that stays in flight (50 ms a token), once its first frame arrived."""
    body = orjson.dumps(
        {
            "model": "iir/echo",
            "stream": True,
            "messages": [{"role": "user", "content": "word " * words}],
        }
    )
    sock = _raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode(),
        body,
    )
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def _chat(srv: Server, key: str, **extra: object) -> httpx.Response:
    body = {"model": "iir/echo", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(
        srv.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=CEILING,
    )


def _eventually_ok(srv: Server, key: str) -> httpx.Response:
    """Slots are given back when the server notices the client left: poll until it has."""
    deadline = time.monotonic() + CEILING
    while True:
        r = _chat(srv, key)
        if r.status_code != 429 or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def _in_metrics(srv: Server, needle: str) -> bool:
    """/metrics is cached for about a second: poll until the body shows ``needle``."""
    deadline = time.monotonic() + CEILING
    while needle not in (text := httpx.get(srv.url + "/metrics").text):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return needle in text


# --- client text in error messages ------------------------------------------------------------


def test_huge_path_without_a_key_is_answered_and_holds_no_one(srv: Server) -> None:
    path = "/" + "token=..." * 4000  # a rejected secret-like assignment, 4,000 times (36 KB)
    answers: list[int] = []

    def probe() -> None:
        with httpx.Client(base_url=srv.url, timeout=CEILING) as c:
            answers.extend(c.get("/health").status_code for _ in range(20))

    prober = threading.Thread(target=probe)
    prober.start()
    with httpx.Client(base_url=srv.url, timeout=CEILING) as c:
        for _ in range(5):
            r = c.get(path)
            assert r.status_code == 404
            validate_error(r.json())
            assert len(r.json()["detail"]) < 200  # the path is cut before it is scrubbed
    prober.join(CEILING)
    assert answers == [200] * 20


@pytest.mark.parametrize("field", ["metadata", "logit_bias"])
def test_client_object_keys_are_cut_in_error_messages(srv: Server, field: str) -> None:
    # A key of a client's object lands in the error's param (and message) when its value is bad.
    r = _chat(srv, srv.key, **{field: {"k" * 40_000: [1]}})
    body = r.json()
    assert r.status_code == 400, body
    validate_error(body)
    assert body["error"]["param"].startswith(f"{field}.kkkk")
    assert len(body["error"]["param"]) <= 259
    assert len(body["detail"]) < 400


def test_huge_header_values_are_cut_in_error_messages(srv: Server) -> None:
    r = httpx.post(
        srv.url + "/v1/chat/completions",
        json={"model": "iir/echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={**srv.auth, "x-iir-strategy": "token=..." * 10_000},
        timeout=CEILING,
    )
    assert r.status_code == 400, r.text
    validate_error(r.json())
    assert r.json()["error"]["param"] == "x-iir-strategy"
    assert len(r.json()["detail"]) < 200


# --- bodies and heads that trickle ------------------------------------------------------------


def _trickle(sock: socket.socket, piece: bytes) -> bytes:
    """Sends ``piece`` every 50 ms until the server answers or closes; b"" when it closed."""
    deadline = time.monotonic() + CEILING
    sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            try:
                sock.sendall(piece)
            except OSError:
                break  # closed on us
            time.sleep(0.05)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                return b""
            if not data:
                return b""
            sock.setblocking(True)
            sock.settimeout(CEILING)
            return data + (_response_rest(sock, data))
        else:
            pytest.fail("the server never cut a client that trickles")
    finally:
        sock.close()
    return b""


def _response_rest(sock: socket.socket, first: bytes) -> bytes:
    head, sep, rest = first.partition(b"\r\n\r\n")
    if not sep or b"content-length:" not in head.lower():
        return b""
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    out = b""
    while len(rest) + len(out) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_trickles_is_cut_with_408(srv: Server, framing: str) -> None:
    length = (
        b"Content-Length: 100000\r\n"
        if framing == "content-length"
        else b"Transfer-Encoding: chunked\r\n"
    )
    piece = b" " if framing == "content-length" else b"1\r\n \r\n"
    for _ in range(3):  # more than the key's two slots: each cut request gives its slot back
        sock = _raw(
            srv,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {srv.key}\r\nContent-Type: application/json\r\n".encode()
            + length
            + b"\r\n",
        )
        answer = _trickle(sock, piece)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower()
        error = orjson.loads(body)
        validate_error(error)
        assert error["error"]["code"] == "request_timeout"
    assert _chat(srv, srv.key).status_code == 200


def test_a_head_that_trickles_is_cut(srv: Server) -> None:
    sock = _raw(srv, b"GET /health HTTP/1.1\r\n")
    answer = _trickle(sock, b"X-Filler: x\r\n")  # a header line every 50 ms, never the end
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]


# --- requests in flight -----------------------------------------------------------------------


def test_one_key_cannot_hold_more_than_its_slots(srv: Server) -> None:
    streams = [_stream(srv, srv.key), _stream(srv, srv.key)]
    try:
        refused = _chat(srv, srv.key)
        assert refused.status_code == 429, refused.text
        validate_error(refused.json())
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "in flight" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert _chat(srv, SECOND).status_code == 200  # the cap is per key
        streams.pop().close()  # a client that leaves gives its slot back
        assert _eventually_ok(srv, srv.key).status_code == 200
    finally:
        for s in streams:
            s.close()
    assert _eventually_ok(srv, srv.key).status_code == 200

    # Failures give their slots back too: after many 400s both slots are still free.
    for _ in range(5):
        assert _chat(srv, srv.key, messages=[]).status_code == 400
    # So do streams that end normally.
    for _ in range(3):
        with httpx.stream(
            "POST",
            srv.url + "/v1/chat/completions",
            json={
                "model": "iir/echo",
                "stream": True,
                "messages": [{"role": "user", "content": "a b"}],
            },
            headers=srv.auth,
            timeout=CEILING,
        ) as r:
            assert r.status_code == 200 and b"[DONE]" in r.read()
    streams = [_stream(srv, srv.key), _stream(srv, srv.key)]
    try:
        assert _chat(srv, srv.key).status_code == 429
    finally:
        for s in streams:
            s.close()
    assert _eventually_ok(srv, srv.key).status_code == 200
    assert _in_metrics(srv, 'iir_ratelimited_total{scope="key_inflight"}')


def test_one_address_cannot_hold_more_than_its_slots(srv: Server) -> None:
    streams = [_stream(srv, srv.key), _stream(srv, srv.key), _stream(srv, SECOND)]
    try:
        refused = _chat(srv, THIRD)  # a fresh key, but the address already has 3 in flight
        assert refused.status_code == 429, refused.text
        assert "retry-after" in refused.headers
        # Probes do not count against the address and are never refused by its API use.
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 200
    finally:
        for s in streams:
            s.close()
    assert _eventually_ok(srv, THIRD).status_code == 200
    assert _in_metrics(srv, 'iir_ratelimited_total{scope="ip_inflight"}')


# --- probes -----------------------------------------------------------------------------------


def test_probes_have_their_own_budget_per_address() -> None:
    env = {"IIR_RATE_LIMIT_PER_IP": "2", "IIR_PROBE_RATE_LIMIT_PER_IP": "6"}
    # The harness's own readiness poll spends one probe: 5 are left.
    with Server(env=env) as s, s.client() as c:
        assert [c.get("/v1/models").status_code for _ in range(3)] == [401, 401, 429]
        # The API budget is spent, the probes' is not.
        assert [c.get(p).status_code for p in ("/health", "/metrics", "/health")] == [200] * 3
        codes = [c.get("/health").status_code for _ in range(4)]
        assert 429 in codes  # ... but it is not unlimited either
        refused = c.get("/health")
        assert refused.status_code == 429 and "retry-after" in refused.headers
        validate_error(refused.json())


METRICS_KEY = "metrics-key-0123456789abcdef0123456789ab"


def test_metrics_key_guards_metrics_only() -> None:
    with Server(env={"IIR_METRICS_KEY": METRICS_KEY}) as s, s.client() as c:
        missing = c.get("/metrics")
        assert missing.status_code == 401 and "www-authenticate" in missing.headers
        validate_error(missing.json())
        assert c.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40}).status_code == 403
        # An API key is a client's credential, not the scraper's.
        assert c.get("/metrics", headers=s.auth).status_code == 403
        ok = c.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        assert ok.status_code == 200 and "iir_requests_total" in ok.text
        assert METRICS_KEY not in ok.text
        assert c.get("/health").status_code == 200  # health stays open


def test_metrics_scrapes_share_one_rendering() -> None:
    with Server(env={"IIR_METRICS_CACHE_SECONDS": "60"}) as s, s.client() as c:
        first = c.get("/metrics").text
        assert c.get("/v1/models", headers=s.auth).status_code == 200
        # The request above moved a counter, but within the minute the same rendering is served.
        assert c.get("/metrics").text == first
    with Server() as s, s.client() as c:  # the harness renders every time (0 s)
        first = c.get("/metrics").text
        assert c.get("/v1/models", headers=s.auth).status_code == 200
        assert c.get("/metrics").text != first


# --- the client's address ---------------------------------------------------------------------


def _get_with_headers(srv: Server, headers: list[tuple[str, str]]) -> tuple[int, str]:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    sock = _raw(srv, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    try:
        answer = _response(sock)
    finally:
        sock.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    rid = next(
        ln.split(":", 1)[1].strip()
        for ln in head.split("\r\n")
        if ln.lower().startswith("x-request-id")
    )
    return int(head.split(" ", 2)[1]), rid


def test_every_forwarded_for_line_is_read_right_to_left() -> None:
    env = {"IIR_TRUSTED_PROXIES": "127.0.0.1", "IIR_RATE_LIMIT_PER_IP": "1"}
    with Server(env=env) as s:
        auth = ("Authorization", f"Bearer {s.key}")
        # Two header lines, as two proxies in a chain may send them: the last line is the
        # nearest hop, so the client is 203.0.113.9, not the forgeable first line's address.
        status, first = _get_with_headers(
            s,
            [auth, ("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.9")],
        )
        assert status == 200
        # The same client behind one line: its budget (1 a minute) is spent.
        status, _ = _get_with_headers(s, [auth, ("X-Forwarded-For", "203.0.113.9")])
        assert status == 429
        # A forged first line does not buy a new budget either.
        status, _ = _get_with_headers(
            s, [auth, ("X-Forwarded-For", "192.0.2.77"), ("X-Forwarded-For", "203.0.113.9")]
        )
        assert status == 429
        status, other = _get_with_headers(
            s, [auth, ("X-Forwarded-For", "203.0.113.9, 198.51.100.1")]
        )
        assert status == 200
        lines = s.wait_for_log(lambda ln: ln.get("request_id") in (first, other), count=2)
        clients = {ln["request_id"]: ln["client"] for ln in lines}
        assert clients == {first: "203.0.113.9", other: "198.51.100.1"}


def test_broad_trusted_proxies_warn_at_start_up() -> None:
    proxies = "10.0.0.0/16,192.168.1.0/24,127.0.0.1,fd00::/48,fd00:1::/64"
    with Server(env={"IIR_TRUSTED_PROXIES": proxies}) as s:
        warned = s.wait_for_log(lambda ln: ln.get("event") == "trusted_proxies_broad")
        named = sorted(ln["msg"].split()[2] for ln in warned)
        assert named == ["10.0.0.0/16", "fd00::/48"]
        assert all(ln["level"] == "warning" for ln in warned)


# --- /metrics rendering -----------------------------------------------------------------------


def test_metrics_render_off_the_loop_once_per_ttl() -> None:
    from iir.ops.metrics import CachedRender

    calls: list[str] = []
    release = threading.Event()

    def render() -> tuple[bytes, str]:
        calls.append(threading.current_thread().name)
        release.wait(CEILING)  # a slow render (NVML under its lock, a huge registry)
        return f"render {len(calls)}".encode(), "text/plain"

    async def scenario() -> tuple[list[bytes], bytes, int]:
        cache = CachedRender(ttl=3600, render=render)
        scrapes = [asyncio.ensure_future(cache.get()) for _ in range(10)]
        # The loop still turns while the render is stuck: other requests are served meanwhile.
        while not calls:
            await asyncio.sleep(0.01)
        waiting = sum(not s.done() for s in scrapes)
        release.set()
        bodies = [body for body, _ in await asyncio.gather(*scrapes)]
        again, _ = await cache.get()  # within the ttl: no new render
        return bodies, again, waiting

    bodies, again, waiting = asyncio.run(scenario())
    assert waiting == 10
    assert bodies == [b"render 1"] * 10 and again == b"render 1"
    assert len(calls) == 1 and calls[0] != threading.main_thread().name


def test_metrics_render_again_after_the_ttl() -> None:
    from iir.ops.metrics import CachedRender

    count = 0

    def render() -> tuple[bytes, str]:
        nonlocal count
        count += 1
        return str(count).encode(), "text/plain"

    async def scenario() -> list[bytes]:
        cache = CachedRender(ttl=0.0, render=render)
        return [(await cache.get())[0] for _ in range(3)]

    assert asyncio.run(scenario()) == [b"1", b"2", b"3"]
