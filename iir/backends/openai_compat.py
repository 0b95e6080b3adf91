"""The shared backend for every provider that speaks OpenAI's chat-completions wire format.

A provider module only states its name, prefix, variables, default base URL and built-in
catalogue; this module builds the request from a :class:`~iir.protocol.ChatRequest`, parses JSON
and SSE answers into :class:`Completion`/:class:`Delta`/:class:`Usage`, resolves
``<prefix>/<model>`` names and keeps the model list fresh in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from typing import Any, ClassVar

import orjson

from ..config import UpstreamSettings
from ..errors import ApiError
from ..protocol import ChatRequest
from ..upstream import Upstream
from .base import (
    IDLE,
    READY,
    Backend,
    BackendStatus,
    Choice,
    Completion,
    Delta,
    Load,
    ModelCard,
    ModelStatus,
    ProviderStatus,
    StreamEvent,
    Usage,
)

log = logging.getLogger("iir.providers")

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


class ProviderBackend(Backend):
    """What every remote provider shares: configuration, name resolution, the model catalogue."""

    name: ClassVar[str]
    key_vars: ClassVar[tuple[str, ...]] = ()  # first non-empty wins (aliases after the main one)
    key_required: ClassVar[bool] = True
    base_var: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    catalogue: ClassVar[tuple[str, ...]] = ()
    models_path: ClassVar[str | None] = "/models"

    def __init__(self, env: Mapping[str, str], settings: UpstreamSettings) -> None:
        self.settings = settings
        self.prefix = self.name + "/"
        self.key = next((env[v].strip() for v in self.key_vars if env.get(v, "").strip()), "")
        self.base_url = env.get(self.base_var, "").strip() or self.default_base_url or ""
        missing = []
        if self.key_required and not self.key:
            missing.append(" or ".join(self.key_vars))
        if not self.base_url:
            missing.append(self.base_var)
        self.missing = " and ".join(missing)
        self._cards = [ModelCard(self.prefix + m, self.name) for m in self.catalogue]
        self._refresher: asyncio.Task[None] | None = None
        self.upstream = (
            None
            if self.missing
            else Upstream(
                self.name, self.base_url, self.auth_headers(), settings, secrets=(self.key,)
            )
        )

    @property
    def configured(self) -> bool:
        return not self.missing

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"} if self.key else {}

    def models(self) -> list[ModelCard]:
        return list(self._cards) if self.configured else []

    def resolve(self, name: str) -> str | None:
        if not name.startswith(self.prefix):
            return None
        if self.missing:
            raise ApiError(
                404,
                f"The model '{name}' is not available: provider {self.name} is not configured "
                f"(set {self.missing})",
                code="model_not_found",
                param="model",
            )
        target = name[len(self.prefix) :]
        if not target:
            raise ApiError(
                404, f"The model '{name}' names no {self.name} model", code="model_not_found"
            )
        return target

    def load(self, model: str) -> Load:
        up = self.upstream
        if up is None:
            return IDLE
        return Load(circuit=up.breaker.routing_state(), latency_s=up.recent_latency)

    def status(self) -> BackendStatus:
        """The registry's view: the listed models, and whether the provider is usable now."""
        if self.upstream is None:
            provider = ProviderStatus(self.name, False, reason=f"set {self.missing}")
        else:
            provider = ProviderStatus(self.name, True, self.upstream.breaker.state_name)
        models = [
            ModelStatus(c.id, self.name, READY, context_length=c.context_length)
            for c in self.models()
        ]
        return BackendStatus(models=models, provider=provider)

    async def refresh(self) -> None:
        if self.configured and self.models_path:
            await self.refresh_models()

    def _up(self) -> Upstream:
        assert self.upstream is not None  # resolve() refused the request otherwise
        return self.upstream

    # --- the model list -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.configured and self.models_path:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with suppress(asyncio.CancelledError):
                await self._refresher
        if self.upstream is not None:
            await self.upstream.close()

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh_models()
            await asyncio.sleep(self.settings.models_refresh_seconds)

    async def refresh_models(self) -> None:
        """Replaces the catalogue with the provider's own list; keeps the old one on failure."""
        assert self.models_path is not None
        try:
            body = await self._up().get_json(self.models_path, self.settings.models_timeout)
            cards = self.parse_models(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = exc.message if isinstance(exc, ApiError) else type(exc).__name__
            log.warning(
                "model list refresh failed; keeping the previous list",
                extra={"provider": self.name, "reason": reason},
            )
            return
        if cards:
            self._cards = cards

    def parse_models(self, body: Any) -> list[ModelCard]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        cards = []
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                created = item.get("created")
                cards.append(
                    ModelCard(
                        self.prefix + item["id"],
                        self.name,
                        created if isinstance(created, int) else 0,
                        item.get("context_length")
                        if isinstance(item.get("context_length"), int)
                        else None,
                    )
                )
        return cards


# --- OpenAI wire format ---------------------------------------------------------------------------

_PASSTHROUGH = (
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "metadata",
)


def build_request(request: ChatRequest, model: str, stream: bool) -> bytes:
    """The upstream body: the client's validated fields, the provider's model id."""
    body: dict[str, Any] = {"model": model}
    fields = request.model_fields_set
    for name in _PASSTHROUGH:
        if name in fields:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
    body["messages"] = [m.model_dump(exclude_none=True) for m in request.messages]
    if stream:
        body["stream"] = True
        # usage always comes back so that token metrics count; ChatService forwards it only
        # when the client asked for it
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _finish(value: Any) -> str:
    return value if value in FINISH_REASONS else "stop"


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens")
    completion = raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = {
        k: raw[k]
        for k in ("prompt_tokens_details", "completion_tokens_details")
        if isinstance(raw.get(k), dict)
    }
    return Usage(prompt, completion, details)


def bad_answer(provider: str, why: str) -> ApiError:
    return ApiError(502, f"Upstream provider error: {provider}: {why}")


def parse_completion(provider: str, body: Any) -> Completion:
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        if isinstance(body, dict) and "error" in body:
            raise bad_answer(provider, f"error in the answer: {body['error']}")
        raise bad_answer(provider, "the answer has no 'choices'")
    choices = []
    for i, c in enumerate(body["choices"]):
        if not isinstance(c, dict) or not isinstance(c.get("message"), dict):
            raise bad_answer(provider, "a choice has no 'message'")
        msg = c["message"]
        content = msg.get("content")
        tool_calls = msg.get("tool_calls") if isinstance(msg.get("tool_calls"), list) else None
        choices.append(
            Choice(
                index=c["index"] if isinstance(c.get("index"), int) else i,
                content=content if isinstance(content, str) else None,
                finish_reason=_finish(c.get("finish_reason")),
                tool_calls=tool_calls or None,
                refusal=msg.get("refusal") if isinstance(msg.get("refusal"), str) else None,
                logprobs=c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None,
            )
        )
    fp = body.get("system_fingerprint")
    return Completion(choices, _usage(body.get("usage")), fp if isinstance(fp, str) else None)


def parse_chunk(provider: str, data: bytes) -> list[StreamEvent]:
    """One SSE ``data`` payload → the deltas (empty role-only deltas dropped) and usage it holds."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_answer(provider, "a stream chunk is not valid JSON") from None
    if not isinstance(chunk, dict):
        raise bad_answer(provider, "a stream chunk is not a JSON object")
    if "error" in chunk:
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise bad_answer(provider, f"error during the stream: {msg}")
    out: list[StreamEvent] = []
    for c in chunk.get("choices") or ():
        if not isinstance(c, dict):
            continue
        delta = c.get("delta") if isinstance(c.get("delta"), dict) else {}
        content = delta.get("content")
        tool_calls = delta.get("tool_calls")
        refusal = delta.get("refusal")
        finish = c.get("finish_reason")
        logprobs = c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None
        if not content and not tool_calls and refusal is None and not finish and not logprobs:
            continue
        out.append(
            Delta(
                index=c["index"] if isinstance(c.get("index"), int) else 0,
                content=content if isinstance(content, str) else None,
                tool_calls=tool_calls if isinstance(tool_calls, list) and tool_calls else None,
                finish_reason=_finish(finish) if finish else None,
                refusal=refusal if isinstance(refusal, str) else None,
                logprobs=logprobs,
            )
        )
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        out.append(usage)
    return out


class OpenAICompatBackend(ProviderBackend):
    """A provider reached through ``POST {base}/chat/completions``."""

    chat_path: ClassVar[str] = "/chat/completions"

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        body = await self._up().post_json(self.chat_path, build_request(request, model, False))
        return parse_completion(self.name, body)

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        events = self._up().post_sse(self.chat_path, build_request(request, model, True))
        finished = done = False
        try:
            # read to the end of the body even after [DONE], so the connection goes back to the
            # pool instead of being closed (a new TLS handshake costs more than the wait)
            async for _, data in events:
                if done:
                    continue
                if data.strip() == b"[DONE]":
                    done = finished = True
                    continue
                for ev in parse_chunk(self.name, data):
                    if isinstance(ev, Delta) and ev.finish_reason:
                        finished = True
                    yield ev
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not finished:
            raise bad_answer(self.name, "the stream ended before the answer was complete")
