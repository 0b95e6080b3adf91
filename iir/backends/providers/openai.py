"""``openai/<model>``: OpenAI's chat completions, and its Responses API natively.

A ``/v1/responses`` request for an OpenAI model goes to ``POST {base}/responses`` as the client
sent it (scrubbed), so that everything the Responses API does beyond chat (reasoning items,
built-in state of the model's own tools, ``include``) keeps working. IIR keeps the conversation
itself, so the request goes with ``store: false`` and without IIR's ``previous_response_id`` and
``background`` (the earlier turns are already in ``input``). Stream events are marked for the
answer scrubber: each text, refusal, reasoning and arguments delta belongs to one stream, closed
by its ``.done`` event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from iir.backends.providers.base import as_object, bad_answer
from iir.backends.providers.compat import OpenAICompatBackend
from iir.core.protocol import ScrubbedBody
from iir.core.types import RESPONSES, Completion, NativeAnswer, NativeEvent, StreamEvent, Usage

RESPONSES_PATH = "/responses"
# Fields IIR answers itself: never sent on.
_OWN = ("previous_response_id", "background", "store", "stream", "stream_options")
# Delta events: (the stream a piece belongs to, from the event's indices).
_DELTAS = {
    "response.output_text.delta": "text",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning",
    "response.reasoning_summary_text.delta": "summary",
    "response.function_call_arguments.delta": "arguments",
    "response.custom_tool_call_input.delta": "custom",
}
_DONES = {name.removesuffix(".delta") + ".done": kind for name, kind in _DELTAS.items()}
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def responses_usage(raw: Any) -> Usage | None:
    raw = as_object(raw)
    prompt, out = raw.get("input_tokens"), raw.get("output_tokens")
    if not isinstance(prompt, int) or not isinstance(out, int):
        return None
    cached = as_object(raw.get("input_tokens_details")).get("cached_tokens")
    details = (
        {"prompt_tokens_details": {"cached_tokens": cached}} if isinstance(cached, int) else {}
    )
    return Usage(prompt, out, details)


def responses_body(request: ScrubbedBody, model: str, stream: bool) -> bytes:
    body = {k: v for k, v in request.body.items() if k not in _OWN}
    body["model"] = model
    body["store"] = False
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _key(kind: str, data: dict[str, Any]) -> tuple[Any, ...]:
    second = data.get("summary_index", data.get("content_index", 0))
    return (kind, data.get("output_index", 0), second)


def mark(name: str, data: dict[str, Any]) -> NativeEvent:
    """A Responses stream event, marked for the answer scrubber."""
    kind = _DELTAS.get(name)
    if kind is not None:
        return NativeEvent(name, data, _key(kind, data), ("delta",))
    kind = _DONES.get(name)
    if kind is not None:
        return NativeEvent(name, data, closes=(_key(kind, data),))
    return NativeEvent(name, data)


class OpenAIBackend(OpenAICompatBackend):
    name = "openai"
    key_vars = ("OPENAI_API_KEY",)
    base_var = "IIR_OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    catalogue = (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
    )

    def speaks(self, surface: str, model: str) -> bool:
        return surface == RESPONSES or super().speaks(surface, model)

    async def complete_native(self, request: ScrubbedBody, model: str) -> Completion | NativeAnswer:
        if request.surface != RESPONSES:
            return await super().complete_native(request, model)
        answer = await self._up().post_json(RESPONSES_PATH, responses_body(request, model, False))
        if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
            raise bad_answer(self.name, "the answer is not a response object")
        return NativeAnswer(answer, responses_usage(answer.get("usage")))

    def stream_native(
        self, request: ScrubbedBody, model: str
    ) -> AsyncIterator[StreamEvent | NativeEvent]:
        if request.surface != RESPONSES:
            return super().stream_native(request, model)
        return self._responses_stream(responses_body(request, model, True))

    async def _responses_stream(self, body: bytes) -> AsyncIterator[StreamEvent | NativeEvent]:
        events = self._up().post_sse(RESPONSES_PATH, body)
        usage: Usage | None = None
        ended = False
        try:
            async for event, raw in events:
                if ended:
                    continue  # drain to the end so the connection can be reused
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise bad_answer(self.name, "a stream event is not valid JSON") from None
                if not isinstance(data, dict):
                    raise bad_answer(self.name, "a stream event is not a JSON object")
                name = str(data["type"]) if isinstance(data.get("type"), str) else event
                if name == "error" or ("error" in data and "type" not in data):
                    err = data.get("error")
                    message = err.get("message") if isinstance(err, dict) else data.get("message")
                    raise bad_answer(self.name, f"error during the stream: {message}")
                if name in _TERMINAL:
                    ended = True
                    usage = responses_usage(as_object(data.get("response")).get("usage"))
                yield mark(name, data)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        if not ended:
            raise bad_answer(self.name, "the stream ended before the response was complete")
        if usage is not None:
            yield usage
