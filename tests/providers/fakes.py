"""Fake remote providers on loopback, speaking the real wire formats, with injectable faults.

``FakeProvider("openai")`` answers OpenAI's ``POST /v1/chat/completions`` (JSON and SSE) and
``GET /v1/models``; ``FakeProvider("anthropic")`` answers the Messages API ``POST /v1/messages``
(JSON and its SSE event stream) and its model list. Each runs an aiohttp server on its own event
loop in a thread, records every request it gets, and applies queued :class:`Fault` s to chat
requests in order.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Fault:
    """What the next chat request gets instead of a normal answer.

    kind: ``latency`` (wait ``seconds`` then answer), ``status`` (answer ``status`` with an error
    body, and ``retry_after`` if set), ``reset`` (drop the connection before answering),
    ``reset_mid`` (stream a few events, then drop), ``malformed`` (200 with a broken body or
    chunk), ``stall`` (stream a few events, then go silent), ``stall_before`` (never answer),
    ``error_event`` (stream a few events, then the provider's in-stream error).

    Hostile answers: ``reset_body`` (a non-streamed body cut off half-way), ``trickle`` (one
    byte, or for streams one comment line, every ``seconds``, for ever), ``oversized`` (a valid
    answer of ``size`` bytes; ``chunked`` hides its length), ``gzip_bomb`` (a gzip body that
    inflates to ``size`` bytes), ``endless_line`` (after ``at`` frames, one SSE line that never
    ends), ``redirect`` (302 to ``location``), ``content_type`` (200 with an HTML page).
    """

    kind: str
    status: int = 500
    seconds: float = 0.0
    retry_after: str | None = None
    message: str = "simulated failure"
    at: int = 2  # for stream faults: the index of the frame where the fault strikes
    size: int = 0
    chunked: bool = False
    location: str = ""


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: Any = (
        None  # the client's (host, port): the same for requests on one kept-alive connection
    )


@dataclass
class FakeProvider:
    kind: str  # "openai" or "anthropic"
    key: str | None = None
    models: list[str] = field(default_factory=lambda: ["fake-large", "fake-small"])
    requests: list[Recorded] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    always: Fault | None = None  # applied to every chat request while set
    cancelled: int = 0  # chat handlers ended by the client going away
    tail_delay: float = 0.0  # pause between a stream's last event and the end of its body
    reply: str | None = None  # answer this text instead of echoing the last user message
    chunk_chars: int | None = None  # stream the answer in pieces of this many characters
    omit_usage: bool = False  # answer without usage, as some OpenAI-compatible servers do
    models_fault: Fault | None = None  # applied to every GET of the model list while set

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeProvider:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        chat_path = "/v1/chat/completions" if self.kind == "openai" else "/v1/messages"
        app.router.add_post(chat_path, self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.always = None
        self.tail_delay = 0.0
        self.reply = None
        self.chunk_chars = None
        self.omit_usage = False
        self.models_fault = None

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    def wait_cancelled(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cancelled >= count:
                return True
            time.sleep(0.02)
        return False

    # --- handlers -------------------------------------------------------------------------------

    def _record(self, request: web.Request, body: Any) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(Recorded(request.method, request.path_qs, headers, body, peer))

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.key is None:
            return None
        if self.kind == "openai":
            got = request.headers.get("authorization", "")
            ok = got == f"Bearer {self.key}"
            given = got.removeprefix("Bearer ")
        else:
            given = request.headers.get("x-api-key", "")
            ok = given == self.key and request.headers.get("anthropic-version") == "2023-06-01"
        if ok:
            return None
        # Real providers echo part of a wrong key; this fake echoes all of it (worst case).
        return self._error(401, f"Incorrect API key provided: {given}", "authentication_error")

    def _error(self, status: int, message: str, kind: str = "api_error") -> web.Response:
        if self.kind == "openai":
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        else:
            body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())

    def _stream_error(self) -> bytes:
        if self.kind == "openai":
            return _sse({"error": {"message": "Overloaded", "type": "server_error"}})
        return _sse(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "error",
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if self.models_fault is not None:
            hostile = await self._hostile(request, self.models_fault, stream=False)
            if hostile is not None:
                return hostile
        if self.kind == "openai":
            data: Any = {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        else:
            data = {
                "data": [
                    {
                        "type": "model",
                        "id": m,
                        "display_name": m,
                        "created_at": "2025-02-19T00:00:00Z",
                    }
                    for m in self.models
                ],
                "has_more": False,
                "first_id": self.models[0] if self.models else None,
                "last_id": self.models[-1] if self.models else None,
            }
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        self._record(request, body)
        try:
            return await self._answer(request, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _answer(self, request: web.Request, body: Any) -> web.StreamResponse:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if self.kind == "anthropic" and "max_tokens" not in body:
            return self._error(400, "max_tokens: Field required", "invalid_request_error")
        fault = self.always or (self.faults.popleft() if self.faults else None)
        if fault is not None:
            if fault.kind == "latency":
                await asyncio.sleep(fault.seconds)
            elif fault.kind == "status":
                resp = self._error(fault.status, fault.message)
                if fault.retry_after is not None:
                    resp.headers["Retry-After"] = fault.retry_after
                return resp
            elif fault.kind == "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            elif fault.kind == "stall_before":
                await asyncio.sleep(3600)
            elif fault.kind == "malformed" and not body.get("stream"):
                return web.Response(
                    body=b'{"id": "x", "choices": [', content_type="application/json"
                )
            else:
                hostile = await self._hostile(request, fault, bool(body.get("stream")))
                if hostile is not None:
                    return hostile
        stream = bool(body.get("stream"))
        if self.reply is not None:
            body = {
                **body,
                "messages": [{"role": "user", "content": self.reply}],
                "tools": None,
                "_reply_verbatim": True,
            }
        if self.kind == "openai":
            frames = openai_frames(body, self.chunk_chars, self.omit_usage) if stream else None
            answer = None if stream else openai_answer(body)
            if answer is not None and self.omit_usage:
                del answer["usage"]
        else:
            frames = anthropic_frames(body) if stream else None
            answer = None if stream else anthropic_answer(body)
        if answer is not None:
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        assert frames is not None
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, frame in enumerate(frames):
            if fault is not None and i == fault.at:
                if fault.kind == "error_event":
                    await resp.write(self._stream_error())
                    await resp.write_eof()
                    return resp
                if fault.kind == "reset_mid":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if fault.kind == "stall":
                    await asyncio.sleep(3600)
                if fault.kind == "malformed":
                    await resp.write(b"data: {not json\n\n")
                    continue
                if fault.kind == "endless_line":
                    await _forever(resp, b"data: ", b"x" * 65536)
                if fault.kind == "trickle":
                    await _forever(resp, b"", b": still here\n", fault.seconds)
            await resp.write(frame)
        if self.tail_delay:
            await asyncio.sleep(self.tail_delay)
        await resp.write_eof()
        return resp

    async def _hostile(
        self, request: web.Request, fault: Fault, stream: bool
    ) -> web.StreamResponse | None:
        """The answer of a hostile or broken provider, or None where ``fault`` strikes later (in
        the middle of a stream)."""
        kind = fault.kind
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": fault.location})
        if kind == "content_type":
            return web.Response(
                body=b"<html><body>Service moved</body></html>", content_type="text/html"
            )
        if kind == "gzip_bomb":
            return web.Response(
                body=gzip_bomb(fault.size, _BOMB_HEADS[stream]),
                headers={
                    "Content-Encoding": "gzip",
                    "Content-Type": "text/event-stream" if stream else "application/json",
                },
            )
        if kind == "oversized" and not stream:
            answer = openai_answer({"messages": [{"role": "user", "content": "x" * fault.size}]})
            raw = orjson.dumps(answer)
            if not fault.chunked:
                return web.Response(body=raw, content_type="application/json")
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(raw), 65536):
                await resp.write(raw[i : i + 65536])
            await resp.write_eof()
            return resp
        if kind == "reset_body" and not stream:
            raw = orjson.dumps(
                openai_answer({"messages": [{"role": "user", "content": "x" * 9999}]})
            )
            resp = web.StreamResponse(
                headers={"content-type": "application/json", "content-length": str(len(raw))}
            )
            await resp.prepare(request)
            await resp.write(raw[: len(raw) // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return resp
        if kind == "trickle" and not stream:
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await _forever(resp, b"", b" ", fault.seconds)
        if kind in ("endless_line", "trickle") and stream and fault.at == 0:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            if kind == "trickle":
                await _forever(resp, b"", b": still here\n", fault.seconds)
            await _forever(resp, b"data: ", b"x" * 65536)
        return None


async def _forever(resp: web.StreamResponse, head: bytes, piece: bytes, pause: float = 0.0) -> None:
    """Writes ``head``, then ``piece`` again and again until the client goes away."""
    await resp.write(head)
    while True:
        await resp.write(piece)
        await asyncio.sleep(pause)


_BOMBS: dict[tuple[int, bytes], bytes] = {}
# What a bomb inflates to: the start of a JSON answer or of an SSE line, then zeros.
_BOMB_HEADS = {False: b'{"choices": "', True: b"data: "}


def prepare_bombs(size: int) -> None:
    """Builds the bombs of ``size`` ahead (a second or so each), so that answering one does not
    hold the fake's event loop for longer than a client's first-byte timeout."""
    for head in _BOMB_HEADS.values():
        gzip_bomb(size, head)


def gzip_bomb(size: int, head: bytes = b"") -> bytes:
    """A gzip body of ``head`` and zeros that inflates to ``size`` bytes (about 1000:1); built
    once per size."""
    key = (size, head)
    if key not in _BOMBS:
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [z.compress(head)]
        block = b"0" * (1 << 20)
        for _ in range(size >> 20):
            parts.append(z.compress(block))
        parts.append(z.flush())
        _BOMBS[key] = b"".join(parts)
    return _BOMBS[key]


# --- the answers ---------------------------------------------------------------------------------


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return "".join(
                    p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


def _wants_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool the fake calls: the first one offered, unless the last turn was a tool result."""
    tools = body.get("tools")
    if not tools:
        return None
    last = body["messages"][-1]
    if last.get("role") == "tool":
        return None
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    ):
        return None
    return tools[0]


TOOL_ARGS = '{"city": "Paris"}'


def reply_text(body: dict[str, Any]) -> str:
    if body.get("_reply_verbatim"):
        return _last_user_text(body["messages"])
    return "You said: " + _last_user_text(body["messages"])


def openai_answer(body: dict[str, Any]) -> dict[str, Any]:
    tool = _wants_tool(body)
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if tool is not None:
        message["tool_calls"] = [
            {
                "id": "call_fake_1",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": TOOL_ARGS},
            }
        ]
        finish = "tool_calls"
    else:
        message["content"] = reply_text(body)
        finish = "stop"
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model"),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 5,
            "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }


def _sse(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_frames(
    body: dict[str, Any], chunk_chars: int | None = None, omit_usage: bool = False
) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    frames = [chunk({"role": "assistant", "content": ""})]
    tool = _wants_tool(body)
    if tool is not None:
        name = tool["function"]["name"]
        frames.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_fake_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        for part in (TOOL_ARGS[:8], TOOL_ARGS[8:]):
            frames.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        frames.append(chunk({}, "tool_calls"))
    else:
        text = reply_text(body)
        if chunk_chars:
            pieces = [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
        else:
            pieces = [word + " " for word in text.split(" ")]
        for piece in pieces:
            frames.append(chunk({"content": piece}))
        frames.append(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage") and not omit_usage:
        frames.append(
            _sse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
                }
            )
        )
    frames.append(b"data: [DONE]\n\n")
    return frames


def _anthropic_outcome(body: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(text, stop_reason, tool) as the real API would decide them for this fake's answer."""
    tool = _wants_tool(body)
    if tool is not None:
        return "Let me check.", "tool_use", tool
    text = reply_text(body)
    for stop in body.get("stop_sequences", ()):
        if stop in text:
            return text[: text.index(stop)], "stop_sequence", None
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        return " ".join(words[: body["max_tokens"]]), "max_tokens", None
    return text, "end_turn", None


_A_USAGE = {
    "input_tokens": 20,
    "output_tokens": 1,
    "cache_creation_input_tokens": 3,
    "cache_read_input_tokens": 4,
}


def anthropic_answer(body: dict[str, Any]) -> dict[str, Any]:
    text, stop_reason, tool = _anthropic_outcome(body)
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if tool is not None:
        content.append(
            {
                "type": "tool_use",
                "id": "toolu_fake_1",
                "name": tool["name"],
                "input": orjson.loads(TOOL_ARGS),
            }
        )
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {**_A_USAGE, "output_tokens": 7},
    }


def anthropic_frames(body: dict[str, Any]) -> list[bytes]:
    text, stop_reason, tool = _anthropic_outcome(body)
    frames = [
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": _A_USAGE,
                },
            },
            "message_start",
        ),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    for word in text.split(" "):
        frames.append(
            _sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word + " "},
                },
                "content_block_delta",
            )
        )
    frames.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    if tool is not None:
        frames.append(
            _sse(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_fake_1",
                        "name": tool["name"],
                        "input": {},
                    },
                },
                "content_block_start",
            )
        )
        for part in ("", TOOL_ARGS[:8], TOOL_ARGS[8:]):
            frames.append(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                    "content_block_delta",
                )
            )
        frames.append(_sse({"type": "content_block_stop", "index": 1}, "content_block_stop"))
    frames.append(
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 7},
            },
            "message_delta",
        )
    )
    frames.append(_sse({"type": "message_stop"}, "message_stop"))
    return frames
