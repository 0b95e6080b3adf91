"""Log lines over UDP: the sender behind ``REMOTE_LOG_SINK``.

Sending never blocks or fails the caller: lines go into a bounded queue drained by one daemon
thread; a full queue, an unresolvable host or a send error drops the line and counts it.

``forward_logs_udp.py`` (the file/stdin forwarder and the listener) is one standard-library file
that must run without IIR, so it cannot import this module: it carries its own copies of
``parse_sink``, ``parse_port`` and ``truncate_line``, which the tests hold to the same cases.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable

# Stays under the IPv6 minimum MTU (1280) minus headers, so a datagram is never fragmented.
DEFAULT_MAX_DATAGRAM = 1200
DEFAULT_QUEUE_SIZE = 10000
TRUNCATION_MARKER = "...[truncated]"
WARN_INTERVAL_S = 60.0
RESOLVE_RETRY_S = 5.0
RERESOLVE_S = 300.0

DROP_QUEUE_FULL = "queue_full"
DROP_UNRESOLVABLE = "unresolvable"
DROP_SEND_ERROR = "send_error"
DROP_FORMAT_ERROR = "format_error"
DROP_CLOSED = "closed"

_STOP = object()


def parse_sink(text: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6addr]:port``) and check both halves; raise ValueError if bad."""
    value = text.strip() if isinstance(text, str) else ""
    if not value:
        raise ValueError("log sink is empty; expected host:port, e.g. 10.0.0.5:9999 or [::1]:9999")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(f"log sink {text!r} is not [ipv6-address]:port")
        host, port_text = value[1:end], value[end + 2 :]
        if not host:
            raise ValueError(f"log sink {text!r} has an empty address between the brackets")
    else:
        if value.count(":") != 1:
            if value.count(":") > 1:
                raise ValueError(
                    f"log sink {text!r} is ambiguous; write an IPv6 address in brackets: [::1]:9999"
                )
            raise ValueError(f"log sink {text!r} has no port; expected host:port")
        host, port_text = value.split(":", 1)
        if not host:
            raise ValueError(f"log sink {text!r} has no host; expected host:port")
    if any(ch.isspace() for ch in host):
        raise ValueError(f"log sink {text!r} has whitespace in the host")
    return host, parse_port(port_text, what=f"log sink {text!r}")


def parse_port(text: str, what: str = "port", allow_zero: bool = False) -> int:
    """Parse a UDP port number with a message that says which value was wrong."""
    low = 0 if allow_zero else 1
    if not text.isdigit():
        raise ValueError(f"{what}: port must be a number from {low} to 65535 (got {text!r})")
    port = int(text)
    if not low <= port <= 65535:
        raise ValueError(f"{what}: port must be from {low} to 65535 (got {port})")
    return port


def truncate_line(line: str, max_bytes: int = DEFAULT_MAX_DATAGRAM) -> bytes:
    """Encode ``line`` as one newline-terminated datagram of at most ``max_bytes`` UTF-8 bytes.

    A cut never splits a multi-byte character, and the marker shows the receiver the line was cut.
    """
    data = line.rstrip("\r\n").encode("utf-8", "replace") + b"\n"
    if len(data) <= max_bytes:
        return data
    tail = (TRUNCATION_MARKER + "\n").encode("utf-8")
    keep = max(0, max_bytes - len(tail))
    head = data[:keep].decode("utf-8", "ignore").encode("utf-8")
    return head + tail


def _stderr_warning(message: str) -> None:
    try:
        sys.stderr.write(f"iir log forwarding: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


class UdpSender:
    """Queue lines for one UDP sink and send them from a background thread."""

    def __init__(
        self,
        sink: str | tuple[str, int],
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        on_drop: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        warn_interval: float = WARN_INTERVAL_S,
        autostart: bool = True,
    ) -> None:
        if isinstance(sink, str):
            self.host, self.port = parse_sink(sink)
        else:
            self.host, self.port = sink[0], parse_port(str(sink[1]), what="log sink")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1 (got {queue_size})")
        if max_datagram < len(TRUNCATION_MARKER) + 2:
            raise ValueError(f"max_datagram is too small (got {max_datagram})")
        self.max_datagram = max_datagram
        self.dropped = 0
        self.dropped_by_reason: dict[str, int] = {}
        self.sent = 0
        self._on_drop = on_drop
        self._on_warning = on_warning or _stderr_warning
        self._warn_interval = warn_interval
        self._last_warned: dict[str, float] = {}
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closed = False
        self._sock: socket.socket | None = None
        self._addr: tuple[object, ...] | None = None
        self._resolved_at = 0.0
        self._next_resolve = 0.0
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    @property
    def sink(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Start the drain thread (idempotent)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"udp-log-sender {self.sink}", daemon=True
                )
                self._thread.start()

    def submit(self, line: str, timeout: float | None = 0.0) -> bool:
        """Queue one line; ``timeout=0`` never waits, ``None`` waits for room. False if dropped."""
        if self._closed:
            self.record_drop(DROP_CLOSED)
            return False
        try:
            if timeout == 0:
                self._queue.put_nowait(line)
            else:
                self._queue.put(line, timeout=timeout)
        except queue.Full:
            self.record_drop(DROP_QUEUE_FULL)
            return False
        return True

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until queued lines are handed to the socket; True if the queue emptied in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            if self._thread is None:
                return False
            time.sleep(0.005)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(_STOP, timeout=timeout)
            thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def record_drop(self, reason: str) -> None:
        with self._lock:
            self.dropped += 1
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + 1
        if self._on_drop is not None:
            with contextlib.suppress(Exception):
                self._on_drop(reason)

    def _warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last_warned.get(kind)
        if last is not None and now - last < self._warn_interval:
            return
        self._last_warned[kind] = now
        with contextlib.suppress(Exception):
            self._on_warning(message)

    def _resolve(self) -> bool:
        now = time.monotonic()
        if self._addr is not None and now - self._resolved_at < RERESOLVE_S:
            return True
        if self._addr is None and now < self._next_resolve:
            return False
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:
            self._next_resolve = now + RESOLVE_RETRY_S
            if self._addr is not None:
                self._resolved_at = now  # keep the last good address; retry later
                return True
            self._warn(
                "resolve",
                f"cannot resolve log sink {self.sink} ({exc}); dropping lines until it resolves",
            )
            return False
        family, socktype, proto, _, addr = infos[0]
        if self._sock is None or self._sock.family != family:
            if self._sock is not None:
                self._sock.close()
            self._sock = socket.socket(family, socktype, proto)
        self._addr = addr
        self._resolved_at = now
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send(str(item))
            finally:
                self._queue.task_done()

    def _send(self, line: str) -> None:
        try:
            if not self._resolve() or self._sock is None or self._addr is None:
                self.record_drop(DROP_UNRESOLVABLE)
                return
            self._sock.sendto(truncate_line(line, self.max_datagram), self._addr)
            self.sent += 1
        except OSError as exc:
            self.record_drop(DROP_SEND_ERROR)
            self._warn("send", f"cannot send to log sink {self.sink} ({exc}); dropping lines")
        except Exception as exc:  # the sender thread must survive anything a line can do
            self.record_drop(DROP_SEND_ERROR)
            self._warn("send", f"unexpected error sending to {self.sink}: {type(exc).__name__}")


class UdpLogHandler(logging.Handler):
    """``logging`` handler that forwards each formatted record to ``REMOTE_LOG_SINK``.

    Attach it to the ``iir`` logger with the same formatter as the local JSON lines (which are
    already scrubbed). ``dropped`` counts lines lost; ``on_drop(reason)`` feeds a metric.
    """

    def __init__(
        self,
        sink: str | tuple[str, int],
        level: int = logging.NOTSET,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        on_drop: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        warn_interval: float = WARN_INTERVAL_S,
        autostart: bool = True,
    ) -> None:
        super().__init__(level)
        self.sender = UdpSender(
            sink,
            queue_size=queue_size,
            max_datagram=max_datagram,
            on_drop=on_drop,
            on_warning=on_warning,
            warn_interval=warn_interval,
            autostart=autostart,
        )

    @property
    def dropped(self) -> int:
        return self.sender.dropped

    def start(self) -> None:
        self.sender.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.sender.record_drop(DROP_FORMAT_ERROR)
            return
        self.sender.submit(line)

    def flush(self) -> None:
        self.sender.flush()

    def close(self) -> None:
        try:
            self.sender.close()
        finally:
            super().close()


def handler_from_env(
    environ: dict[str, str] | None = None,
    on_drop: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> UdpLogHandler | None:
    """Build the handler when ``REMOTE_LOG_SINK`` is set; ValueError says what is wrong with it."""
    env = os.environ if environ is None else environ
    value = env.get("REMOTE_LOG_SINK", "").strip()
    if not value:
        return None
    try:
        parse_sink(value)
    except ValueError as exc:
        raise ValueError(f"REMOTE_LOG_SINK: {exc}") from None
    return UdpLogHandler(value, on_drop=on_drop, on_warning=on_warning)


def attach_from_env(
    logger: logging.Logger,
    formatter: logging.Formatter | None = None,
    environ: dict[str, str] | None = None,
    on_drop: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> UdpLogHandler | None:
    """Add the ``REMOTE_LOG_SINK`` handler to ``logger`` with the local lines' formatter.

    Returns the handler (for ``dropped`` and ``close()``), or None when the variable is unset.
    """
    handler = handler_from_env(environ, on_drop=on_drop, on_warning=on_warning)
    if handler is None:
        return None
    if formatter is not None:
        handler.setFormatter(formatter)
    logger.addHandler(handler)
    return handler
