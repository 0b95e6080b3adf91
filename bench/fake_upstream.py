"""A minimal, fast OpenAI-compatible upstream for benchmarks (raw asyncio, HTTP/1.1 keep-alive).

It answers every POST with a fixed ``chat.completion`` (or an SSE stream when the body asks for
``"stream": true``) and every GET with a model list, so that the time measured is the client's and
the router's, not the fake's. Run as ``python bench/fake_upstream.py PORT``.
"""

from __future__ import annotations

import asyncio
import sys

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


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

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
                self.transport.write(RESP_SSE)
            else:
                self.transport.write(RESP_JSON)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
