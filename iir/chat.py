"""The chat-completion pipeline: validate, pick the backend, run it, shape the OpenAI answer.

Cross-cutting steps that wrap every route (rate limits, auth, metrics, logs) live in
:mod:`iir.app`; the steps that only concern a chat request are composed here, in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from . import metrics, overhead
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


# Errors that say "this candidate cannot serve now" (so the next one may), as opposed to errors in
# the client's own request, which every candidate would refuse alike.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


def falls_back(err: ApiError) -> bool:
    return err.status >= 500 or err.status in _FALLBACK_STATUSES


class ChatService:
    """Runs chat requests; the HTTP route, async jobs and ``/infer`` all come through here.

    ``fallbacks`` maps a model to the alternatives tried, in order, when it fails before any byte
    reached the client; a routing step can instead pass its own list to :meth:`complete_from` or
    :meth:`stream_from`. ``router`` decides for ``model: "auto"`` (and adds its fallbacks after a
    named model's); ``default_model`` fills in a request that names no model.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        router: Router | None = None,
        default_model: str | None = None,
    ) -> None:
        self.registry = registry
        self.fallbacks = dict(fallbacks or {})
        self.router = router
        self.default_model = default_model

    async def handle(self, req: Request) -> Response | StreamResponse:
        meter = overhead.start()
        chat = self.parse(await req.json())
        req.state["model"] = chat.model
        decision = self.route(chat, req.header("x-iir-strategy"))
        candidates = self.plan(chat, decision)
        resp: Response | StreamResponse
        if chat.stream:
            resp = await self.stream_from(chat, candidates, decision)
        else:
            body = await self.complete_from(chat, candidates)
            resp = json_response(body, headers=decision.headers(body["model"]) if decision else [])
        spent = meter.overhead()
        metrics.OVERHEAD.observe(spent)
        resp.headers.append(("x-iir-overhead-ms", f"{spent * 1000:.3f}"))
        return resp

    def candidates(self, model: str) -> list[str]:
        """The model asked for, then its configured fallbacks."""
        return [model, *self.fallbacks.get(model, ())]

    def route(self, chat: ChatRequest, strategy: str | None = None) -> Decision | None:
        """Where ``chat`` runs: routed for ``auto``; a named model runs first, with the routed
        candidates as its fallbacks (a name nothing serves is 404 here, before any routing)."""
        if self.router is None:
            return None
        chosen = check_strategy(strategy, self.router.strategy)
        if is_auto(chat.model):
            return self.router.decide(chat, chosen)
        if not self.router.policy.explicit_fallbacks:
            return None  # a named model runs as asked, with only its IIR_FALLBACKS
        self.registry.resolve(chat.model)
        return self.router.decide(chat, chosen, explicit=chat.model)

    def plan(self, chat: ChatRequest, decision: Decision | None = None) -> list[str]:
        """The ordered candidate models: the decision's, after a named model's own fallbacks."""
        if decision is None and self.router is not None and is_auto(chat.model):
            decision = self.router.decide(chat)
        if decision is None:
            return self.candidates(chat.model)
        if not decision.explicit:
            return decision.candidates
        return list(dict.fromkeys([*self.candidates(chat.model), *decision.candidates[1:]]))

    def parse(self, body: Any) -> ChatRequest:
        """Validates a decoded JSON body into a chat request (400 naming the bad field)."""
        if self.default_model and isinstance(body, dict) and body.get("model") is None:
            body = {**body, "model": self.default_model}
        return parse_chat_request(body)

    async def complete(self, chat: ChatRequest) -> dict[str, Any]:
        """Runs a request to the end and returns the ``chat.completion`` body."""
        return await self.complete_from(chat, self.plan(chat))

    async def complete_from(self, chat: ChatRequest, candidates: Sequence[str]) -> dict[str, Any]:
        """Tries ``candidates`` in order; the first answer wins, and names the model it came from."""
        for i, model in enumerate(candidates):
            try:
                backend, target = self.registry.resolve(model)
                completion = await backend.complete(chat, target)
            except ApiError as err:
                if i + 1 == len(candidates) or not falls_back(err):
                    raise
                self._fell_back(model, candidates[i + 1], err)
                continue
            self._count(model, completion.usage)
            return completion_body(completion_id(), now(), model, completion)
        raise ValueError("no candidate model")  # pragma: no cover - candidates is never empty

    async def stream(self, chat: ChatRequest) -> StreamResponse:
        """Starts a streamed run; failures before the first piece still get a proper status."""
        return await self.stream_from(chat, self.plan(chat))

    async def stream_from(
        self, chat: ChatRequest, candidates: Sequence[str], decision: Decision | None = None
    ) -> StreamResponse:
        """Like :meth:`complete_from`: a candidate failing before its first piece yields to the next."""
        for i, model in enumerate(candidates):
            try:
                backend, target = self.registry.resolve(model)
                events = backend.stream(chat, target)
                try:
                    first, events = await _primed(events)
                except BaseException:
                    await events.aclose()  # type: ignore[attr-defined]
                    raise
            except ApiError as err:
                if i + 1 == len(candidates) or not falls_back(err):
                    raise
                self._fell_back(model, candidates[i + 1], err)
                continue
            headers = list(SSE_HEADERS)
            if decision is not None:
                headers += decision.headers(model)
            return StreamResponse(self._sse(chat, model, backend, first, events), headers=headers)
        raise ValueError("no candidate model")  # pragma: no cover - candidates is never empty

    def _fell_back(self, model: str, nxt: str, err: ApiError) -> None:
        log.warning(
            "model failed; trying its fallback",
            extra={"model": model, "event": "fallback", "status": err.status, "reason": nxt},
        )

    def _count(self, model: str, usage: Usage | None) -> None:
        if usage is not None:
            metrics.TOKENS.labels(model, "prompt").inc(usage.prompt_tokens)
            metrics.TOKENS.labels(model, "completion").inc(usage.completion_tokens)

    async def _sse(
        self,
        chat: ChatRequest,
        model: str,
        backend: Backend,
        first: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
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
