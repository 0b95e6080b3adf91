"""JSON-lines logging with the request id of the current request on every line.

Headers and bodies are never logged: a log line only carries the fields listed in ``_FIELDS``.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import sys
import threading
import time
from collections import deque
from contextlib import suppress
from typing import IO, Any, Protocol

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "iir_request_id", default=None
)

# Structured fields a call may pass with ``extra=``; anything else is dropped.
_FIELDS = (
    "method",
    "route",
    "status",
    "duration_ms",
    "model",
    "client",
    "backend",
    "event",
    "tokens",
    "job_id",
    "provider",
    "reason",
    "error",
    "count",
    "peer",
)


class _Scrubs(Protocol):
    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]: ...


_scrubber: _Scrubs | None = None


def set_scrubber(scrubber: _Scrubs) -> None:
    """From now on every formatted line is scrubbed (stderr and forwarded datagrams alike)."""
    global _scrubber
    _scrubber = scrubber


class JsonFormatter(logging.Formatter):
    _second: int = -1
    _stamp: str = ""

    def _time(self, record: logging.LogRecord) -> str:
        # strftime costs more than the rest of a line; it only changes once a second.
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        done = attrs.get("_iir_line")
        if isinstance(done, str):
            return done  # already formatted for another handler (stderr, then UDP)
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = attrs.get("request_id") or request_id_var.get()
        if rid:
            line["request_id"] = rid
        fields = attrs.get("_iir_fields")
        if fields is not None:
            line.update(fields)
        else:
            for name in _FIELDS:
                value = attrs.get(name)
                if value is not None:
                    line[name] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            line["exception"] = self.formatException(record.exc_info)
        text = orjson.dumps(line, default=str).decode()
        if _scrubber is not None:
            text, counts = _scrubber.scrub_text(text)
            if counts:
                from iir.ops import metrics

                metrics.count_redactions("log", counts)
        attrs["_iir_line"] = text
        return text


_LEVELS = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}

_access = logging.getLogger("iir.access")


class _AccessRecord(logging.LogRecord):
    """One request's access line, built directly: ``LogRecord.__init__`` fills in some twenty
    attributes (caller, thread, process) that a JSON access line never shows, once per request."""

    pathname = filename = module = ""
    lineno = 0
    funcName = stack_info = thread = threadName = process = processName = taskName = None  # type: ignore[assignment]
    relativeCreated = 0.0

    def __init__(self, fields: dict[str, Any]) -> None:
        now = time.time()
        self.name = "iir.access"
        self.levelno = logging.INFO
        self.levelname = "INFO"
        self.msg = "request"
        self.args = None
        self.exc_info = None
        self.exc_text = None
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self._iir_fields = fields


def access(fields: dict[str, Any]) -> None:
    """Logs one answered request on ``iir.access`` (fields with a ``None`` value are left out)."""
    if _access.isEnabledFor(logging.INFO):
        _access.handle(_AccessRecord({k: v for k, v in fields.items() if v is not None}))


def _lean_records() -> None:
    """Skips what IIR's lines never show: the caller's frame (a stack walk per line), thread and
    process names (the logging HOWTO's "Optimization" section).

    The process id stays: libraries that log in IIR's process format it with ``%(process)d``
    (vLLM does), which fails on every line when it is None."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def _keep_open(handler: logging.Handler) -> None:
    """Takes one of IIR's handlers off ``logging``'s list of handlers to close.

    ``logging.config.dictConfig`` closes every handler on that list, also those it does not
    configure, and vLLM calls it when it is imported: IIR's stderr writer would stop (its lines
    then leave only when a warning flushes them) and the UDP forwarder would drop every line.
    IIR closes its handlers itself (``configure`` replacing one, the app's shutdown) and flushes
    them at exit.
    """
    with logging._lock:  # type: ignore[attr-defined]
        refs = logging._handlerList  # type: ignore[attr-defined]
        refs[:] = [ref for ref in refs if ref() is not handler]


class BatchedStreamHandler(logging.Handler):
    """Writes lines to a stream in batches, from a thread of its own.

    A write per line is a system call that releases the GIL, and in the server the interpreter
    then goes to Granian's runtime thread and has to come back: with one access line per request
    that handoff halved the requests a worker served. Lines wait here at most ``interval``
    seconds; a warning or worse, a full batch and shutdown write everything out at once, so what
    explains a failure is never held back.
    """

    def __init__(self, stream: IO[str], interval: float = 0.05, max_lines: int = 10_000) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.max_lines = max_lines
        self._lines: deque[str] = deque()  # append and popleft are atomic: no lock per line
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iir-log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock per line: formatting is thread-safe and the queue needs none.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        with self._write_lock:  # the only place lines leave the queue: it holds at least len()
            lines = [self._lines.popleft() for _ in range(len(self._lines))]
            if lines:
                with suppress(OSError, ValueError):  # a closed or broken stderr loses lines only
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._lines:
                self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        self.flush()
        super().close()


def flush() -> None:
    """Writes out every line still waiting (the worker may exit without running ``atexit``)."""
    for handler in logging.getLogger().handlers:
        with suppress(Exception):
            handler.flush()


# IIR's handlers are not on the list that ``logging`` flushes at exit (see ``_keep_open``).
atexit.register(flush)


def configure(level: str = "info") -> None:
    """Sends IIR's log records to stderr as JSON lines (Granian's own go via its dictConfig)."""
    _lean_records()
    for old in logging.getLogger().handlers:
        if isinstance(old, BatchedStreamHandler):
            old.close()
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    _keep_open(handler)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def forward(environ: dict[str, str]) -> Any:
    """Also sends every line, as formatted (and scrubbed) here, to ``REMOTE_LOG_SINK`` over UDP.

    Sending never blocks or fails a request: a bounded queue drained by a thread, drops counted.
    """
    from iir.ops import metrics
    from iir.ops.logforward import attach_from_env

    handler = attach_from_env(
        logging.getLogger(),
        JsonFormatter(),
        environ,
        on_drop=lambda reason: metrics.LOG_DATAGRAMS_DROPPED.labels(reason).inc(),
        on_warning=logging.getLogger("iir.ops.logforward").warning,
    )
    if handler is not None:
        _keep_open(handler)
    return handler


def granian_log_config(level: str) -> dict[str, Any]:
    """A dictConfig for Granian's own loggers so its lines are JSON too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "iir.ops.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "_granian": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


log = logging.getLogger("iir")
