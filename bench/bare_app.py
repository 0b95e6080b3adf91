"""The floor for the HTTP benchmarks: a bare Granian RSGI app with fixed answers.

``POST /`` answers a fixed JSON body; ``POST /stream`` sends as many fixed SSE frames as IIR sends
for the benchmark's streamed chat (role chunk, 12 content chunks, [DONE]), one write each.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"status":"ok"}'
FRAME = (
    b'data: {"id":"chatcmpl-0123456789abcdef01234567","object":"chat.completion.chunk",'
    b'"created":1700000000,"model":"iir/echo","choices":[{"index":0,"delta":{"content":" sea"},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)
FRAMES = 13


async def app(scope: Any, proto: Any) -> None:
    if scope.method == "POST":
        await proto()
    if scope.path == "/stream":
        tr = proto.response_stream(200, [("content-type", "text/event-stream")])
        for _ in range(FRAMES):
            await tr.send_bytes(FRAME)
        await tr.send_bytes(b"data: [DONE]\n\n")
        return
    proto.response_bytes(200, [("content-type", "application/json")], BODY)
