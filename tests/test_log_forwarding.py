"""REMOTE_LOG_SINK through the real server: request logs arrive over UDP, scrubbed; a dead or
unresolvable sink never disturbs serving."""

from __future__ import annotations

import socket
import time

import httpx
import orjson

from .harness import Server, free_port

SECRET = "forwarded-secret-value-0123456789"


def test_request_logs_arrive_over_udp_without_secrets() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    port = sink.getsockname()[1]
    env = {"REMOTE_LOG_SINK": f"127.0.0.1:{port}", "BACKUP_PASSWORD": SECRET}
    with Server(env=env) as srv:
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            headers={**srv.auth, "x-request-id": "udp-1"},
            json={"model": "iir/echo", "messages": [{"role": "user", "content": f"pw {SECRET}"}]},
        )
        assert r.status_code == 200
        # An upstream-style error whose message would carry the secret, to reach the logs too.
        httpx.post(
            srv.url + "/v1/chat/completions",
            headers=srv.auth,
            json={"model": f"nope/{SECRET}", "messages": [{"role": "user", "content": "x"}]},
        )
        datagrams: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                datagrams.append(sink.recv(65536))
            except TimeoutError:
                if any(b'"udp-1"' in d for d in datagrams):
                    break
    sink.close()
    lines = [orjson.loads(d) for d in datagrams]
    mine = [ln for ln in lines if ln.get("request_id") == "udp-1"]
    assert mine and mine[-1]["route"] == "/v1/chat/completions" and mine[-1]["status"] == 200
    for d in datagrams:
        assert SECRET.encode() not in d and srv.key.encode() not in d


def test_dead_or_unresolvable_sink_does_not_disturb_serving() -> None:
    for sink in (f"127.0.0.1:{free_port()}", "no-such-host.invalid:9999"):
        with Server(env={"REMOTE_LOG_SINK": sink}) as srv:
            for _ in range(20):
                r = httpx.post(
                    srv.url + "/v1/chat/completions",
                    headers=srv.auth,
                    json={"model": "iir/echo", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert r.status_code == 200
            assert httpx.get(srv.url + "/health").status_code == 200
            if "invalid" in sink:  # lines that cannot be sent are counted, never raised
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    text = httpx.get(srv.url + "/metrics").text
                    if 'iir_log_datagrams_dropped_total{reason="unresolvable"}' in text:
                        break
                    time.sleep(0.2)
                assert 'iir_log_datagrams_dropped_total{reason="unresolvable"}' in text


def test_bad_sink_value_exits_2() -> None:
    import os
    import subprocess

    from .harness import IIR

    env = {k: v for k, v in os.environ.items() if not k.startswith("IIR_")}
    env.update({"IIR_API_KEY": "k" * 32, "REMOTE_LOG_SINK": "not a sink"})
    res = subprocess.run(
        [IIR, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "REMOTE_LOG_SINK" in res.stderr
