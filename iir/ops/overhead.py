"""IIR's own added latency: wall time of a chat request minus the time spent waiting upstream.

The request handler opens a :class:`Meter`; the upstream client adds every wait on the network
(including back-off sleeps between retries) to the meter of the current request through a context
variable, so nothing has to be threaded through the backend interface.
"""

from __future__ import annotations

import contextvars
import time


class Meter:
    __slots__ = ("started", "waited")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.waited = 0.0

    def overhead(self) -> float:
        """Seconds spent in IIR since the meter started, waits on providers excluded."""
        return max(0.0, time.perf_counter() - self.started - self.waited)


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("iir_meter", default=None)


def start() -> Meter:
    meter = Meter()
    _meter.set(meter)
    return meter


def add_wait(seconds: float) -> None:
    meter = _meter.get()
    if meter is not None:
        meter.waited += seconds
