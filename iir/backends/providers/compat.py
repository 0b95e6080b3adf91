"""OpenAI's chat-completions wire format, shared by every provider that speaks it.

OpenAI, xAI Grok, OpenRouter and any OpenAI-compatible server differ only in name, variables,
base URL and catalogue; this module builds their request from a
:class:`~iir.core.protocol.ChatRequest` and parses JSON and SSE answers into
:class:`Completion`/:class:`Delta`/:class:`Usage`.

Legacy completions (``POST {base}/completions``) and embeddings (``POST {base}/embeddings``)
pass through as the client sent them (scrubbed), with the provider's model id; the provider
decides which of its models serve them. A model whose id names an embedding model
(``text-embedding-3-small``, ``nomic-embed-text``) serves embeddings only.
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import orjson

from iir.backends.base import cannot_serve
from iir.backends.providers.base import ProviderBackend, as_object, bad_answer
from iir.core.protocol import ChatRequest, ScrubbedBody, ScrubbedChat, ScrubbedEmbeddings
from iir.core.types import (
    COMPLETIONS,
    EMBEDDINGS,
    TRANSLATED,
    Choice,
    Completion,
    Delta,
    Embeddings,
    NativeAnswer,
    NativeEvent,
    StreamEvent,
    Usage,
)

log = logging.getLogger("iir.providers")

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


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
        delta = as_object(c.get("delta"))
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


def is_embedding_model(model: str) -> bool:
    return "embed" in model.lower()


def parse_text_completion(provider: str, body: Any) -> Completion:
    """A legacy ``text_completion`` answer."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise bad_answer(provider, "the answer has no 'choices'")
    choices = []
    for i, c in enumerate(body["choices"]):
        c = as_object(c)
        text = c.get("text")
        choices.append(
            Choice(
                index=c["index"] if isinstance(c.get("index"), int) else i,
                content=text if isinstance(text, str) else "",
                finish_reason=_finish(c.get("finish_reason")),
                logprobs=c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None,
            )
        )
    fp = body.get("system_fingerprint")
    return Completion(choices, _usage(body.get("usage")), fp if isinstance(fp, str) else None)


def parse_text_chunk(provider: str, data: bytes) -> list[StreamEvent]:
    """One SSE ``data`` payload of a legacy completions stream."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_answer(provider, "a stream chunk is not valid JSON") from None
    chunk = as_object(chunk)
    if "error" in chunk:
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise bad_answer(provider, f"error during the stream: {msg}")
    out: list[StreamEvent] = []
    for c in chunk.get("choices") or ():
        c = as_object(c)
        text, finish = c.get("text"), c.get("finish_reason")
        if not text and not finish:
            continue
        out.append(
            Delta(
                index=c["index"] if isinstance(c.get("index"), int) else 0,
                content=text if isinstance(text, str) else None,
                finish_reason=_finish(finish) if finish else None,
                logprobs=c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None,
            )
        )
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        out.append(usage)
    return out


def parse_embeddings(provider: str, body: Any) -> Embeddings:
    """An embeddings answer (float or base64 vectors), in input order."""
    data = as_object(body).get("data")
    if not isinstance(data, list):
        raise bad_answer(provider, "the embeddings answer has no 'data' list")
    rows: list[tuple[int, list[float]]] = []
    for i, item in enumerate(data):
        item = as_object(item)
        vec = item.get("embedding")
        if isinstance(vec, str):
            raw = base64.b64decode(vec)
            vec = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        if not isinstance(vec, list):
            raise bad_answer(provider, "an embedding is not a list of numbers")
        rows.append((item["index"] if isinstance(item.get("index"), int) else i, vec))
    rows.sort(key=lambda r: r[0])
    usage = as_object(as_object(body).get("usage"))
    prompt = usage.get("prompt_tokens")
    return Embeddings([v for _, v in rows], Usage(prompt, 0) if isinstance(prompt, int) else None)


class OpenAICompatBackend(ProviderBackend):
    """A provider reached through ``POST {base}/chat/completions``."""

    chat_path: ClassVar[str] = "/chat/completions"
    completions_path: ClassVar[str] = "/completions"
    embeddings_path: ClassVar[str] = "/embeddings"

    def capabilities(self, model: str) -> frozenset[str]:
        if is_embedding_model(model):
            return frozenset({EMBEDDINGS})
        return TRANSLATED | {COMPLETIONS}

    def speaks(self, surface: str, model: str) -> bool:
        return surface == COMPLETIONS

    def _legacy_body(self, request: ScrubbedBody, model: str, stream: bool) -> bytes:
        body = {**request.body, "model": model}
        body.pop("stream", None)
        body.pop("stream_options", None)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def complete_native(self, request: ScrubbedBody, model: str) -> Completion | NativeAnswer:
        if request.surface != COMPLETIONS:
            raise cannot_serve(self.name, request.surface)
        body = self._legacy_body(request, model, False)
        return parse_text_completion(
            self.name, await self._up().post_json(self.completions_path, body)
        )

    def stream_native(
        self, request: ScrubbedBody, model: str
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        if request.surface != COMPLETIONS:
            raise cannot_serve(self.name, request.surface)
        body = self._legacy_body(request, model, True)
        return self._sse(self.completions_path, body, parse_text_chunk)

    async def embed(self, request: ScrubbedEmbeddings, model: str) -> Embeddings:
        body: dict[str, Any] = {"model": model, "input": request.input}
        for name in ("dimensions", "user"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        answer = await self._up().post_json(self.embeddings_path, orjson.dumps(body))
        return parse_embeddings(self.name, answer)

    async def _sse(
        self, path: str, body: bytes, parse: Callable[[str, bytes], list[StreamEvent]]
    ) -> AsyncIterator[StreamEvent]:
        """An OpenAI-style chunk stream (``data: {...}`` then ``[DONE]``), parsed by ``parse``."""
        events = self._up().post_sse(path, body)
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
                for ev in parse(self.name, data):
                    if isinstance(ev, Delta) and ev.finish_reason:
                        finished = True
                    yield ev
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not finished:
            raise bad_answer(self.name, "the stream ended before the answer was complete")

    async def complete(self, request: ScrubbedChat, model: str) -> Completion:
        body = await self._up().post_json(self.chat_path, build_request(request, model, False))
        return parse_completion(self.name, body)

    def stream(self, request: ScrubbedChat, model: str) -> AsyncIterator[StreamEvent]:
        return self._sse(self.chat_path, build_request(request, model, True), parse_chunk)
