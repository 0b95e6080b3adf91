"""The chat-completion pipeline: validate, pick the backend, run it, shape the OpenAI answer.

Cross-cutting steps that wrap every route (rate limits, auth, metrics, logs) live in
:mod:`iir.app`; the steps that only concern a chat request are composed here, in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import orjson

from . import metrics, overhead, tokens
from .backends.base import Backend, Completion, Delta, StreamEvent, Usage
from .errors import ApiError, client_closed
from .http import (
    SSE_DONE,
    SSE_HEADERS,
    DisconnectWatch,
    Request,
    Response,
    StreamResponse,
    json_response,
    sse_frame,
)
from .limits import Limits
from .protocol import ChatRequest, completion_id, now, parse_chat_request, usage_dict
from .registry import ModelRegistry
from .routing.router import Decision, Router, check_strategy, is_auto
from .scrub import Scrubber, StreamScrubber

log = logging.getLogger("iir.chat")

T = TypeVar("T")


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


async def _while_connected(req: Request, work: Awaitable[T]) -> T:
    """Runs ``work`` but cancels it as soon as the client goes away (streams are watched the
    same way by the app while they are sent)."""
    with DisconnectWatch(req.proto):
        return await work
    log.info("client disconnected; request cancelled", extra={"event": "disconnect"})
    raise client_closed()


class ChatService:
    """Runs chat requests; the HTTP route, async jobs and ``/infer`` all come through here.

    ``fallbacks`` maps a model to the alternatives tried, in order, when it fails before any byte
    reached the client; a routing step can instead pass its own list to :meth:`complete_from` or
    :meth:`stream_from`. ``router`` decides for ``model: "auto"`` (and, when its policy says so,
    adds routed fallbacks after a named model's); ``default_model`` fills in a request that names
    no model.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        *,
        scrubber: Scrubber,
        limits: Limits | None = None,
        max_prompt_tokens: int = 0,
        router: Router | None = None,
        default_model: str | None = None,
    ) -> None:
        self.registry = registry
        self.fallbacks = dict(fallbacks or {})
        self.scrubber = scrubber
        self.limits = limits
        self.max_prompt_tokens = max_prompt_tokens
        self.router = router
        self.default_model = default_model

    async def handle(self, req: Request) -> Response | StreamResponse:
        meter = overhead.start()
        chat = self.parse(await req.json())
        req.state["model"] = chat.model
        settle = self.admit(req, chat)
        decision = self.route(chat, req.header("x-iir-strategy"))
        candidates = self.plan(chat, decision)
        resp: Response | StreamResponse
        if chat.stream:
            resp = await _while_connected(
                req, self.stream_from(chat, candidates, settle=settle, decision=decision)
            )
        else:
            body = await _while_connected(req, self.complete_from(chat, candidates))
            if settle is not None:
                settle(body.get("usage", {}).get("total_tokens"))
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
        candidates as its fallbacks when the policy asks for them (a name nothing serves is 404
        here, before any routing)."""
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
        """Scrubs secrets out of a decoded JSON body, then validates it (400 naming the field).

        Scrubbing comes first so that no later step (a backend, a provider across the network,
        the job store, a log line) ever sees the secret.
        """
        if self.default_model and isinstance(body, dict) and body.get("model") is None:
            body = {**body, "model": self.default_model}
        body, counts = self.scrubber.scrub(body)
        if counts:
            metrics.count_redactions("request", counts)
        chat = parse_chat_request(body)
        chat.raw_messages = body["messages"]
        return chat

    def prompt_tokens(self, chat: ChatRequest) -> int:
        """The prompt's size in tokens with OpenAI's chat accounting (the Rust counter)."""
        return tokens.count_chat(chat.raw_messages or [], chat.model)

    def admit(self, req: Request, chat: ChatRequest) -> Callable[[int | None], None] | None:
        """Applies the prompt-size limit and reserves the key's tokens per minute.

        Returns the function that settles the reservation with the actual usage, if one was made.
        """
        limits = self.limits
        per_key = limits is not None and limits.key_tokens.enabled and req.key_id is not None
        if not self.max_prompt_tokens and not per_key:
            return None
        prompt = self.prompt_tokens(chat)
        if self.max_prompt_tokens and prompt > self.max_prompt_tokens:
            raise ApiError(
                400,
                "Request exceeds max token limit",
                code="context_length_exceeded",
                param="messages",
            )
        if not per_key or limits is None or req.key_id is None:
            return None
        key_id = req.key_id
        reserved = prompt + (chat.output_limit or 0) * chat.n
        req.reply_headers += limits.reserve_tokens(key_id, reserved)

        def settle(actual: int | None) -> None:
            limits.reconcile_tokens(key_id, reserved, reserved if actual is None else actual)

        return settle

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
            if completion.usage is None:
                completion.usage = self._estimate_usage(
                    chat, model, [c.content or "" for c in completion.choices]
                )
            self._count(model, completion.usage)
            return self._scrub_out(completion_body(completion_id(), now(), model, completion))
        raise ValueError("no candidate model")  # pragma: no cover - candidates is never empty

    async def stream(
        self, chat: ChatRequest, settle: Callable[[int | None], None] | None = None
    ) -> StreamResponse:
        """Starts a streamed run; failures before the first piece still get a proper status."""
        return await self.stream_from(chat, self.plan(chat), settle=settle)

    async def stream_from(
        self,
        chat: ChatRequest,
        candidates: Sequence[str],
        settle: Callable[[int | None], None] | None = None,
        decision: Decision | None = None,
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
            return StreamResponse(
                self._sse(chat, model, backend, first, events, settle), headers=headers
            )
        raise ValueError("no candidate model")  # pragma: no cover - candidates is never empty

    def _fell_back(self, model: str, nxt: str, err: ApiError) -> None:
        log.warning(
            "model failed; trying its fallback",
            extra={"model": model, "event": "fallback", "status": err.status, "reason": nxt},
        )

    def _scrub_out(self, body: dict[str, Any]) -> dict[str, Any]:
        """Scrubs an answer before the client (or the job store) sees it.

        Token logprobs are text too, but ``{"token": " hello"}`` must not read as a credential
        assignment, so they are set aside; they spell the text out token by token, so a choice
        whose text had a secret loses them.
        """
        choices = body["choices"]
        saved = [c.pop("logprobs", None) for c in choices]
        before = [c["message"].get("content") for c in choices]
        body, counts = self.scrubber.scrub(body)
        if counts:
            metrics.count_redactions("response", counts)
        for choice, logprobs, text in zip(body["choices"], saved, before, strict=True):
            choice["logprobs"] = logprobs if choice["message"].get("content") == text else None
        return body

    def _estimate_usage(self, chat: ChatRequest, model: str, texts: list[str]) -> Usage:
        """Usage counted by IIR for a backend that reported none."""
        encoding, _ = tokens.encoding_for_model(model)
        completion = sum(tokens.count_text(t, encoding) for t in texts if t)
        return Usage(tokens.count_chat(chat.raw_messages or [], model), completion)

    def _count(self, model: str, usage: Usage | None) -> None:
        if usage is not None:
            metrics.count_tokens(model, usage.prompt_tokens, usage.completion_tokens)

    async def _sse(
        self,
        chat: ChatRequest,
        model: str,
        backend: Backend,
        first: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
        settle: Callable[[int | None], None] | None = None,
    ) -> AsyncIterator[bytes]:
        cid, created = completion_id(), now()
        clean = _StreamCleaner(self.scrubber)
        # Every content frame shares its head: serialized once, up to `"choices":`.
        head = b"data: " + orjson.dumps(chunk_body(cid, created, model, []))[: -len(b"[]}")]

        def frame(delta: Delta) -> bytes:
            return head + orjson.dumps((delta_choice(delta),)) + b"}\n\n"

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
                        delta = clean(event)
                        if delta is not None:
                            yield frame(delta)
                    event = await anext(events, None)
            except ApiError as err:
                err.message = self.scrubber.scrub_text(err.message)[0]
                log.warning("stream failed", extra={"error": err.message, "backend": backend.name})
                for delta in clean.leftovers():
                    yield frame(delta)
                yield error_frame(err)
                yield SSE_DONE
                return
            except Exception:
                log.exception("stream failed", extra={"backend": backend.name})
                for delta in clean.leftovers():
                    yield frame(delta)
                yield error_frame(ApiError(502, f"{backend.name} backend error during the stream"))
                yield SSE_DONE
                return
            finally:
                if clean.counts:
                    metrics.count_redactions("response", clean.counts)
        for delta in clean.leftovers():
            yield frame(delta)
        if usage is None:
            usage = self._estimate_usage(chat, model, clean.texts())
        if settle is not None:
            settle(usage.prompt_tokens + usage.completion_tokens)
        self._count(model, usage)
        if usage is not None and chat.include_usage:
            body = chunk_body(cid, created, model, [])
            body["usage"] = usage_body(usage)
            yield sse_frame(body)
        yield SSE_DONE


class _StreamCleaner:
    """Scrubs streamed text per choice (and per tool call's arguments), so a secret split across
    chunks is still caught; each scrubber holds back only a tail that could still become one."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.content: dict[int, StreamScrubber] = {}
        self.arguments: dict[tuple[int, int], StreamScrubber] = {}
        self.counts: dict[str, int] = {}
        self._texts: dict[int, list[str]] = {}

    def __call__(self, d: Delta) -> Delta | None:
        if d.content:
            s = self.content.get(d.index)
            if s is None:
                s = self.content[d.index] = self.scrubber.stream()
                self._texts[d.index] = []
            self._texts[d.index].append(d.content)
            text = d.content
            d.content = s.push(text)
            if d.content != text:
                d.logprobs = None  # they would spell out what was held back or redacted
        if d.tool_calls:
            for call in d.tool_calls:
                fn = call.get("function")
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    key = (d.index, int(call.get("index", 0)))
                    s = self.arguments.get(key)
                    if s is None:
                        s = self.arguments[key] = self.scrubber.stream()
                    fn["arguments"] = s.push(fn["arguments"])
        if d.finish_reason is not None:
            self._flush(d)
        if (
            not d.content
            and not d.tool_calls
            and d.finish_reason is None
            and d.refusal is None
            and d.logprobs is None
        ):
            return None  # everything in it is held back for now
        return d

    def _flush(self, d: Delta) -> None:
        s = self.content.pop(d.index, None)
        if s is not None:
            rest = s.finish()
            self._add(s)
            if rest:
                d.content = (d.content or "") + rest
        for key in [k for k in self.arguments if k[0] == d.index]:
            s = self.arguments.pop(key)
            rest = s.finish()
            self._add(s)
            if rest:
                d.tool_calls = [
                    *(d.tool_calls or []),
                    {"index": key[1], "function": {"arguments": rest}},
                ]

    def _add(self, s: StreamScrubber) -> None:
        for rule, n in s.counts.items():
            self.counts[rule] = self.counts.get(rule, 0) + n

    def leftovers(self) -> list[Delta]:
        """Held-back text of choices that never finished (the stream ended or failed)."""
        out = []
        for index in sorted({*self.content, *(k[0] for k in self.arguments)}):
            d = Delta(index=index)
            self._flush(d)
            if d.content or d.tool_calls:
                out.append(d)
        return out

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self._texts.values()]
