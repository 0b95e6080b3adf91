"""``/v1/messages``: Anthropic's Messages API, on every chat model (translated) and natively on
Anthropic's own models; ``/v1/messages/count_tokens``.

These routes take the key as ``x-api-key`` (as Anthropic's clients send it) or as
``Authorization: Bearer``, answer errors in Anthropic's shape, and pass the client's
``anthropic-version`` and ``anthropic-beta`` headers on to Anthropic. A Claude model name
(``claude-…``) that no backend serves as it is means ``anthropic/claude-…``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict

from iir.api.http import (
    SSE_HEADERS,
    Request,
    Response,
    StreamResponse,
    json_response,
    while_connected,
)
from iir.api.messages import serving
from iir.api.messages.protocol import CountTokensRequest, MessagesRequest, count_body, error_body
from iir.api.router import Route
from iir.core.errors import ApiError, bad_request
from iir.core.types import MESSAGES
from iir.policy import tokens

if TYPE_CHECKING:
    from iir.api.services import Services

PASSED_HEADERS = ("anthropic-version", "anthropic-beta")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,512}")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Doc):
    """The ``message`` object (Anthropic's schema)."""

    id: str
    type: str
    role: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: dict[str, Any]


class MessageEvent(_Doc):
    """One stream event (``event: <type>`` then ``data: {...}``)."""

    type: str


class TokenCount(_Doc):
    input_tokens: int


class AnthropicError(_Doc):
    """Errors on these routes: ``{"type": "error", "error": {"type", "message"}}``."""

    type: str
    error: dict[str, str]


def passed_headers(req: Request) -> dict[str, str]:
    out = {}
    for name in PASSED_HEADERS:
        value = req.header(name)
        if value is None:
            continue
        if not _HEADER_VALUE.fullmatch(value):
            raise bad_request(f"Invalid '{name}' header", param=name)
        out[name] = value
    return out


def claude_name(svc: Services, body: Any) -> Any:
    """``claude-…`` means ``anthropic/claude-…`` unless a backend serves the name as it is."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", param="body")
    model = body.get("model")
    if isinstance(model, str) and model.startswith("claude-"):
        try:
            svc.registry.resolve(model)
        except ApiError:
            return {**body, "model": "anthropic/" + model}
    return body


async def create(svc: Services, req: Request) -> Response | StreamResponse:
    body = claude_name(svc, await req.json())
    prepared = await serving.prepare(svc.pipeline, body, req.caller(), passed_headers(req))
    chat = prepared.request
    req.state["model"] = chat.model
    req.reply_headers += prepared.headers
    decision = prepared.decision
    if chat.stream:
        stream = await while_connected(req, svc.pipeline.stream(prepared))
        headers = list(SSE_HEADERS)
        if decision is not None:
            headers += decision.headers(stream.model)
        prompt = svc.pipeline.count_prompt(prepared)
        return StreamResponse(serving.sse(stream, prompt), headers=headers)
    answer = await while_connected(req, svc.pipeline.run(prepared))
    return json_response(
        serving.message_object(answer),
        headers=decision.headers(answer.model) if decision is not None else [],
    )


async def count_tokens(svc: Services, req: Request) -> Response:
    """The prompt as IIR counts it for its limits (system prompt and messages, OpenAI's chat
    accounting), plus the tool definitions."""
    body = claude_name(svc, await req.json())
    prepared = await svc.pipeline.prepare(
        body, req.caller(), count_body, admit=False, surface=MESSAGES
    )
    req.state["model"] = prepared.request.model
    count = svc.pipeline.count_prompt(prepared)
    if prepared.request.tools:
        encoding, _ = tokens.encoding_for_model(prepared.request.model)
        count += tokens.count_text(orjson.dumps(prepared.request.tools).decode(), encoding)
    return json_response({"input_tokens": count})


TAGS = ("messages",)
ROUTES = [
    Route(
        "POST",
        "/v1/messages",
        create,
        "Create a message (Anthropic Messages API), streamed or not",
        request=MessagesRequest,
        response=Message,
        stream=MessageEvent,
        tags=TAGS,
        key_header="x-api-key",
        error_body=error_body,
        error_model=AnthropicError,
    ),
    Route(
        "POST",
        "/v1/messages/count_tokens",
        count_tokens,
        "Count the tokens of a Messages API request",
        request=CountTokensRequest,
        response=TokenCount,
        tags=TAGS,
        key_header="x-api-key",
        error_body=error_body,
        error_model=AnthropicError,
    ),
]
