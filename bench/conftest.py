from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The benchmarks start IIR with the tests' harness; make the repository root importable.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

# Lines a benchmark wants shown after the run (derived numbers such as added latency).
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if SUMMARY:
        terminalreporter.section("derived numbers")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    """The bench upstream in its own process; yields its base URL (ending in /v1)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(10)
