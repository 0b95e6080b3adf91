"""Shared fixtures for the benchmarks, and a closing table of every result next to its baseline."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from bench.fake_upstream import running as fake_upstream_running
from tests.harness import REPO, Server, free_port

# name -> measured values; filled by the benchmarks, printed at the end as ratios to the baseline.
RESULTS: dict[str, dict[str, float]] = {}
BASELINES: dict[str, str] = {}


def record(name: str, baseline: str | None = None, **values: float) -> None:
    RESULTS[name] = values
    if baseline:
        BASELINES[name] = baseline


@pytest.fixture(scope="session")
def iir_server() -> Iterator[Server]:
    # The shipped configuration (access log on), except the per-IP limit: 600 a minute by
    # default, it would refuse a load generator on loopback.
    with Server(env={"IIR_RATE_LIMIT_PER_IP": "0"}) as srv:
        yield srv


@pytest.fixture(scope="session")
def bare_port() -> Iterator[int]:
    """The floor: the same Granian, one worker, RSGI, an app that only answers fixed JSON."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "rsgi",
            "--workers",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-log",
            "bench.bare_app:app",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    """The bench upstream in its own process; yields its base URL (ending in /v1)."""
    with fake_upstream_running(free_port()) as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    w = terminalreporter
    w.section("IIR benchmark summary (ratios against the baseline measured in the same run)")
    keys = sorted({k for v in RESULTS.values() for k in v})
    w.write_line("| benchmark | " + " | ".join(keys) + " | baseline | ratios |")
    w.write_line("|---" * (len(keys) + 3) + "|")
    for name, values in RESULTS.items():
        base = BASELINES.get(name)
        ratios = ""
        if base and base in RESULTS:
            parts = []
            for k, v in values.items():
                b = RESULTS[base].get(k)
                if b:
                    parts.append(f"{k} x{v / b:.2f}")
            if "p50_us" in values and "p50_us" in RESULTS[base]:
                parts.append(f"added p50 {values['p50_us'] - RESULTS[base]['p50_us']:.0f} us")
            ratios = ", ".join(parts)
        cells = " | ".join(f"{values[k]:.1f}" if k in values else "" for k in keys)
        w.write_line(f"| {name} | {cells} | {base or ''} | {ratios} |")
