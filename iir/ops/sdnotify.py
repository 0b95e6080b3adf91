"""systemd's notify protocol (``sd_notify``), standard library only.

With ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, and with
``WatchdogSec=`` it restarts a service that stops sending ``WATCHDOG=1``. The pings come from a
task on the server's event loop, so a loop held by one request (the failure that matters in a
one-worker server) stops them and gets the process restarted. The protocol is one datagram per
message on the AF_UNIX socket named by ``NOTIFY_SOCKET`` (``@name`` is the abstract namespace).

The variables are read once and then removed from the process environment, so that child
processes (the vLLM engine core) neither inherit them nor speak for the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import MutableMapping
from contextlib import suppress

log = logging.getLogger("iir.sdnotify")


class Notifier:
    """Sends notify messages; every method is a no-op when systemd did not ask for them."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        #: Seconds between watchdog pings (half of systemd's timeout, as sd_watchdog_enabled(3)
        #: recommends); None when no watchdog is armed.
        self.interval = watchdog_usec / 2_000_000 if address and watchdog_usec else None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Reads ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``, then removes them (and
        ``WATCHDOG_PID``) from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "") or None
        raw_usec = env.pop("WATCHDOG_USEC", "")
        env.pop("WATCHDOG_PID", None)  # names the service's main process, not this worker
        try:
            usec = int(raw_usec) if raw_usec else None
        except ValueError:
            usec = None
        if address is not None and not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET is not a unix socket path; systemd is not notified")
            address = None
        return cls(address, usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Sends one message (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``)."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                # Non-blocking: a full receive queue (a systemd that does not read) drops a
                # message instead of holding the event loop the pings are there to watch.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message.encode(), target)
        except BlockingIOError:
            return False
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc.strerror or exc)
            return False
        return True

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def start_watchdog(self) -> None:
        """Pings from a task on the running loop while the loop keeps turning."""
        if self.interval is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pings(self.interval))

    async def _pings(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sock is not None:
            with suppress(OSError):
                self._sock.close()
            self._sock = None
