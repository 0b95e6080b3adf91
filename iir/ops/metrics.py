"""Every Prometheus metric IIR exports, in one registry.

Labels never carry key material or raw paths: routes are templates, models are configured names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

REQUESTS = Counter(
    "iir_requests", "HTTP requests answered", ["route", "method", "status"], registry=REGISTRY
)
REQUEST_DURATION = Histogram(
    "iir_request_duration_seconds",
    "Time from request start to the last byte of the response",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFLIGHT = Gauge("iir_inflight_requests", "Requests being served now", registry=REGISTRY)
TOKENS = Counter(
    "iir_tokens",
    "Tokens processed, by model and kind (prompt|completion)",
    ["model", "kind"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "iir_build_info", "Constant 1, labelled with the version", ["version"], registry=REGISTRY
)
STREAM_DISCONNECTS = Counter(
    "iir_stream_disconnects",
    "Streams whose client left before the end (generation cancelled)",
    registry=REGISTRY,
)
SECRETS_REDACTED = Counter(
    "iir_secrets_redacted",
    "Secrets replaced by REDACTED, by direction (request|response|log|error) and rule name",
    ["direction", "rule"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "iir_ratelimited",
    "Requests refused by a limit, by scope "
    "(ip|probe|key_requests|key_tokens|ip_inflight|key_inflight)",
    ["scope"],
    registry=REGISTRY,
)

# A fleet (IIR_STATE_URL): whether the shared state server answers, and the limit checks this box
# decided alone while it did not (IIR_STATE_FAILURE=local).
STATE_UP = Gauge(
    "iir_state_up",
    "1 while the shared rate-limit state server answers; 0 during an outage, or without one",
    registry=REGISTRY,
)
STATE_FALLBACKS = Counter(
    "iir_state_fallbacks",
    "Limit checks decided by this box's own limiter because the state server was unreachable",
    registry=REGISTRY,
)


def count_redactions(direction: str, counts: dict[str, int]) -> None:
    for rule, n in counts.items():
        SECRETS_REDACTED.labels(direction, rule).inc(n)


# Routing for model "auto" (iir.policy.routing). ``target`` is the first candidate, or "none" when no
# model could serve (503); models are configured names, so the label set stays bounded.
ROUTE_DECISIONS = Counter(
    "iir_route_decisions",
    "Routing decisions, by strategy, task category and chosen model",
    ["strategy", "category", "target"],
    registry=REGISTRY,
)
ROUTE_DECISION_SECONDS = Histogram(
    "iir_route_decision_seconds",
    "Time to decide where a request runs (features, classifier, policy)",
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01),
    registry=REGISTRY,
)

JOBS = Gauge("iir_jobs", "Async jobs in the store, by status", ["status"], registry=REGISTRY)
JOB_DURATION = Histogram(
    "iir_job_duration_seconds",
    "Run time of an async job, from its start to its end, by final status",
    ["status"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOB_QUEUE_DEPTH = Gauge("iir_job_queue_depth", "Async jobs waiting for a worker", registry=REGISTRY)
UPSTREAM_REQUESTS = Counter(
    "iir_upstream_requests",
    "Attempts sent to remote providers, by provider and outcome (HTTP status, or "
    "connect_error|timeout|bad_response)",
    ["provider", "status"],
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "iir_upstream_latency_seconds",
    "Time of one upstream attempt, from sending the request to the last byte of the answer",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_TTFT = Histogram(
    "iir_upstream_ttft_seconds",
    "Time from sending a streamed request upstream to its first event",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "iir_circuit_state",
    "Circuit breaker per provider: 0 closed, 1 open (failing fast), 2 half-open (probing)",
    ["provider"],
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "iir_overhead_seconds",
    "Time a chat request spends in IIR itself, up to the response start, excluding the time "
    "spent waiting on a remote provider",
    buckets=(
        0.00005,
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.002,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.5,
        1.0,
    ),
    registry=REGISTRY,
)
# Local engine (vLLM in process). GPU gauges are read at scrape time by iir.ops.hardware.GpuCollector.
LOCAL_RUNNING = Gauge(
    "iir_local_requests_running",
    "Local-engine requests producing tokens now",
    ["model"],
    registry=REGISTRY,
)
LOCAL_WAITING = Gauge(
    "iir_local_requests_waiting",
    "Local-engine requests submitted and waiting for their first token",
    ["model"],
    registry=REGISTRY,
)
LOCAL_TTFT = Histogram(
    "iir_local_ttft_seconds",
    "Time from submitting a request to the local engine to its first output",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
LOCAL_GENERATION_TOKENS = Counter(
    "iir_local_generation_tokens",
    "Tokens generated by the local engine (from the engine's token ids)",
    ["model"],
    registry=REGISTRY,
)
LOG_DATAGRAMS_DROPPED = Counter(
    "iir_log_datagrams_dropped",
    "Log lines not forwarded to REMOTE_LOG_SINK, by reason (queue_full|unresolvable|send_error|...)",
    ["reason"],
    registry=REGISTRY,
)


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


_token_children: dict[str, tuple[Any, Any]] = {}


def count_tokens(model: str, prompt: int, completion: int) -> None:
    children = _token_children.get(model)
    if children is None:
        children = (TOKENS.labels(model, "prompt"), TOKENS.labels(model, "completion"))
        _token_children[model] = children
    children[0].inc(prompt)
    children[1].inc(completion)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Counts one answered request; label children are cached, as ``labels()`` is not free."""
    if method not in _METHODS:
        method = "OTHER"  # a client can send any method name; labels must stay bounded
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = (REQUESTS.labels(route, method, str(status)), REQUEST_DURATION.labels(route))
        _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class CachedRender:
    """The ``/metrics`` body, rendered in a worker thread and reused for ``ttl`` seconds.

    Rendering walks every metric (and reads the GPUs through NVML, under a lock): on the event
    loop it would hold every other request for its duration, and a scrape storm would repeat
    it per request. Concurrent scrapes share one render.
    """

    def __init__(self, ttl: float = 1.0, render: Callable[[], tuple[bytes, str]] = render) -> None:
        self.ttl = ttl
        self._render = render
        self._body: tuple[bytes, str] | None = None
        self._at = 0.0
        self._pending: asyncio.Future[tuple[bytes, str]] | None = None

    async def get(self) -> tuple[bytes, str]:
        if self._body is not None and time.monotonic() - self._at < self.ttl:
            return self._body
        if self._pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self._render))
            pending.add_done_callback(self._done)
            self._pending = pending
        # Shielded: a scraper that leaves does not cancel the render others wait for.
        return await asyncio.shield(self._pending)

    def _done(self, fut: asyncio.Future[tuple[bytes, str]]) -> None:
        self._pending = None
        if not fut.cancelled() and fut.exception() is None:
            self._body = fut.result()
            self._at = time.monotonic()
