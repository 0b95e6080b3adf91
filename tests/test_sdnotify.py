"""systemd's notify protocol against a real AF_UNIX datagram socket, as systemd listens on one:
READY=1 once the server started, WATCHDOG=1 from its event loop, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iir.ops.sdnotify import Notifier

from .harness import Server


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        yield sock, path
    finally:
        sock.close()


def _until(sock: socket.socket, wanted: str, seen: list[str]) -> list[str]:
    while wanted not in seen:
        seen.append(sock.recv(4096).decode())
    return seen


def test_server_notifies_ready_watchdog_and_stopping(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    # 200 ms watchdog: a ping every 100 ms while the loop turns.
    srv = Server(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}).start()
    try:
        seen = _until(sock, "READY=1", [])
        seen.append(sock.recv(4096).decode())
        seen.append(sock.recv(4096).decode())
        assert seen.count("WATCHDOG=1") >= 2
        # Pings keep coming while requests are served.
        with srv.client() as c:
            assert c.get("/v1/models", headers=srv.auth).status_code == 200
        assert sock.recv(4096).decode() == "WATCHDOG=1"
        assert srv.stop() == 0
        seen = _until(sock, "STOPPING=1", seen)
        assert set(seen) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}
    finally:
        srv.close()


def test_no_socket_no_messages() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled and n.interval is None
    assert n.notify("READY=1") is False


def test_variables_are_taken_out_of_the_environment(tmp_path: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "s"),
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "OTHER": "kept",
    }
    n = Notifier.from_environ(env)
    # Children (the vLLM engine's processes) must not speak for the service.
    assert env == {"OTHER": "kept"}
    assert n.enabled and n.interval == 15.0


@pytest.mark.parametrize("bad", ["not-a-path", ""])
def test_a_socket_that_is_not_a_unix_path_is_ignored(bad: str) -> None:
    assert not Notifier.from_environ({"NOTIFY_SOCKET": bad}).enabled


def test_abstract_namespace_socket() -> None:
    name = f"iir-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert n.notify("STATUS=serving")
        assert sock.recv(4096) == b"STATUS=serving"
        n.close()
    finally:
        sock.close()


def test_a_held_loop_stops_the_pings(listener: tuple[socket.socket, str]) -> None:
    """The point of pinging from the event loop: while it is held, systemd hears nothing."""
    sock, path = listener
    sock.setblocking(False)

    async def scenario() -> tuple[int, int]:
        n = Notifier(path, 20_000)  # a ping every 10 ms
        n.start_watchdog()
        await asyncio.sleep(0.2)
        turning = _drain(sock)
        time.sleep(0.3)  # holds the loop, as a runaway request would
        held = _drain(sock)
        n.close()
        return turning, held

    turning, held = asyncio.run(scenario())
    assert turning >= 2
    assert held == 0


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return count
        count += 1


def test_a_full_queue_drops_messages_instead_of_blocking(
    listener: tuple[socket.socket, str],
) -> None:
    """systemd reads at once, but a listener that does not must not hold the loop: the kernel
    queues only a few datagrams (net.unix.max_dgram_qlen) before a blocking send would wait."""
    _, path = listener
    n = Notifier(path, None)
    sent = [n.notify("WATCHDOG=1") for _ in range(2000)]  # nobody reads
    n.close()
    assert sent[0] is True
    assert sent[-1] is False
