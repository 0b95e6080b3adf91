"""The answer of ``GET /v1/console/summary``: one document with what the operator console shows.

Counters are totals since the process started, as ``/metrics`` has them: a client computes rates
from two summaries (the console keeps a short history). Latency quantiles are estimated from the
histogram buckets over the same span; each route also carries its cumulative bucket counts, so
that a client can estimate quantiles over its own window from the difference of two summaries.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from iir.api.registry import Gpu


class Totals(BaseModel):
    requests: int = Field(description="Requests answered (iir_requests_total)")
    errors: int = Field(description="Of those, answered with a 5xx status")
    client_errors: int = Field(description="Of those, answered with a 4xx status")
    inflight: int = Field(description="Requests being served now (iir_inflight_requests)")
    rate_limited: int = Field(
        description="Requests refused by a rate limit (iir_ratelimited_total)"
    )
    stream_disconnects: int = Field(description="Streams whose client left before the end")
    overhead_p50_seconds: float | None = Field(
        description="Median time a chat request spends in IIR itself (iir_overhead_seconds)"
    )
    overhead_p99_seconds: float | None


class RouteStats(BaseModel):
    route: str = Field(description="The route's path template, as in /metrics")
    requests: int
    errors: int = Field(description="Answered with a 5xx status")
    client_errors: int = Field(description="Answered with a 4xx status")
    p50_seconds: float | None = Field(description="Median latency, estimated from the buckets")
    p99_seconds: float | None
    bucket_counts: list[int] = Field(
        description="Cumulative request counts per bound of latency_bounds_seconds, then +Inf"
    )


class ConsoleModel(BaseModel):
    id: str
    source: str = Field(description="local or echo (remote providers' models are counted there)")
    state: Literal["ready", "loading", "failed", "unavailable"]
    reason: str | None
    running: int = Field(description="Local-engine requests producing tokens now")
    waiting: int = Field(description="Local-engine requests waiting for their first token")


class ConsoleProvider(BaseModel):
    name: str
    configured: bool
    circuit: Literal["closed", "open", "half_open"]
    reason: str | None
    models: int = Field(description="Models the provider lists now")
    requests: int = Field(description="Attempts sent to the provider (iir_upstream_requests_total)")
    failures: int = Field(description="Attempts that did not end with a 2xx answer")
    p50_seconds: float | None = Field(description="Median attempt latency, from the buckets")
    p99_seconds: float | None


class RouteDecisions(BaseModel):
    strategy: str
    category: str
    target: str = Field(description="The model chosen first, or none for a 503")
    count: int


class ModelTokens(BaseModel):
    model: str
    prompt: int
    completion: int


class Redactions(BaseModel):
    direction: str = Field(description="request, response, log or error")
    rule: str
    count: int


class JobCounts(BaseModel):
    by_status: dict[str, int] = Field(description="Jobs in the store, by status (iir_jobs)")
    queue_depth: int = Field(description="Jobs waiting for a worker (iir_job_queue_depth)")


class ConsoleSummary(BaseModel):
    object: Literal["console.summary"] = "console.summary"
    version: str
    started_at: float = Field(description="When this server process started (Unix time)")
    generated_at: float = Field(description="When this summary was made (Unix time)")
    degraded: list[str] = Field(description="Why /health answers 503 now (empty when healthy)")
    totals: Totals
    latency_bounds_seconds: list[float] = Field(
        description="Upper bounds of the request latency buckets (the last, +Inf, is left out)"
    )
    routes: list[RouteStats]
    gpus: list[Gpu]
    gpu_reason: str | None = Field(description="Why there are no GPU facts (no NVML, no driver)")
    models: list[ConsoleModel]
    providers: list[ConsoleProvider]
    routing: list[RouteDecisions]
    tokens: list[ModelTokens]
    redactions: list[Redactions]
    jobs: JobCounts
