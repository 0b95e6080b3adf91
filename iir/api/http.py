"""The thin HTTP layer over Granian's RSGI protocol: requests, responses, bodies, SSE.

IIR uses no web framework (see DESIGN.md): these few types are all a handler needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import orjson
from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]

from iir.core.errors import ApiError, bad_request, client_closed
from iir.service.pipeline import Caller

JSON = "application/json"

log = logging.getLogger("iir.http")

T = TypeVar("T")


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class StreamResponse:
    """A response whose body is produced while it is sent (SSE)."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(
    obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(status, orjson.dumps(obj), JSON, headers or [])


SSE_HEADERS = [("cache-control", "no-cache"), ("x-accel-buffering", "no")]


def sse_frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def error_frame(err: ApiError) -> bytes:
    """A failure after the stream began: the error object as one frame (``[DONE]`` follows)."""
    return sse_frame({"error": err.error_object(), "detail": err.message})


class Request:
    """One HTTP request as the handlers see it."""

    __slots__ = (
        "_body",
        "client",
        "deadline",
        "headers",
        "held",
        "key_id",
        "max_body",
        "method",
        "path",
        "proto",
        "query",
        "reply_headers",
        "request_id",
        "route",
        "state",
    )

    def __init__(
        self,
        scope: Any,
        proto: Any,
        request_id: str,
        client: str,
        max_body: int,
        body_timeout: float = 30.0,
    ) -> None:
        self.proto = proto
        self.method: str = scope.method
        self.path: str = scope.path
        self.query: str = scope.query_string
        self.headers = scope.headers
        self.request_id = request_id
        self.client = client
        self.max_body = max_body
        self.key_id: str | None = None
        self.route: str = "unmatched"
        self.state: dict[str, Any] = {}
        # Headers every answer to this request carries (rate-limit state, routing decisions).
        self.reply_headers: list[tuple[str, str]] = []
        self._body: bytes | None = None
        #: Loop time by which the whole body must have arrived (``IIR_BODY_TIMEOUT``).
        self.deadline = asyncio.get_running_loop().time() + body_timeout
        #: In-flight slots this request holds; the app releases them when it is answered.
        self.held: list[Any] = []

    def header(self, name: str) -> str | None:
        value: str | None = self.headers.get(name)
        return value

    def header_lines(self, name: str) -> str | None:
        """Every line of a repeated header joined with commas (RFC 9110 5.3), as a proxy chain
        sends ``X-Forwarded-For``; ``header`` gives only the first line."""
        get_all = getattr(self.headers, "get_all", None)
        if get_all is not None:
            values = list(get_all(name))
        else:  # Granian before get_all: the items carry every line
            values = [v for k, v in self.headers.items() if k == name]
        return ",".join(values) if values else None

    def caller(self) -> Caller:
        """Who asks, as the request pipeline needs it: the key and the routing strategy."""
        return Caller(self.key_id, self.headers.get("x-iir-strategy"))

    async def body(self) -> bytes:
        """Reads the body, refusing more than ``max_body`` bytes, chunked or not."""
        if self._body is not None:
            return self._body
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise bad_request("Invalid Content-Length header", param="content-length") from None
            if length > self.max_body:
                raise _too_large(self.max_body)
        try:
            with _Deadline(self.deadline):
                if declared is not None:
                    # The server holds the body to its declared length: read it in one call.
                    self._body = await self.proto()
                    return self._body
                buf = bytearray()
                async for chunk in self.proto:
                    buf += chunk
                    if len(buf) > self.max_body:
                        raise _too_large(self.max_body)
        except ProtocolClosed:
            raise client_closed() from None
        except TimeoutError:
            # A body that trickles would hold its slot (and its connection) for ever.
            raise ApiError(
                408,
                "The request body did not arrive in time",
                code="request_timeout",
                headers=[("connection", "close")],
            ) from None
        self._body = bytes(buf)
        return self._body

    async def json(self) -> Any:
        raw = await self.body()
        if not raw.strip():
            raise bad_request("The request body is empty; expected a JSON object", param="body")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise bad_request(
                f"Malformed JSON body: {exc.msg} at position {exc.pos}", param="body"
            ) from None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, f"Request body exceeds the limit of {limit} bytes", code="payload_too_large"
    )


class _Deadline:
    """Cancels the current task at ``when`` (loop time), and turns that cancellation into
    ``TimeoutError`` on the way out; a cancellation from elsewhere (shutdown) goes on.

    What ``asyncio.timeout_at`` does, with one timer and none of its state keeping: for the
    body of every request, that bookkeeping costs more than the read.
    """

    __slots__ = ("fired", "task", "timer")

    def __init__(self, when: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.fired = False
        self.timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.timer.cancel()
        if kind is asyncio.CancelledError and self.fired and self.task.uncancel() == 0:
            raise TimeoutError from exc


class DisconnectWatch:
    """Cancels the current task once the client is gone: a model still generating an answer
    nobody will read costs GPU time or a provider's tokens.

    ``with DisconnectWatch(proto) as watch:`` around the work; if the client left, the block's
    cancellation is swallowed and ``watch.gone`` is true. The watch starts only after
    ``AFTER`` seconds, from a timer: a fast answer costs one timer and no task.
    """

    AFTER = 0.005

    __slots__ = ("gone", "proto", "task", "timer", "watcher")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.gone = False
        self.watcher: asyncio.Future[None] | None = None

    def __enter__(self) -> DisconnectWatch:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.timer = asyncio.get_running_loop().call_later(self.AFTER, self._start)
        return self

    def _start(self) -> None:
        self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        await self.proto.client_disconnect()
        self.gone = True
        self.task.cancel()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        # Swallow only our own cancellation; one from elsewhere (shutdown) goes on.
        return kind is asyncio.CancelledError and self.gone and self.task.uncancel() == 0


async def while_connected(req: Request, work: Awaitable[T]) -> T:
    """Runs ``work`` but cancels it as soon as the client goes away (streams are watched the
    same way by the app while they are sent)."""
    with DisconnectWatch(req.proto):
        return await work
    log.info("client disconnected; request cancelled", extra={"event": "disconnect"})
    raise client_closed()
