"""Cost a log call pays for REMOTE_LOG_SINK, next to the same call with a handler that does nothing.

The request path only enqueues; the send happens on the drain thread. Compare the three rows of one
run: a no-op handler (baseline), a live loopback sink and an unresolvable sink.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from iir.ops.logforward import UdpLogHandler

LINE = '{"level": "info", "route": "/v1/chat/completions", "status": 200, "duration_ms": 1.2}'


class NoopHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


@pytest.fixture
def sink() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield sock.getsockname()[1]
    sock.close()


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_baseline_noop_handler(benchmark: pytest.FixtureRequest) -> None:
    logger = _logger("bench.noop", NoopHandler())
    benchmark(logger.info, LINE)


def test_udp_handler_live_sink(benchmark: pytest.FixtureRequest, sink: int) -> None:
    handler = UdpLogHandler(f"127.0.0.1:{sink}")
    logger = _logger("bench.udp", handler)
    benchmark(logger.info, LINE)
    handler.close()


def test_udp_handler_unresolvable_sink(benchmark: pytest.FixtureRequest) -> None:
    handler = UdpLogHandler("no-such-host.invalid:9999", on_warning=lambda _: None)
    logger = _logger("bench.dead", handler)
    benchmark(logger.info, LINE)
    handler.close()
