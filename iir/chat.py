"""The chat-completion pipeline: validate, pick the backend, run it, shape the OpenAI answer.

Cross-cutting steps that wrap every route (rate limits, auth, metrics, logs) live in
:mod:`iir.app`; the steps that only concern a chat request are composed here, in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from . import metrics
from .backends.base import Backend, Completion, Delta, StreamEvent, Usage
from .errors import ApiError
from .http import SSE_DONE, SSE_HEADERS, Request, Response, StreamResponse, json_response, sse_frame
from .protocol import ChatRequest, completion_id, now, parse_chat_request, usage_dict
from .registry import ModelRegistry

log = logging.getLogger("iir.chat")


def completion_body(cid: str, created: int, model: str, completion: Completion) -> dict[str, Any]:
    choices = []
    for c in completion.choices:
        message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": c.refusal}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if completion.system_fingerprint:
        body["system_fingerprint"] = completion.system_fingerprint
    if completion.usage is not None:
        body["usage"] = usage_body(completion.usage)
    return body


def usage_body(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = usage_dict(usage.prompt_tokens, usage.completion_tokens)
    out.update(usage.details)
    return out


def chunk_body(cid: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


def delta_choice(d: Delta) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if d.content is not None:
        delta["content"] = d.content
    if d.tool_calls:
        delta["tool_calls"] = d.tool_calls
    if d.refusal is not None:
        delta["refusal"] = d.refusal
    return {
        "index": d.index,
        "delta": delta,
        "logprobs": d.logprobs,
        "finish_reason": d.finish_reason,
    }


def error_frame(err: ApiError) -> bytes:
    return sse_frame({"error": err.to_dict()["error"], "detail": err.message})


async def _primed(
    events: AsyncIterator[StreamEvent],
) -> tuple[StreamEvent | None, AsyncIterator[StreamEvent]]:
    """Waits for the first event so that a backend failing at once still gets a proper status."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        return None, events
    return first, events


class ChatService:
    """Runs chat requests; the HTTP route, async jobs and ``/infer`` all come through here."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def handle(self, req: Request) -> Response | StreamResponse:
        chat = self.parse(await req.json())
        req.state["model"] = chat.model
        if chat.stream:
            return await self.stream(chat)
        return json_response(await self.complete(chat))

    def parse(self, body: Any) -> ChatRequest:
        """Validates a decoded JSON body into a chat request (400 naming the bad field)."""
        return parse_chat_request(body)

    async def complete(self, chat: ChatRequest) -> dict[str, Any]:
        """Runs a request to the end and returns the ``chat.completion`` body."""
        backend, target = self.registry.resolve(chat.model)
        completion = await backend.complete(chat, target)
        self._count(chat.model, completion.usage)
        return completion_body(completion_id(), now(), chat.model, completion)

    async def stream(self, chat: ChatRequest) -> StreamResponse:
        """Starts a streamed run; failures before the first piece still get a proper status."""
        backend, target = self.registry.resolve(chat.model)
        events = backend.stream(chat, target)
        try:
            first, events = await _primed(events)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return StreamResponse(self._sse(chat, backend, first, events), headers=list(SSE_HEADERS))

    def _count(self, model: str, usage: Usage | None) -> None:
        if usage is not None:
            metrics.TOKENS.labels(model, "prompt").inc(usage.prompt_tokens)
            metrics.TOKENS.labels(model, "completion").inc(usage.completion_tokens)

    async def _sse(
        self,
        chat: ChatRequest,
        backend: Backend,
        first: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
    ) -> AsyncIterator[bytes]:
        cid, created, model = completion_id(), now(), chat.model
        yield sse_frame(
            chunk_body(
                cid,
                created,
                model,
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for i in range(chat.n)
                ],
            )
        )
        usage: Usage | None = None
        async with aclosing(events):  # type: ignore[type-var]
            try:
                event = first
                while event is not None:
                    if isinstance(event, Usage):
                        usage = event
                    else:
                        yield sse_frame(chunk_body(cid, created, model, [delta_choice(event)]))
                    event = await anext(events, None)
            except ApiError as err:
                log.warning("stream failed", extra={"error": err.message, "backend": backend.name})
                yield error_frame(err)
                yield SSE_DONE
                return
            except Exception:
                log.exception("stream failed", extra={"backend": backend.name})
                yield error_frame(ApiError(502, f"{backend.name} backend error during the stream"))
                yield SSE_DONE
                return
        self._count(model, usage)
        if usage is not None and chat.include_usage:
            body = chunk_body(cid, created, model, [])
            body["usage"] = usage_body(usage)
            yield sse_frame(body)
        yield SSE_DONE
