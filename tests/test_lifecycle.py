"""Start-up refusal, client disconnects, and draining on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from .harness import IIR, Server, free_port


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    base.update(env)
    return subprocess.run(
        [IIR, "serve", "--port", str(free_port()), *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IIR_API_KEY": "k" * 32, "IIR_PORT": "eighty"}, "IIR_PORT"),
        ({"IIR_API_KEY": "k" * 32, "IIR_PORT": "70000"}, "IIR_PORT"),
        ({"IIR_ALLOWED_KEYS": " , ,"}, "IIR_ALLOWED_KEYS"),
        ({"IIR_API_KEY": ""}, "IIR_API_KEY"),
        ({}, "IIR_API_KEY"),
        ({"IIR_API_KEY": "k" * 32, "IIR_MAX_BODY_BYTES": "-5"}, "IIR_MAX_BODY_BYTES"),
        ({"IIR_API_KEY": "k" * 32, "IIR_LOG_LEVEL": "loud"}, "IIR_LOG_LEVEL"),
        ({"IIR_API_KEY": "k" * 32, "IIR_SHUTDOWN_TIMEOUT": "soon"}, "IIR_SHUTDOWN_TIMEOUT"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(env: dict[str, str], variable: str) -> None:
    env = {k: v for k, v in env.items()}
    if "IIR_PORT" not in env:
        env["IIR_DATA_DIR"] = "/tmp/iir-test-config"
    res = subprocess.run(
        [IIR, "serve"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("IIR_")}, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in res.stderr


def test_unreadable_env_file_exits_2(tmp_path: Path) -> None:
    res = _run({"IIR_API_KEY": "k" * 32}, "--env-file", str(tmp_path / "missing.env"))
    assert res.returncode == 2 and "env file" in res.stderr and "missing.env" in res.stderr


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "iir.env"
    env_file.write_text("IIR_API_KEY=file-key-0123456789abcdef0123456789\nIIR_MAX_BODY_BYTES=100\n")
    with Server(
        key="env-key-0123456789abcdef0123456789ab",
        args=["--env-file", str(env_file)],
        env={"IIR_MAX_BODY_BYTES": "100000"},
    ) as srv:
        assert httpx.get(srv.url + "/v1/models", headers=srv.auth).status_code == 200
        r = httpx.get(
            srv.url + "/v1/models",
            headers={"Authorization": "Bearer file-key-0123456789abcdef0123456789"},
        )
        assert r.status_code == 403
        body = {"model": "iir/echo", "messages": [{"role": "user", "content": "y" * 500}]}
        assert (
            httpx.post(srv.url + "/v1/chat/completions", json=body, headers=srv.auth).status_code
            == 200
        )


def _open_stream(srv: Server, words: int) -> socket.socket:
    body = orjson.dumps(
        {
            "model": "iir/echo",
            "stream": True,
            "messages": [{"role": "user", "content": "word " * words}],
        }
    )
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {srv.key}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_client_disconnect_cancels_generation() -> None:
    # 20 ms per token and 500 tokens: an uncancelled generation would run for 10 s.
    with Server(env={"IIR_ECHO_TOKEN_DELAY_MS": "20"}) as srv:
        sock = _open_stream(srv, 500)
        received = b""
        while received.count(b"data: ") < 4:
            received += sock.recv(65536)
        closed_at = time.time()
        sock.close()
        cancelled = srv.wait_for_log(lambda ln: ln.get("event") == "cancelled", timeout=5)
        assert cancelled, srv.logs()
        assert cancelled[0]["tokens"] < 100  # stopped long before the 500 tokens
        stamp = cancelled[0]["time"]
        cancelled_at = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        cancelled_at += int(stamp[20:23]) / 1000
        print(f"generation cancelled {1000 * (cancelled_at - closed_at):.1f} ms after the close")
        text = httpx.get(srv.url + "/metrics").text
        assert "iir_stream_disconnects_total 1.0" in text
        assert srv.wait_for_log(lambda ln: ln.get("route") == "/v1/chat/completions")


def test_sigterm_drains_an_inflight_stream_then_exits_0() -> None:
    srv = Server(env={"IIR_ECHO_TOKEN_DELAY_MS": "20", "IIR_SHUTDOWN_TIMEOUT": "15"}).start()
    try:
        result: dict[str, object] = {}

        def consume() -> None:
            body = {
                "model": "iir/echo",
                "stream": True,
                "messages": [{"role": "user", "content": "w " * 60}],
            }
            with httpx.stream(
                "POST", srv.url + "/v1/chat/completions", json=body, headers=srv.auth, timeout=30
            ) as r:
                result["body"] = b"".join(r.iter_bytes())

        t = threading.Thread(target=consume)
        t.start()
        time.sleep(0.4)  # the stream is under way (60 tokens x 20 ms = 1.2 s)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.HTTPError):  # no longer accepting
            httpx.get(srv.url + "/health", timeout=2)
        t.join(30)
        code = srv.proc.wait(30)
        body = result["body"]
        assert isinstance(body, bytes) and body.endswith(b"data: [DONE]\n\n")
        text = "".join(
            orjson.loads(f[6:])["choices"][0]["delta"].get("content", "")
            for f in body.split(b"\n\n")
            if f.startswith(b"data: {")
        )
        assert text == "w " * 60  # every token arrived
        assert code == 0
    finally:
        srv.close()
