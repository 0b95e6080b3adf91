"""Throughput with ``wrk`` (a C load generator): a Python client would be the bottleneck."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

import pytest

_LUA = """
wrk.method = [==[{method}]==]
wrk.body = [==[{body}]==]
{headers}
"""


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    n = float(m.group(1))
    return n / 1000 if m.group(2) == "us" else n * 1000 if m.group(2) == "s" else n


def run(
    port: int,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    connections: int = 16,
    seconds: int = 3,
) -> dict[str, float]:
    """Returns rps, p50/p99 latency in microseconds and the number of requests."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make bench installs it with apt-get when root)")
    hdrs = dict(headers or {})
    if body:
        hdrs["Content-Type"] = "application/json"
    lines = "\n".join(f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]" for k, v in hdrs.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_LUA.format(method=method, body=body.decode(), headers=lines))
        script.flush()
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
    assert "Non-2xx" not in out, out
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    requests = float(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_us": p50 * 1000, "p99_us": p99 * 1000, "requests": requests}
