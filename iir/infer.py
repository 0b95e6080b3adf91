"""``POST /infer``: direct inference on a named model, for callers that are not OpenAI clients.

The request is turned into a chat request and runs through :class:`~iir.chat.ChatService`, so
routing, backends, scrubbing and metrics are those of ``/v1/chat/completions``; only the shapes
of the request and of the answer differ. With ``"async_": true`` it becomes a job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from .errors import bad_request
from .http import Request, Response, json_response
from .ids import random_hex
from .protocol import ChatRequest, Message, _Model, validation_error
from .routing.router import is_auto

if TYPE_CHECKING:
    from .chat import ChatService
    from .jobs import JobPool

SAMPLING = ("max_tokens", "temperature", "top_p", "stop", "seed")


class _Sampling(_Model):
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None


class InferInput(_Sampling):
    """Either ``messages`` (chat) or ``prompt`` (one user turn); sampling fields may sit here too."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> InferInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' (a list) or 'prompt' (a string)")
        return self


class InferRequest(_Sampling):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: InferInput
    async_: bool = False


def parse_infer_request(body: Any) -> ChatRequest:
    """Validates an ``/infer`` body into the chat request it stands for (400 naming the field)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object", param="body")
    try:
        req = InferRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    sampling: dict[str, Any] = {}
    for name in SAMPLING:
        outer, inner = getattr(req, name), getattr(req.input, name)
        if outer is not None and inner is not None and outer != inner:
            raise bad_request(
                f"'{name}' is given both at the top level and in 'input' with different values",
                param=f"input.{name}",
            )
        value = outer if outer is not None else inner
        if value is not None:
            sampling[name] = value
    if req.input.messages is not None:
        messages = req.input.messages
    else:
        messages = [Message(role="user", content=req.input.prompt)]
    chat = ChatRequest(model=req.model, messages=messages, **sampling)
    return chat


def wants_async(body: Any) -> bool:
    return isinstance(body, dict) and body.get("async_") is True


def infer_body(completion: dict[str, Any]) -> dict[str, Any]:
    """The ``/infer`` answer, from the chat.completion body the service produced."""
    choice = completion["choices"][0] if completion.get("choices") else {}
    message = choice.get("message") or {}
    out: dict[str, Any] = {
        "id": "infer-" + random_hex(12),
        "model": completion.get("model"),
        "output": {
            "text": message.get("content") or "",
            "finish_reason": choice.get("finish_reason"),
        },
    }
    if completion.get("usage") is not None:
        out["usage"] = completion["usage"]
    return out


class InferService:
    def __init__(self, chat: ChatService, jobs: JobPool) -> None:
        self.chat = chat
        self.jobs = jobs
        jobs.shapers["infer"] = infer_body

    async def handle(self, req: Request) -> Response:
        body = await req.json()
        chat = parse_infer_request(body)
        req.state["model"] = chat.model
        if is_auto(chat.model):
            self.chat.plan(chat)  # nothing can serve it: 503 now, not in the job
        else:
            self.chat.registry.resolve(chat.model)  # unknown model: 404 now, not in the job
        if wants_async(body):
            from .jobs import accepted

            return accepted(await self.jobs.submit(req.key_id or "", "infer", chat))
        return json_response(infer_body(await self.chat.complete(chat)))


INFER_SCHEMAS: dict[str, Any] = {
    "InferRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string", "description": "`<provider>/<model>`, see /v1/models"},
            "input": {
                "type": "object",
                "description": "Exactly one of `messages` or `prompt`; sampling fields may be "
                "given here or at the top level.",
                "properties": {
                    "messages": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Message"},
                    },
                    "prompt": {"type": "string"},
                },
            },
            "async_": {"type": "boolean", "default": False},
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "seed": {"type": "integer"},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["id", "model", "output"],
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "output": {
                "type": "object",
                "required": ["text", "finish_reason"],
                "properties": {
                    "text": {"type": "string"},
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
}
