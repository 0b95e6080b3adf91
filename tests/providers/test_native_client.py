"""The native upstream client on its own, against a raw socket server that records what it sees.

The property that matters most: cancelling the Python awaitable aborts the request itself, so the
provider sees the connection close (and stops generating) while IIR would still be waiting,
before the first byte or in the middle of a stream. A client whose requests run on detached after
a cancel fails these tests.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from iir.backends.providers.client import Upstream
from iir.core.errors import ApiError
from iir.core.settings import UpstreamSettings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Seen:
    """What the raw server saw: requests (head and body) and connections closed by the client."""

    requests: list[bytes] = field(default_factory=list)
    peers: list[object] = field(default_factory=list)
    closed: int = 0
    request_seen: asyncio.Event = field(default_factory=asyncio.Event)
    closed_seen: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                seen.requests.append(request)
                seen.peers.append(writer.get_extra_info("peername"))
                seen.request_seen.set()
                await handler(reader, writer, request)
        finally:
            seen.closed += 1
            seen.closed_seen.set()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/v1", seen


async def _wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Never answers; returns when the client closes the connection."""
    await reader.read()


def _upstream(url: str, **settings: float) -> Upstream:
    values = {
        "IIR_UPSTREAM_RETRIES": 0,
        "IIR_UPSTREAM_FIRST_BYTE_TIMEOUT": 30,
        "IIR_UPSTREAM_IDLE_TIMEOUT": 30,
        **settings,
    }
    return Upstream("unit", url, {"authorization": "Bearer sk-unit"}, UpstreamSettings(**values))


def _answer(body: bytes, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def test_cancel_before_the_first_byte_closes_the_connection() -> None:
    async def main() -> None:
        async def stall(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
        ) -> None:
            await _wait_for_eof(reader)

        async with raw_server(stall) as (url, seen):
            up = _upstream(url)
            task = asyncio.create_task(up.post_json("/chat/completions", b"{}"))
            await asyncio.wait_for(seen.request_seen.wait(), 10)
            assert seen.closed == 0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(seen.closed_seen.wait(), 5)
            assert seen.closed == 1

    asyncio.run(main())


@pytest.mark.parametrize("where", ["before_first_event", "between_events", "generator_closed"])
def test_cancelling_a_stream_closes_the_connection(where: str) -> None:
    async def main() -> None:
        async def stream(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
        ) -> None:
            if where != "before_first_event":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                frame = b'data: {"n": 1}\n\n'
                writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                await writer.drain()
            await _wait_for_eof(reader)

        async with raw_server(stream) as (url, seen):
            up = _upstream(url)
            events = up.post_sse("/chat/completions", b"{}")

            async def consume() -> list[bytes]:
                return [data async for _, data in events]

            if where == "generator_closed":
                assert await anext(events) == ("message", b'{"n": 1}')
                await events.aclose()  # type: ignore[attr-defined]
            else:
                task = asyncio.create_task(consume())
                await asyncio.wait_for(seen.request_seen.wait(), 10)
                await asyncio.sleep(0.05)  # the first event (if any) is read and waited past
                assert seen.closed == 0
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await asyncio.wait_for(seen.closed_seen.wait(), 5)
            assert seen.closed == 1

    asyncio.run(main())


def test_connections_are_pooled_and_answers_read() -> None:
    async def main() -> None:
        async def answer(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
        ) -> None:
            writer.write(_answer(b'{"ok": true}'))
            await writer.drain()

        async with raw_server(answer) as (url, seen):
            up = _upstream(url)
            for _ in range(5):
                assert await up.post_json("/chat/completions", b'{"x": 1}') == {"ok": True}
            assert len(set(seen.peers)) == 1  # one kept-alive connection for all five
            head = seen.requests[0].lower()
            assert b"authorization: bearer sk-unit" in head
            assert b"content-type: application/json" in head
            assert seen.requests[0].endswith(b'{"x": 1}')

    asyncio.run(main())


def test_gzip_answers_are_inflated_and_capped_after_inflating() -> None:
    async def main() -> None:
        small = gzip.compress(b'{"ok": true}')
        bomb = gzip.compress(b" " * (4 * 1024 * 1024))

        async def answer(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes
        ) -> None:
            body = bomb if b"bomb" in req else small
            writer.write(_answer(body, extra=b"content-encoding: gzip\r\n"))
            await writer.drain()

        async with raw_server(answer) as (url, _):
            up = _upstream(url, IIR_UPSTREAM_MAX_BYTES=1024 * 1024)
            assert await up.post_json("/chat/completions", b"{}") == {"ok": True}
            with pytest.raises(ApiError) as err:
                await up.post_json("/chat/completions", b'"bomb"')
            assert err.value.status == 502 and "larger than" in err.value.message

    asyncio.run(main())


def test_redirects_are_not_followed() -> None:
    async def main() -> None:
        async def redirect(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
        ) -> None:
            writer.write(
                b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/steal\r\n"
                b"content-length: 0\r\n\r\n"
            )
            await writer.drain()

        async with raw_server(redirect) as (url, seen):
            up = _upstream(url)
            with pytest.raises(ApiError) as err:
                await up.post_json("/chat/completions", b"{}")
            assert err.value.status == 502 and "redirects are not followed" in err.value.message
            assert len(seen.requests) == 1

    asyncio.run(main())


def test_a_silent_provider_times_out() -> None:
    async def main() -> None:
        async def stall(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: bytes
        ) -> None:
            await _wait_for_eof(reader)

        async with raw_server(stall) as (url, seen):
            up = _upstream(url, IIR_UPSTREAM_FIRST_BYTE_TIMEOUT=0.2)
            with pytest.raises(ApiError) as err:
                await up.post_json("/chat/completions", b"{}")
            assert err.value.status == 504
            with pytest.raises(ApiError) as err:
                await anext(up.post_sse("/chat/completions", b"{}"))
            assert err.value.status == 504
            await asyncio.wait_for(seen.closed_seen.wait(), 5)  # and the connections are closed

    asyncio.run(main())
