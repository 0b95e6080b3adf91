"""A minimal, fast OpenAI-compatible upstream for benchmarks (raw asyncio, HTTP/1.1 keep-alive).

It answers every POST with a fixed ``chat.completion`` (or an SSE stream when the body asks for
``"stream": true``) and every GET with a model list, so that the time measured is the client's and
the router's, not the fake's. Run as ``python bench/fake_upstream.py PORT``.

``python bench/fake_upstream.py PORT TOKEN_MS TOKENS`` streams like a slow model instead: the role
frame at once, then one content frame every ``TOKEN_MS`` milliseconds (on a fixed schedule from
the request's arrival, so that the gaps do not drift), ``TOKENS`` of them, then the finish frame
and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
)
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})


def _chunk(delta: dict[str, object], finish: str | None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


STREAM = (
    _chunk({"role": "assistant", "content": ""}, None)
    + b"".join(_chunk({"content": w}, None) for w in ("Hello", " from", " the", " bench"))
    + _chunk({}, "stop")
    + b"data: [DONE]\n\n"
)


def _response(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


RESP_JSON = _response(COMPLETION, b"application/json")
RESP_SSE = _response(STREAM, b"text/event-stream")
RESP_MODELS = _response(MODELS, b"application/json")


TOKEN_MS = 0.0
TOKENS = 0


def _slow_frames(tokens: int) -> list[bytes]:
    return [
        _chunk({"role": "assistant", "content": ""}, None),
        *(_chunk({"content": f" t{i:04d}"}, None) for i in range(tokens)),
        _chunk({}, "stop") + b"data: [DONE]\n\n",
    ]


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timers: list[asyncio.TimerHandle] = []

    def connection_lost(self, exc: Exception | None) -> None:
        for t in self.timers:
            t.cancel()

    def _slow_stream(self) -> None:
        assert self.transport is not None
        frames = _slow_frames(TOKENS)
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
            + str(sum(map(len, frames))).encode()
            + b"\r\n\r\n"
        )
        self.transport.write(head + frames[0])
        loop = asyncio.get_running_loop()
        start, step = loop.time(), TOKEN_MS / 1000
        write = self.transport.write
        self.timers = [
            loop.call_at(start + step * (i + 1), write, frame) for i, frame in enumerate(frames[1:])
        ]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            if head.startswith(b"get"):
                self.transport.write(RESP_MODELS)
            elif b'"stream":true' in body.replace(b" ", b""):
                if TOKEN_MS > 0:
                    self._slow_stream()
                else:
                    self.transport.write(RESP_SSE)
            else:
                self.transport.write(RESP_JSON)


@contextlib.contextmanager
def running(port: int, token_ms: float = 0, tokens: int = 0) -> Iterator[str]:
    """This fake in its own process on ``port`` (slow streams with ``token_ms``); yields its
    base URL (ending in /v1) once it listens."""
    args = [sys.executable, str(Path(__file__)), str(port)]
    if token_ms:
        args += [str(token_ms), str(tokens)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) > 3:
        TOKEN_MS, TOKENS = float(sys.argv[2]), int(sys.argv[3])
    asyncio.run(main(int(sys.argv[1])))
