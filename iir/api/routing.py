"""``POST /v1/route``: the routing decision for a chat body, without running it.

Lets an operator check a policy ("where would this go, and why?") and lets clients that route
themselves ask IIR's opinion. The body passes the same steps as a chat request up to routing
(scrubbed, validated), but nothing is reserved and nothing runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from iir.api.http import Request, Response, json_response
from iir.api.router import Route
from iir.core.errors import ApiError
from iir.core.protocol import ChatRequest
from iir.policy.routing.router import check_strategy

if TYPE_CHECKING:
    from iir.api.services import Services


class Excluded(BaseModel):
    model: str
    why: str


class RouteDecision(BaseModel):
    object: str = Field(description="Always route.decision")
    model: str = Field(description="The model that would run first")
    candidates: list[str] = Field(description="Ordered: the first runs, the rest are fallbacks")
    strategy: str
    category: str
    confidence: float
    cues: list[str]
    reason: str
    explicit: bool
    features: dict[str, Any]
    excluded: list[Excluded]
    decision_us: float


async def route(svc: Services, req: Request) -> Response:
    prepared = await svc.pipeline.prepare(await req.json(), req.caller(), admit=False)
    decision = prepared.decision
    router = svc.pipeline.router
    if decision is None and router is not None:
        # A model named explicitly runs as named, then its configured fallbacks: the same answer
        # in the same shape (with the request's category and features), not a refusal.
        caller = req.caller()
        decision = router.decide(
            prepared.request,
            check_strategy(caller.strategy, router.strategy),
            explicit=prepared.request.model,
        )
        decision.candidates = list(prepared.candidates)
        decision.reason = "requested explicitly"
    if decision is None:
        raise ApiError(503, "Classifier error: routing is not enabled", code="classifier_error")
    return json_response(decision.to_dict(), headers=decision.headers())


ROUTES = [
    Route(
        "POST",
        "/v1/route",
        route,
        "Where a chat request would run, and why (routed for model auto), without running it",
        request=ChatRequest,
        response=RouteDecision,
        tags=("routing",),
    )
]
