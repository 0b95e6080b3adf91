"""The one request pipeline: every route that runs a model (or asks where one would run) passes
through :meth:`Pipeline.prepare`, then :meth:`Pipeline.run` or :meth:`Pipeline.stream`.

The steps, in this order and nowhere else::

    default model -> scrub (request) -> validate -> admit (prompt cap, per-key token reservation)
    -> route (strategy header, policy, fallbacks) -> run -> scrub (answer) -> settle usage

Only :meth:`Pipeline.prepare` builds a :class:`~iir.core.protocol.ScrubbedChat`, the one type a
backend accepts, and it builds it from the scrubbed body: nothing a client sent reaches a backend,
a provider across the network or the job store without passing the scrubber first. What is HTTP
(auth, the per-key request limit, the disconnect watch, each API's wire shapes) is the api layer's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from iir.backends.base import Backend
from iir.backends.registry import ModelRegistry
from iir.core.errors import ApiError, answer_too_large, bad_request
from iir.core.protocol import ScrubbedChat, validation_error
from iir.core.types import Completion, Delta, StreamEvent, Usage
from iir.ops import metrics
from iir.policy import tokens
from iir.policy.auth import PEER
from iir.policy.limits import Limits, Reservation
from iir.policy.routing.router import Decision, Router, check_strategy, is_auto
from iir.policy.scrub import Scrubber, StreamScrubber

log = logging.getLogger("iir.service")

#: Turns a surface's (scrubbed) body into the canonical chat body; raises 400 naming the field.
Translate = Callable[[dict[str, Any]], dict[str, Any]]

# Errors that say "this candidate cannot serve now" (so the next one may), as opposed to errors in
# the client's own request, which every candidate would refuse alike.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


def falls_back(err: ApiError) -> bool:
    return err.status >= 500 or err.status in _FALLBACK_STATUSES


def _as_chat(body: dict[str, Any]) -> dict[str, Any]:
    return body


@dataclass(slots=True, frozen=True)
class Caller:
    """Who asks: the API key's id (None for internal work) and the routing strategy header."""

    key_id: str | None = None
    strategy: str | None = None

    @property
    def peer(self) -> bool:
        """Forwarded by another box of the fleet, which admitted and routed it already."""
        return self.key_id == PEER


@dataclass(slots=True)
class Prepared:
    """A request that passed every step before the backend: scrubbed, validated, admitted, routed."""

    request: ScrubbedChat
    #: The scrubbed messages as the client sent them (token counting reads them as they are).
    messages: list[dict[str, Any]]
    candidates: list[str]
    decision: Decision | None = None
    #: Served by this box's own backends only (a peer hop is never forwarded again).
    own_only: bool = False
    reservation: Reservation | None = None
    prompt_tokens: int | None = None
    #: Reply headers the steps produced (token-limit state, routing decision).
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Answer:
    """A whole answer: the model that produced it and its scrubbed completion (usage filled in)."""

    model: str
    completion: Completion


@dataclass(slots=True)
class AnswerStream:
    """A streamed answer: scrubbed :class:`Delta` events, then exactly one :class:`Usage`.

    A backend failing mid-stream ends ``events`` with an :class:`ApiError` (its message scrubbed)
    after whatever text was held back; closing ``events`` early cancels the backend.
    """

    model: str
    events: AsyncIterator[StreamEvent]


class Pipeline:
    """The steps every model request goes through, composed once for the whole process."""

    def __init__(
        self,
        registry: ModelRegistry,
        scrubber: Scrubber,
        *,
        limits: Limits | None = None,
        router: Router | None = None,
        fallbacks: Mapping[str, Sequence[str]] | None = None,
        max_prompt_tokens: int = 0,
        default_model: str | None = None,
        max_answer_bytes: int = 0,
    ) -> None:
        self.registry = registry
        self.scrubber = scrubber
        self.limits = limits
        self.router = router
        self.fallbacks = {k: list(v) for k, v in (fallbacks or {}).items()}
        self.max_prompt_tokens = max_prompt_tokens
        self.default_model = default_model
        #: The most text one answer may carry over all its choices (0: no cap).
        self.max_answer_bytes = max_answer_bytes

    # --- before the backend -------------------------------------------------------------------

    async def prepare(
        self, body: Any, caller: Caller, translate: Translate = _as_chat, *, admit: bool = True
    ) -> Prepared:
        """Default model, scrub, validate, admit (unless ``admit`` is false), route.

        A coroutine because admission may ask the fleet's shared limiter; with this box's own
        limiter it never suspends."""
        request, messages = self.parse(body, translate)
        prepared = Prepared(request, messages, [])
        if caller.peer:
            # Admitted and routed by the box that forwarded it: it runs here, on this box's own
            # backends, and counts against no limit a second time.
            prepared.own_only = True
            prepared.candidates = [request.model]
            self._check_served(prepared.candidates, own_only=True)
            return prepared
        if admit:
            await self.admit(prepared, caller)
        try:
            self.route(prepared, caller)
        except BaseException:
            if prepared.reservation is not None:
                prepared.reservation.settle(0)
            raise
        return prepared

    def parse(
        self, body: Any, translate: Translate = _as_chat
    ) -> tuple[ScrubbedChat, list[dict[str, Any]]]:
        """The first three steps: default model, scrub, validate (400 naming the field)."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object", param="body")
        if self.default_model and body.get("model") is None:
            body = {**body, "model": self.default_model}
        body = self.scrub_request(body)
        chat = translate(body)
        try:
            request = ScrubbedChat.model_validate(chat)
        except ValidationError as exc:
            raise validation_error(exc) from None
        return request, chat["messages"]

    def scrub_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every string of the body through the scrubber, before anything else reads it."""
        try:
            clean, counts = self.scrubber.scrub(body)
        except ValueError as exc:  # nested too deep, or text the scrubber cannot read
            param = getattr(exc, "param", None) or "body"
            raise bad_request(f"Invalid value for '{param}': {exc}", param) from None
        if counts:
            metrics.count_redactions("request", counts)
        return clean  # type: ignore[no-any-return]

    def count_prompt(self, prepared: Prepared) -> int:
        """The prompt's size in tokens with OpenAI's chat accounting (counted once)."""
        if prepared.prompt_tokens is None:
            prepared.prompt_tokens = tokens.count_chat(prepared.messages, prepared.request.model)
        return prepared.prompt_tokens

    async def admit(self, prepared: Prepared, caller: Caller) -> None:
        """The prompt-size cap, then the key's tokens-per-minute reservation."""
        limits = self.limits
        per_key = limits is not None and limits.key_tokens.enabled and caller.key_id is not None
        if not self.max_prompt_tokens and not per_key:
            return
        prompt = self.count_prompt(prepared)
        if self.max_prompt_tokens and prompt > self.max_prompt_tokens:
            raise ApiError(
                400,
                "Request exceeds max token limit",
                code="context_length_exceeded",
                param="messages",
            )
        if per_key and limits is not None and caller.key_id is not None:
            chat = prepared.request
            prepared.reservation = await limits.reserve_tokens(
                caller.key_id, prompt + (chat.output_limit or 0) * chat.n
            )
            prepared.headers += prepared.reservation.headers

    def route(self, prepared: Prepared, caller: Caller) -> None:
        """The ordered candidates: routed for ``auto``; a named model first, then its fallbacks
        (and the routed ones when the policy asks for them). A name nothing serves is 404 here."""
        chat = prepared.request
        decision = None
        if self.router is not None:
            strategy = check_strategy(caller.strategy, self.router.strategy)
            if is_auto(chat.model):
                decision = self.router.decide(
                    chat, strategy, prompt_tokens=self.count_prompt(prepared)
                )
            elif self.router.policy.explicit_fallbacks:
                self.registry.resolve(chat.model)
                decision = self.router.decide(
                    chat, strategy, explicit=chat.model, prompt_tokens=self.count_prompt(prepared)
                )
        if decision is None:
            if is_auto(chat.model):
                raise ApiError(
                    503, "Classifier error: routing is not enabled", code="classifier_error"
                )
            candidates = [chat.model, *self.fallbacks.get(chat.model, ())]
            self._check_served(candidates)
        elif decision.explicit:
            named = [chat.model, *self.fallbacks.get(chat.model, ())]
            candidates = list(dict.fromkeys([*named, *decision.candidates[1:]]))
        else:
            candidates = decision.candidates
        prepared.candidates = candidates
        prepared.decision = decision

    def _check_served(self, candidates: list[str], own_only: bool = False) -> None:
        """404 now (not in a job, not after a fallback chain) when no candidate is served."""
        first: ApiError | None = None
        for model in candidates:
            try:
                self.registry.resolve(model, own_only)
                return
            except ApiError as err:
                first = first or err
        assert first is not None
        raise first

    # --- the backend --------------------------------------------------------------------------

    async def run(self, prepared: Prepared) -> Answer:
        """Runs the request to the end; the first candidate to answer wins."""
        used: int | None = None
        try:
            answer = await self._complete(prepared)
            usage = answer.completion.usage
            if usage is not None:
                used = usage.prompt_tokens + usage.completion_tokens
            return answer
        finally:
            if prepared.reservation is not None:
                prepared.reservation.settle(used or 0)

    async def _complete(self, prepared: Prepared) -> Answer:
        chat = prepared.request
        candidates = prepared.candidates
        for i, model in enumerate(candidates):
            try:
                backend, target = self.registry.resolve(model, prepared.own_only)
                completion = await backend.complete(chat, target)
            except ApiError as err:
                if i + 1 == len(candidates) or not falls_back(err):
                    raise
                self._fell_back(model, candidates[i + 1], err)
                continue
            self._check_answer_size(answer_bytes(completion), chat.n)
            if completion.usage is None:
                completion.usage = self._estimate_usage(
                    prepared, model, [c.content or "" for c in completion.choices]
                )
            self._count(model, completion.usage)
            return Answer(model, self._scrub_completion(completion))
        raise AssertionError("no candidate model")  # pragma: no cover - never empty

    async def stream(self, prepared: Prepared) -> AnswerStream:
        """Starts a streamed run. A candidate failing before its first piece yields to the next,
        so that failures before any byte still get a proper status."""
        chat = prepared.request
        candidates = prepared.candidates
        try:
            for i, model in enumerate(candidates):
                try:
                    backend, target = self.registry.resolve(model, prepared.own_only)
                    events = backend.stream(chat, target)
                    try:
                        first = await anext(events, None)
                    except BaseException:
                        await events.aclose()  # type: ignore[attr-defined]
                        raise
                except ApiError as err:
                    if i + 1 == len(candidates) or not falls_back(err):
                        raise
                    self._fell_back(model, candidates[i + 1], err)
                    continue
                return AnswerStream(model, self._events(prepared, model, backend, first, events))
        except BaseException:
            if prepared.reservation is not None:
                prepared.reservation.settle(0)
            raise
        raise AssertionError("no candidate model")  # pragma: no cover - never empty

    async def _events(
        self,
        prepared: Prepared,
        model: str,
        backend: Backend,
        first: StreamEvent | None,
        events: AsyncIterator[StreamEvent],
    ) -> AsyncIterator[StreamEvent]:
        clean = StreamCleaner(self.scrubber)
        usage: Usage | None = None
        produced = False
        size = 0
        try:
            async with aclosing(events):  # type: ignore[type-var]
                try:
                    event = first
                    while event is not None:
                        if isinstance(event, Usage):
                            usage = event
                        else:
                            produced = True
                            if self.max_answer_bytes:
                                size += delta_bytes(event)
                                self._check_answer_size(size, prepared.request.n)
                            delta = clean(event)
                            if delta is not None:
                                yield delta
                        event = await anext(events, None)
                except ApiError as err:
                    err.message = self.scrubber.scrub_text(err.message)[0]
                    log.warning(
                        "stream failed", extra={"error": err.message, "backend": backend.name}
                    )
                    for delta in clean.leftovers():
                        yield delta
                    raise
                except Exception:
                    log.exception("stream failed", extra={"backend": backend.name})
                    for delta in clean.leftovers():
                        yield delta
                    raise ApiError(502, f"{backend.name} backend error during the stream") from None
            for delta in clean.leftovers():
                yield delta
            if usage is None:
                usage = self._estimate_usage(prepared, model, clean.texts())
            self._count(model, usage)
            yield usage
        finally:
            if clean.counts:
                metrics.count_redactions("response", clean.counts)
            if prepared.reservation is not None:
                if usage is not None:
                    used = usage.prompt_tokens + usage.completion_tokens
                elif produced:  # failed or cancelled mid-stream: what was really produced
                    used = self.count_prompt(prepared) + self._count_texts(model, clean.texts())
                else:
                    used = 0
                prepared.reservation.settle(used)

    # --- after the backend --------------------------------------------------------------------

    def _check_answer_size(self, size: int, n: int) -> None:
        """The cap on one answer's text over all its choices, checked before the answer is
        scrubbed, shaped or stored: whatever the backend, no answer grows past it."""
        if self.max_answer_bytes and size > self.max_answer_bytes:
            raise answer_too_large(size, self.max_answer_bytes, n)

    def _scrub_completion(self, completion: Completion) -> Completion:
        """Scrubs every text of an answer before the client (or the job store) sees it.

        Token logprobs spell the text out token by token, so a choice whose text had a secret
        loses them.
        """
        scrub_text, scrub = self.scrubber.scrub_text, self.scrubber.scrub
        counts: dict[str, int] = {}
        for choice in completion.choices:
            if choice.content:
                choice.content, found = scrub_text(choice.content)
                if found:
                    choice.logprobs = None
                    _add(counts, found)
            if choice.refusal:
                choice.refusal, found = scrub_text(choice.refusal)
                _add(counts, found)
            if choice.tool_calls:
                choice.tool_calls, found = scrub(choice.tool_calls)
                _add(counts, found)
        if counts:
            metrics.count_redactions("response", counts)
        return completion

    def _count_texts(self, model: str, texts: list[str]) -> int:
        encoding, _ = tokens.encoding_for_model(model)
        return sum(tokens.count_text(t, encoding) for t in texts if t)

    def _estimate_usage(self, prepared: Prepared, model: str, texts: list[str]) -> Usage:
        """Usage counted by IIR for a backend that reported none."""
        return Usage(self.count_prompt(prepared), self._count_texts(model, texts))

    def _count(self, model: str, usage: Usage) -> None:
        metrics.count_tokens(model, usage.prompt_tokens, usage.completion_tokens)

    def _fell_back(self, model: str, nxt: str, err: ApiError) -> None:
        log.warning(
            "model failed; trying its fallback",
            extra={"model": model, "event": "fallback", "status": err.status, "reason": nxt},
        )


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _calls_bytes(calls: list[dict[str, Any]] | None) -> int:
    return len(orjson.dumps(calls)) if calls else 0


def answer_bytes(completion: Completion) -> int:
    """The size of an answer's text over its choices (content, refusal, tool calls)."""
    seen: dict[int, int] = {}  # choices often share one string (echo's n copies): measured once
    total = 0
    for c in completion.choices:
        for text in (c.content, c.refusal):
            if text:
                size = seen.get(id(text))
                if size is None:
                    size = seen[id(text)] = _utf8_len(text)
                total += size
        total += _calls_bytes(c.tool_calls)
    return total


def delta_bytes(d: Delta) -> int:
    """The size of one streamed piece's text, counted toward its answer's size."""
    return (
        (_utf8_len(d.content) if d.content else 0)
        + (_utf8_len(d.refusal) if d.refusal else 0)
        + _calls_bytes(d.tool_calls)
    )


def _add(counts: dict[str, int], found: dict[str, int]) -> None:
    for rule, n in found.items():
        counts[rule] = counts.get(rule, 0) + n


class StreamCleaner:
    """Scrubs streamed text per choice (content, refusal, and each tool call's arguments), so a
    secret split across chunks is still caught; each scrubber holds back only a tail that could
    still become one. Tool-call names and ids arrive whole and are scrubbed as they are."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.content: dict[int, StreamScrubber] = {}
        self.refusal: dict[int, StreamScrubber] = {}
        self.arguments: dict[tuple[int, int], StreamScrubber] = {}
        self.counts: dict[str, int] = {}
        self._texts: dict[int, list[str]] = {}

    def _scrubber(self, table: dict[Any, StreamScrubber], key: Any) -> StreamScrubber:
        s = table.get(key)
        if s is None:
            s = table[key] = self.scrubber.stream()
        return s

    def __call__(self, d: Delta) -> Delta | None:
        if d.content:
            self._texts.setdefault(d.index, []).append(d.content)
            text = d.content
            d.content = self._scrubber(self.content, d.index).push(text)
            if d.content != text:
                d.logprobs = None  # they would spell out what was held back or redacted
        if d.refusal:
            d.refusal = self._scrubber(self.refusal, d.index).push(d.refusal) or None
        if d.tool_calls:
            for call in d.tool_calls:
                self._tool_call(d.index, call)
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

    def _tool_call(self, index: int, call: dict[str, Any]) -> None:
        for name in ("id",):
            if isinstance(call.get(name), str):
                call[name] = self._once(call[name])
        fn = call.get("function")
        if not isinstance(fn, dict):
            return
        if isinstance(fn.get("name"), str):
            fn["name"] = self._once(fn["name"])
        if isinstance(fn.get("arguments"), str):
            key = (index, int(call.get("index", 0)))
            fn["arguments"] = self._scrubber(self.arguments, key).push(fn["arguments"])

    def _once(self, text: str) -> str:
        clean, found = self.scrubber.scrub_text(text)
        _add(self.counts, found)
        return clean

    def _flush(self, d: Delta) -> None:
        s = self.content.pop(d.index, None)
        if s is not None:
            rest = s.finish()
            self._add(s)
            if rest:
                d.content = (d.content or "") + rest
        s = self.refusal.pop(d.index, None)
        if s is not None:
            rest = s.finish()
            self._add(s)
            if rest:
                d.refusal = (d.refusal or "") + rest
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
        _add(self.counts, s.counts)

    def leftovers(self) -> list[Delta]:
        """Held-back text of choices that never finished (the stream ended or failed)."""
        out = []
        indices = {*self.content, *self.refusal, *(k[0] for k in self.arguments)}
        for index in sorted(indices):
            d = Delta(index=index)
            self._flush(d)
            if d.content or d.tool_calls or d.refusal:
                out.append(d)
        return out

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self._texts.values()]
