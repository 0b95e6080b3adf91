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
from .routing.router import Decision, Router, check_strategy, is_auto

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


def _can_fall_back(exc: Exception) -> bool:
    """Failures another model may not share: the backend's own trouble, not the request's."""
    if isinstance(exc, ApiError):
        return exc.status >= 500 or exc.status in (404, 408, 429)
    return True


def _fell_back(name: str, nxt: str, exc: Exception) -> None:
    why = exc.message if isinstance(exc, ApiError) else type(exc).__name__
    log.warning(
        "model failed before the first byte; trying the next candidate",
        extra={"event": "fallback", "model": name, "next": nxt, "error": why},
    )
    metrics.FALLBACKS.labels(name, nxt).inc()


class ChatService:
    """Runs chat requests; the HTTP route, async jobs and ``/infer`` all come through here."""

    def __init__(
        self,
        registry: ModelRegistry,
        router: Router | None = None,
        default_model: str | None = None,
    ) -> None:
        self.registry = registry
        self.router = router
        self.default_model = default_model

    async def handle(self, req: Request) -> Response | StreamResponse:
        chat = self.parse(await req.json())
        req.state["model"] = chat.model
        decision = self.route(chat, req.header("x-iir-strategy"))
        if chat.stream:
            return await self.stream(chat, decision)
        body = await self.complete(chat, decision)
        headers = decision.headers(body["model"]) if decision is not None else []
        return json_response(body, headers=headers)

    def parse(self, body: Any) -> ChatRequest:
        """Validates a decoded JSON body into a chat request (400 naming the bad field)."""
        if self.default_model and isinstance(body, dict) and body.get("model") is None:
            body = {**body, "model": self.default_model}
        return parse_chat_request(body)

    def route(self, chat: ChatRequest, strategy: str | None = None) -> Decision | None:
        """Where ``chat`` runs: routed for ``auto``; for a named model, the model itself first and
        routed fallbacks after it (a name nothing serves is 404 here, before any routing)."""
        if self.router is None:
            return None
        chosen = check_strategy(strategy, self.router.strategy)
        if is_auto(chat.model):
            return self.router.decide(chat, chosen)
        self.registry.resolve(chat.model)
        return self.router.decide(chat, chosen, explicit=chat.model)

    def _candidates(self, chat: ChatRequest, decision: Decision | None) -> list[str]:
        if decision is None and is_auto(chat.model) and self.router is not None:
            decision = self.router.decide(chat)
        return decision.candidates if decision is not None else [chat.model]

    async def complete(self, chat: ChatRequest, decision: Decision | None = None) -> dict[str, Any]:
        """Runs a request to the end and returns the ``chat.completion`` body; when a candidate
        fails, the next one is tried (nothing has reached the client yet)."""
        candidates = self._candidates(chat, decision)
        for i, name in enumerate(candidates):
            last = i == len(candidates) - 1
            try:
                backend, target = self.registry.resolve(name)
                completion = await backend.complete(chat, target)
            except Exception as exc:
                if last or not _can_fall_back(exc):
                    raise
                _fell_back(name, candidates[i + 1], exc)
                continue
            self._count(name, completion.usage)
            return completion_body(completion_id(), now(), name, completion)
        raise AssertionError("unreachable: the candidate list is never empty")

    async def stream(self, chat: ChatRequest, decision: Decision | None = None) -> StreamResponse:
        """Starts a streamed run; failures before the first piece still get a proper status, and
        move on to the next candidate while there is one."""
        candidates = self._candidates(chat, decision)
        for i, name in enumerate(candidates):
            last = i == len(candidates) - 1
            events: AsyncIterator[StreamEvent] | None = None
            try:
                backend, target = self.registry.resolve(name)
                events = backend.stream(chat, target)
                first, events = await _primed(events)
            except BaseException as exc:
                if events is not None:
                    await events.aclose()  # type: ignore[attr-defined]
                if last or not isinstance(exc, Exception) or not _can_fall_back(exc):
                    raise
                _fell_back(name, candidates[i + 1], exc)
                continue
            headers = list(SSE_HEADERS)
            if decision is not None:
                headers += decision.headers(name)
            return StreamResponse(self._sse(chat, backend, first, events, name), headers=headers)
        raise AssertionError("unreachable: the candidate list is never empty")

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
        model: str,
    ) -> AsyncIterator[bytes]:
        cid, created = completion_id(), now()
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
