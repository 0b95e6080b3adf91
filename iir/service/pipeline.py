"""The one request pipeline: every route that runs a model (or asks where one would run) passes
through :meth:`Pipeline.prepare`, then :meth:`Pipeline.run` or :meth:`Pipeline.stream`.

The steps, in this order and nowhere else::

    default model -> scrub (request) -> validate -> admit (prompt cap, per-key token reservation)
    -> route (strategy header, policy, fallbacks) -> run -> scrub (answer) -> settle usage

Only :meth:`Pipeline.prepare` builds a :class:`~iir.core.protocol.ScrubbedChat`, the one type a
backend accepts, and it builds it from the scrubbed body: nothing a client sent reaches a backend,
a provider across the network or the job store without passing the scrubber first. What is HTTP
(auth, the per-key request limit, the disconnect watch, each API's wire shapes) is the api layer's.

Every surface runs these steps. One that has a native form (``surface``: the Responses API, the
Messages API, legacy completions) also keeps its scrubbed body as a
:class:`~iir.core.protocol.ScrubbedBody`, built in the same place; each candidate then gets the
native body when its backend speaks the surface, the canonical chat request otherwise, and a model
that serves neither is refused at the route step. Embeddings have no chat form:
:meth:`Pipeline.prepare_embeddings` and :meth:`Pipeline.embed` run the same steps (the same
methods) over a :class:`~iir.core.protocol.ScrubbedEmbeddings`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from iir import _native
from iir.backends.base import Backend
from iir.backends.registry import ModelRegistry
from iir.core.errors import ApiError, answer_too_large, bad_request
from iir.core.protocol import ScrubbedBody, ScrubbedChat, ScrubbedEmbeddings, validation_error
from iir.core.types import (
    CHAT,
    EMBEDDINGS,
    SURFACE_PATHS,
    AnswerEvent,
    Completion,
    Delta,
    Embeddings,
    NativeAnswer,
    NativeEvent,
    StreamEvent,
    Usage,
)
from iir.ops import metrics
from iir.policy import tokens
from iir.policy.auth import PEER
from iir.policy.limits import Limits, Reservation
from iir.policy.routing.router import Decision, Router, check_strategy, is_auto
from iir.policy.scrub import Scrubber, StreamScrubber

log = logging.getLogger("iir.service")

T = TypeVar("T")

#: Turns a surface's (scrubbed) body into the canonical chat body; raises 400 naming the field.
Translate = Callable[[dict[str, Any]], dict[str, Any]]

# Errors that say "this candidate cannot serve now" (so the next one may), as opposed to errors in
# the client's own request, which every candidate would refuse alike.
_FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429})


def falls_back(err: ApiError) -> bool:
    return err.status >= 500 or err.status in _FALLBACK_STATUSES


def _as_chat(body: dict[str, Any]) -> dict[str, Any]:
    return body


def cannot_serve(model: str, surface: str, capabilities: frozenset[str]) -> ApiError:
    """A 404 naming ``model``, as OpenAI answers a model used on a route it does not serve (a
    chat model on embeddings): the request is well formed, the model/route pair does not exist."""
    serves = ", ".join(SURFACE_PATHS[c] for c in sorted(capabilities) if c in SURFACE_PATHS)
    return ApiError(
        404,
        f"The model '{model}' cannot serve {SURFACE_PATHS[surface]}"
        + (f"; it serves {serves}" if serves else ""),
        code="model_not_supported",
        param="model",
    )


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
    #: The API surface asked (its path names it in errors).
    surface: str = CHAT
    #: The surface's own scrubbed body, for backends that speak the surface natively.
    native: ScrubbedBody | None = None
    #: ``(param, what)``: a field only backends that speak the surface natively honour.
    native_only: tuple[str, str] | None = None


@dataclass(slots=True)
class PreparedEmbeddings:
    """An embeddings request that passed every step before the backend."""

    request: ScrubbedEmbeddings
    candidates: list[str]
    prompt_tokens: int
    reservation: Reservation | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Answer:
    """A whole answer: the model that produced it and its scrubbed completion (usage filled in).

    ``native`` holds the whole scrubbed answer when the backend answered in the surface's own
    wire format; ``completion`` then has no choices, only the usage."""

    model: str
    completion: Completion
    native: dict[str, Any] | None = None


@dataclass(slots=True)
class EmbeddingsAnswer:
    model: str
    embeddings: Embeddings


@dataclass(slots=True)
class AnswerStream:
    """A streamed answer: scrubbed :class:`Delta` events, then exactly one :class:`Usage`.

    A backend failing mid-stream ends ``events`` with an :class:`ApiError` (its message scrubbed)
    after whatever text was held back; closing ``events`` early cancels the backend.
    """

    model: str
    events: AsyncIterator[AnswerEvent]


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
        self,
        body: Any,
        caller: Caller,
        translate: Translate = _as_chat,
        *,
        admit: bool = True,
        surface: str = CHAT,
        headers: Mapping[str, str] | None = None,
        native_only: tuple[str, str] | None = None,
    ) -> Prepared:
        """Default model, scrub, validate, admit (unless ``admit`` is false), route.

        ``surface`` other than chat keeps the scrubbed body (and ``headers``, scrubbed) for
        backends that speak it natively; ``translate`` still gives the canonical chat request
        that validation, admission and routing read. ``native_only`` (``(param, what)``) says
        the request uses something only such backends honour: routing keeps to them.

        A coroutine because admission may ask the fleet's shared limiter; with this box's own
        limiter it never suspends."""
        request, messages, native = self._parse(body, translate, surface, headers)
        prepared = Prepared(
            request, messages, [], surface=surface, native=native, native_only=native_only
        )
        if caller.peer:
            # Admitted and routed by the box that forwarded it: it runs here, on this box's own
            # backends, and counts against no limit a second time.
            prepared.own_only = True
            prepared.candidates = [request.model]
            self.registry.resolve(request.model, own_only=True)
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
        request, messages, _ = self._parse(body, translate, CHAT, None)
        return request, messages

    def _parse(
        self,
        body: Any,
        translate: Translate,
        surface: str,
        headers: Mapping[str, str] | None,
    ) -> tuple[ScrubbedChat, list[dict[str, Any]], ScrubbedBody | None]:
        body = self.scrub_request(self._with_default_model(body))
        chat = translate(body)
        try:
            request = ScrubbedChat.model_validate(chat)
        except ValidationError as exc:
            raise validation_error(exc) from None
        native = None
        if surface != CHAT:
            sent = tuple(self.scrub_request(dict(headers)).items()) if headers else ()
            native = ScrubbedBody(surface, body, sent)
        return request, chat["messages"], native

    def _with_default_model(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object", param="body")
        if self.default_model and body.get("model") is None:
            body = {**body, "model": self.default_model}
        return body  # type: ignore[no-any-return]

    def scrub_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every string of the body through the scrubber, before anything else reads it."""
        try:
            clean, counts = self.scrubber.scrub(body)
        except _native.ScrubError as exc:  # nested deeper than the scrubber walks
            param = exc.path or "body"
            raise bad_request(f"Invalid value for '{param}': {exc.reason}", param) from None
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
        chat = prepared.request
        prepared.reservation = await self._admit(
            lambda: self.count_prompt(prepared),
            (chat.output_limit or 0) * chat.n,
            caller,
            prepared.headers,
        )

    async def _admit(
        self,
        prompt_tokens: Callable[[], int],
        output_budget: int,
        caller: Caller,
        headers: list[tuple[str, str]],
        param: str = "messages",
    ) -> Reservation | None:
        limits = self.limits
        per_key = limits is not None and limits.key_tokens.enabled and caller.key_id is not None
        if not self.max_prompt_tokens and not per_key:
            return None
        prompt = prompt_tokens()
        if self.max_prompt_tokens and prompt > self.max_prompt_tokens:
            raise ApiError(
                400,
                "Request exceeds max token limit",
                code="context_length_exceeded",
                param=param,
            )
        if per_key and limits is not None and caller.key_id is not None:
            reservation = await limits.reserve_tokens(caller.key_id, prompt + output_budget)
            headers += reservation.headers
            return reservation
        return None

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
            candidates = self._named(chat.model, prepared.surface, native=prepared.native_only)
        elif decision.explicit:
            named = self._named(chat.model, prepared.surface, check=False)
            candidates = self._capable(
                list(dict.fromkeys([*named, *decision.candidates[1:]])),
                prepared.surface,
                native=prepared.native_only,
            )
        else:
            candidates = self._capable(
                decision.candidates, prepared.surface, auto=True, native=prepared.native_only
            )
        prepared.candidates = candidates
        prepared.decision = decision

    def _named(
        self,
        model: str,
        surface: str,
        check: bool = True,
        native: tuple[str, str] | None = None,
    ) -> list[str]:
        """A named model and its fallbacks. The named model must be able to serve ``surface``
        (404 when it cannot); fallbacks that cannot are left out."""
        candidates = [model, *self.fallbacks.get(model, ())]
        return self._capable(candidates, surface, native=native, served=check)

    def _capable(
        self,
        candidates: list[str],
        surface: str,
        auto: bool = False,
        native: tuple[str, str] | None = None,
        served: bool = False,
    ) -> list[str]:
        """The candidates that can serve ``surface`` (natively, when ``native`` names a field
        only such backends honour); a named (first) one that cannot is 404 (one that cannot
        take the request natively, 400). Names nothing
        serves stay: trying them gives the fallback chain its 404. With ``served``, a chain
        none of whose names is served is that 404 now (not in a job, not after the chain)."""
        kept = []
        missing: ApiError | None = None
        for i, model in enumerate(candidates):
            try:
                backend, target = self.registry.resolve(model)
            except ApiError as err:
                missing = missing or err
                kept.append(model)
                continue
            served = False  # one name is served: the chain's 404s come when tried
            capabilities = backend.capabilities(target)
            if surface in capabilities and (native is None or backend.speaks(surface, target)):
                kept.append(model)
            elif i == 0 and not auto and surface not in capabilities:
                raise cannot_serve(model, surface, capabilities)
            elif i == 0 and not auto and native is not None:
                param, what = native
                raise ApiError(
                    400,
                    f"Invalid value for '{param}': {what} can only be served by a model that "
                    f"takes {SURFACE_PATHS[surface]} natively; "
                    f"'{model}' does not",
                    code="unsupported_parameter",
                    param=param,
                )
        if served and missing is not None:
            raise missing
        if not kept:
            raise ApiError(
                503,
                f"No model the routing policy picked can serve {SURFACE_PATHS[surface]}",
                code="no_route",
            )
        return kept

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
        chat, native = prepared.request, prepared.native

        async def attempt(backend: Backend, target: str) -> Completion | NativeAnswer:
            if native is not None and backend.speaks(native.surface, target):
                return await backend.complete_native(native, target)
            return await backend.complete(chat, target)

        model, result = await self._first(prepared.candidates, attempt, prepared.own_only)
        if isinstance(result, NativeAnswer):
            usage = result.usage or self._estimate_usage(prepared, model, [])
            self._count(model, usage)
            return Answer(model, Completion([], usage), self._scrub_native(result.body))
        self._check_answer_size(answer_bytes(result), chat.n)
        if result.usage is None:
            result.usage = self._estimate_usage(
                prepared, model, [c.content or "" for c in result.choices]
            )
        self._count(model, result.usage)
        return Answer(model, self._scrub_completion(result))

    async def _first(
        self,
        candidates: list[str],
        attempt: Callable[[Backend, str], Awaitable[T]],
        own_only: bool = False,
    ) -> tuple[str, T]:
        """The first candidate's answer; one that fails in a way the next may not falls back.
        ``own_only`` keeps to this box's own backends (a request a peer forwarded here)."""
        for i, model in enumerate(candidates):
            try:
                backend, target = self.registry.resolve(model, own_only)
                return model, await attempt(backend, target)
            except ApiError as err:
                if i + 1 == len(candidates) or not falls_back(err):
                    raise
                self._fell_back(model, candidates[i + 1], err)
        raise AssertionError("no candidate model")  # pragma: no cover - never empty

    async def stream(self, prepared: Prepared) -> AnswerStream:
        """Starts a streamed run. A candidate failing before its first piece yields to the next,
        so that failures before any byte still get a proper status."""
        chat, native = prepared.request, prepared.native
        candidates = prepared.candidates
        try:
            for i, model in enumerate(candidates):
                try:
                    backend, target = self.registry.resolve(model, prepared.own_only)
                    events: AsyncIterator[StreamEvent | NativeEvent]
                    if native is not None and backend.speaks(native.surface, target):
                        events = backend.stream_native(native, target)
                    else:
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
        first: StreamEvent | NativeEvent | None,
        events: AsyncIterator[StreamEvent | NativeEvent],
    ) -> AsyncIterator[AnswerEvent]:
        clean = StreamCleaner(self.scrubber)
        usage: Usage | None = None
        produced = False
        size, limit = 0, self.max_answer_bytes
        try:
            async with aclosing(events):  # type: ignore[type-var]
                try:
                    event = first
                    while event is not None:
                        if isinstance(event, Delta):  # the common case first: once per piece
                            produced = True
                            if limit:
                                size += delta_bytes(event)
                                if size > limit:
                                    raise answer_too_large(size, limit, prepared.request.n)
                            delta = clean(event)
                            if delta is not None:
                                yield delta
                        elif isinstance(event, Usage):
                            usage = event
                        else:
                            produced = True
                            if limit and event.stream is not None:
                                size += _utf8_len(str(_at(event.data, event.path) or ""))
                                self._check_answer_size(size, prepared.request.n)
                            for out in clean.native(event):
                                yield out
                        event = await anext(events, None)
                except ApiError as err:
                    err.message = self.scrubber.scrub_text(err.message)[0]
                    log.warning(
                        "stream failed", extra={"error": err.message, "backend": backend.name}
                    )
                    for left in clean.leftovers():
                        yield left
                    raise
                except Exception:
                    log.exception("stream failed", extra={"backend": backend.name})
                    for left in clean.leftovers():
                        yield left
                    raise ApiError(502, f"{backend.name} backend error during the stream") from None
            for left in clean.leftovers():
                yield left
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

    # --- embeddings -----------------------------------------------------------------------------

    async def prepare_embeddings(self, body: Any, caller: Caller) -> PreparedEmbeddings:
        """The same steps for an embeddings request: default model, scrub, validate, admit
        (the inputs' tokens), route (a named model and its fallbacks, or for ``auto`` the
        embedding models, this box's own first)."""
        body = self.scrub_request(self._with_default_model(body))
        try:
            request = ScrubbedEmbeddings.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        prompt = self._count_inputs(request)
        prepared = PreparedEmbeddings(request, [], prompt)
        prepared.reservation = await self._admit(
            lambda: prompt, 0, caller, prepared.headers, "input"
        )
        try:
            if is_auto(request.model):
                prepared.candidates = self._embedding_models(caller)
            else:
                prepared.candidates = self._named(request.model, EMBEDDINGS)
        except BaseException:
            if prepared.reservation is not None:
                prepared.reservation.settle(0)
            raise
        return prepared

    def _count_inputs(self, request: ScrubbedEmbeddings) -> int:
        encoding, _ = tokens.encoding_for_model(request.model)
        return sum(
            len(item) if isinstance(item, list) else tokens.count_text(item, encoding)
            for item in request.inputs
        )

    def _embedding_models(self, caller: Caller) -> list[str]:
        """``auto`` for embeddings: every embedding model, local ones first; the strategy
        header's ``local-only`` and ``remote-only`` keep one side."""
        strategy = caller.strategy
        if self.router is not None:
            strategy = check_strategy(caller.strategy, self.router.strategy)
        found = self.registry.serving(EMBEDDINGS)
        if strategy == "local-only":
            found = [(name, local) for name, local in found if local]
        elif strategy == "remote-only":
            found = [(name, local) for name, local in found if not local]
        names = [name for name, local in found if local] + [n for n, local in found if not local]
        if not names:
            raise ApiError(503, "No embedding model is available for model 'auto'", code="no_route")
        return names

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsAnswer:
        """Runs the request on the first candidate that answers; settles the reservation."""
        used = 0
        try:
            request = prepared.request

            async def attempt(backend: Backend, target: str) -> Embeddings:
                return await backend.embed(request, target)

            model, result = await self._first(prepared.candidates, attempt)
            if len(result.vectors) != len(request.inputs):
                raise ApiError(
                    502, f"The backend of '{model}' answered the wrong number of vectors"
                )
            if result.usage is None:
                result.usage = Usage(prepared.prompt_tokens, 0)
            used = result.usage.prompt_tokens
            self._count(model, result.usage)
            return EmbeddingsAnswer(model, result)
        finally:
            if prepared.reservation is not None:
                prepared.reservation.settle(used)

    # --- after the backend --------------------------------------------------------------------

    def _check_answer_size(self, size: int, n: int) -> None:
        """The cap on one answer's text over all its choices, checked before the answer is
        scrubbed, shaped or stored: whatever the backend, no answer grows past it."""
        if self.max_answer_bytes and size > self.max_answer_bytes:
            raise answer_too_large(size, self.max_answer_bytes, n)

    def _scrub_native(self, body: dict[str, Any]) -> dict[str, Any]:
        """A native answer, scrubbed whole: every string in it."""
        clean, counts = self.scrubber.scrub(body)
        if counts:
            metrics.count_redactions("response", counts)
        return clean  # type: ignore[no-any-return]

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
        + (_calls_bytes(d.tool_calls) if d.tool_calls else 0)
    )


def _add(counts: dict[str, int], found: dict[str, int]) -> None:
    for rule, n in found.items():
        counts[rule] = counts.get(rule, 0) + n


def _at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _with(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (the dicts along the path are copied)."""
    out = dict(data)
    if len(path) == 1:
        out[path[0]] = value
    elif path:
        inner = out.get(path[0])
        out[path[0]] = _with(inner if isinstance(inner, dict) else {}, path[1:], value)
    return out


class StreamCleaner:
    """Scrubs streamed text per choice (content, refusal, and each tool call's arguments), so a
    secret split across chunks is still caught; each scrubber holds back only a tail that could
    still become one. Tool-call names and ids arrive whole and are scrubbed as they are.

    Native events (:meth:`native`) get the same treatment per stream key the backend marked;
    every other event is scrubbed whole."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.content: dict[int, StreamScrubber] = {}
        self.refusal: dict[int, StreamScrubber] = {}
        self.arguments: dict[tuple[int, int], StreamScrubber] = {}
        self.counts: dict[str, int] = {}
        self._texts: dict[Any, list[str]] = {}
        self.streams: dict[tuple[Any, ...], StreamScrubber] = {}
        # The last delta event of each native stream: the shape its held-back text is sent in.
        self._last: dict[tuple[Any, ...], NativeEvent] = {}

    def _scrubber(self, table: dict[Any, StreamScrubber], key: Any) -> StreamScrubber:
        s = table.get(key)
        if s is None:
            s = table[key] = self.scrubber.stream()
        return s

    def __call__(self, d: Delta) -> Delta | None:
        if d.content:
            text = d.content
            s = self.content.get(d.index)
            if s is None:  # the choice's first piece
                s = self.content[d.index] = self.scrubber.stream()
                self._texts.setdefault(d.index, [])
            self._texts[d.index].append(text)
            d.content = s.push(text)
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

    def leftovers(self) -> list[Delta | NativeEvent]:
        """Held-back text of choices and native streams that never finished (the stream ended
        or failed)."""
        out: list[Delta | NativeEvent] = []
        indices = {*self.content, *self.refusal, *(k[0] for k in self.arguments)}
        for index in sorted(indices):
            d = Delta(index=index)
            self._flush(d)
            if d.content or d.tool_calls or d.refusal:
                out.append(d)
        for key in list(self.streams):
            rest = self._release(key)
            if rest is not None:
                out.append(rest)
        return out

    def native(self, event: NativeEvent) -> list[NativeEvent]:
        """One native event as it may be sent: text pieces through their stream's scrubber,
        anything else scrubbed whole; a closing event comes after the text held back for the
        streams it closes."""
        out = []
        for key in event.closes:
            rest = self._release(key)
            if rest is not None:
                out.append(rest)
        stream = event.stream
        text = _at(event.data, event.path) if stream is not None else None
        if stream is not None and isinstance(text, str):
            key = stream
            self._texts.setdefault(key, []).append(text)
            data = self._whole(_with(event.data, event.path, ""))
            self._last[key] = NativeEvent(event.name, data, key, event.path)
            clean = self._scrubber(self.streams, key).push(text)
            if clean:
                out.append(NativeEvent(event.name, _with(data, event.path, clean), key, event.path))
            return out
        out.append(NativeEvent(event.name, self._whole(event.data), closes=event.closes))
        return out

    def _whole(self, data: dict[str, Any]) -> dict[str, Any]:
        clean, found = self.scrubber.scrub(data)
        _add(self.counts, found)
        return clean  # type: ignore[no-any-return]

    def _release(self, key: tuple[Any, ...]) -> NativeEvent | None:
        s = self.streams.pop(key, None)
        if s is None:
            return None
        rest = s.finish()
        self._add(s)
        last = self._last.pop(key, None)
        if not rest or last is None:
            return None
        return NativeEvent(last.name, _with(last.data, last.path, rest), key, last.path)

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self._texts.values()]
