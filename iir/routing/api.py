"""``POST /v1/route``: the routing decision for a chat body, without running it.

Lets an operator check a policy ("where would this go, and why?") and lets clients that route
themselves ask IIR's opinion.
"""

from __future__ import annotations

from typing import Any

from .. import openapi
from ..chat import ChatService
from ..errors import ApiError
from ..http import Request, Response, json_response
from ..routes import Route
from .classifier import CATEGORIES
from .policy import STRATEGIES

SCHEMAS: dict[str, Any] = {
    "RouteDecision": {
        "type": "object",
        "required": ["object", "model", "candidates", "strategy", "category", "reason"],
        "properties": {
            "object": {"const": "route.decision"},
            "model": {"type": "string", "description": "The model that would run first"},
            "candidates": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Ordered: the first runs, the rest are fallbacks",
            },
            "strategy": {"enum": list(STRATEGIES)},
            "category": {"enum": list(CATEGORIES)},
            "confidence": {"type": "number"},
            "cues": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": "string"},
            "explicit": {"type": "boolean"},
            "features": {"type": "object"},
            "excluded": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"model": {"type": "string"}, "why": {"type": "string"}},
                },
            },
            "decision_us": {"type": "number"},
        },
    }
}


def routes(chat: ChatService) -> list[Route]:
    async def route(req: Request) -> Response:
        parsed = chat.parse(await req.json())
        decision = chat.route(parsed, req.header("x-iir-strategy"))
        if decision is None:
            raise ApiError(503, "Classifier error: routing is not enabled", code="classifier_error")
        return json_response(decision.to_dict(), headers=decision.headers())

    openapi.register_operation(
        "POST", "/v1/route", {"request": "ChatRequest", "ok": "RouteDecision"}, SCHEMAS
    )
    return [
        Route(
            "POST",
            "/v1/route",
            route,
            summary="Where a chat request would run, and why (model auto), without running it",
        )
    ]
