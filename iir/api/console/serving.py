"""Builds the console's summary from the Prometheus metrics and the registry status.

Every number is read from the metric objects of :mod:`iir.ops.metrics`, the ones ``/metrics``
renders, so the console and a Prometheus scrape cannot disagree; nothing here counts on its own.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from iir import __version__
from iir.api.console.protocol import (
    ConsoleModel,
    ConsoleProvider,
    ConsoleSummary,
    JobCounts,
    ModelTokens,
    Redactions,
    RouteDecisions,
    RouteStats,
    Totals,
)
from iir.ops import metrics

STARTED_AT = time.time()

# (upper bounds without +Inf, cumulative counts per bound and then +Inf)
Buckets = tuple[list[float], list[int]]


def _samples(metric: Any, suffix: str = "") -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of ``metric`` whose name ends with ``suffix``."""
    for family in metric.collect():
        for s in family.samples:
            if s.name == family.name + suffix:
                yield s.labels, s.value


def _counter(metric: Any) -> Iterable[tuple[dict[str, str], int]]:
    for labels, value in _samples(metric, "_total"):
        yield labels, int(value)


def _histograms(metric: Any, label: str | None) -> dict[str, Buckets]:
    """Buckets per value of ``label`` (one entry under "" for a histogram without labels)."""
    found: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for labels, value in _samples(metric, "_bucket"):
        found[labels.get(label, "") if label else ""].append((float(labels["le"]), int(value)))
    out: dict[str, Buckets] = {}
    for key, pairs in found.items():
        pairs.sort()
        out[key] = ([b for b, _ in pairs if math.isfinite(b)], [c for _, c in pairs])
    return out


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile from cumulative bucket counts, interpolated linearly inside the bucket
    it falls in, as Prometheus' ``histogram_quantile`` does; None without observations. A
    quantile in the +Inf bucket is reported as the highest finite bound."""
    total = counts[-1] if counts else 0
    if total <= 0 or not bounds:
        return None
    rank = q * total
    low, below = 0.0, 0
    for bound, count in zip(bounds, counts, strict=False):
        if count >= rank:
            if count == below:
                return bound
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return bounds[-1]


def _status_class(status: str) -> str:
    return status[:1] + "xx" if len(status) == 3 and status.isdigit() else "other"


def _routes() -> tuple[list[float], list[RouteStats]]:
    by_route: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for labels, value in _counter(metrics.REQUESTS):
        row = by_route[labels["route"]]
        row["requests"] += value
        row[_status_class(labels["status"])] += value
    latency = _histograms(metrics.REQUEST_DURATION, "route")
    bounds = next(iter(latency.values()))[0] if latency else []
    routes = []
    for route in sorted(set(by_route) | set(latency)):
        row = by_route[route]
        counts = latency.get(route, (bounds, [0] * (len(bounds) + 1)))[1]
        routes.append(
            RouteStats(
                route=route,
                requests=row["requests"],
                errors=row["5xx"],
                client_errors=row["4xx"],
                p50_seconds=quantile(0.5, bounds, counts),
                p99_seconds=quantile(0.99, bounds, counts),
                bucket_counts=counts,
            )
        )
    return bounds, routes


def _one(metric: Any, suffix: str = "") -> float:
    return sum(value for _, value in _samples(metric, suffix))


def _by_label(metric: Any, label: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for labels, value in _samples(metric):
        out[labels[label]] += int(value)
    return out


def summarize(status: dict[str, Any]) -> ConsoleSummary:
    """The summary from the metrics now and ``status``, the registry's status document."""
    bounds, routes = _routes()
    overhead = _histograms(metrics.OVERHEAD, None).get("", ([], []))
    totals = Totals(
        requests=sum(r.requests for r in routes),
        errors=sum(r.errors for r in routes),
        client_errors=sum(r.client_errors for r in routes),
        inflight=int(_one(metrics.INFLIGHT)),
        rate_limited=int(_one(metrics.RATE_LIMITED, "_total")),
        stream_disconnects=int(_one(metrics.STREAM_DISCONNECTS, "_total")),
        overhead_p50_seconds=quantile(0.5, *overhead),
        overhead_p99_seconds=quantile(0.99, *overhead),
    )

    provider_names = {p["name"] for p in status["providers"]}
    running = _by_label(metrics.LOCAL_RUNNING, "model")
    waiting = _by_label(metrics.LOCAL_WAITING, "model")
    models = [
        ConsoleModel(
            id=m["id"],
            source=m["source"],
            state=m["state"],
            reason=m["reason"],
            running=running.get(m["id"], 0),
            waiting=waiting.get(m["id"], 0),
        )
        for m in status["models"]
        if m["source"] not in provider_names and not m["shadowed"]
    ]

    listed: dict[str, int] = defaultdict(int)
    for m in status["models"]:
        listed[m["source"]] += 1
    attempts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for labels, value in _counter(metrics.UPSTREAM_REQUESTS):
        row = attempts[labels["provider"]]
        row["requests"] += value
        if not labels["status"].startswith("2"):
            row["failures"] += value
    upstream = _histograms(metrics.UPSTREAM_LATENCY, "provider")
    providers = []
    for p in status["providers"]:
        b = upstream.get(p["name"], ([], []))
        providers.append(
            ConsoleProvider(
                name=p["name"],
                configured=p["configured"],
                circuit=p["circuit"],
                reason=p["reason"],
                models=listed[p["name"]],
                requests=attempts[p["name"]]["requests"],
                failures=attempts[p["name"]]["failures"],
                p50_seconds=quantile(0.5, *b),
                p99_seconds=quantile(0.99, *b),
            )
        )

    routing = sorted(
        (
            RouteDecisions(
                strategy=labels["strategy"],
                category=labels["category"],
                target=labels["target"],
                count=value,
            )
            for labels, value in _counter(metrics.ROUTE_DECISIONS)
        ),
        key=lambda d: (-d.count, d.category, d.target, d.strategy),
    )
    tokens: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for labels, value in _counter(metrics.TOKENS):
        tokens[labels["model"]][labels["kind"]] += value
    redactions = sorted(
        (
            Redactions(direction=labels["direction"], rule=labels["rule"], count=value)
            for labels, value in _counter(metrics.SECRETS_REDACTED)
        ),
        key=lambda r: (-r.count, r.rule, r.direction),
    )
    hardware = status["hardware"]
    return ConsoleSummary(
        version=__version__,
        started_at=STARTED_AT,
        generated_at=time.time(),
        degraded=status["degraded"],
        totals=totals,
        latency_bounds_seconds=bounds,
        routes=routes,
        gpus=hardware["gpus"],
        gpu_reason=hardware["gpu_reason"],
        models=models,
        providers=providers,
        routing=routing,
        tokens=[
            ModelTokens(model=m, prompt=k["prompt"], completion=k["completion"])
            for m, k in sorted(tokens.items())
        ],
        redactions=redactions,
        jobs=JobCounts(
            by_status={k: v for k, v in sorted(_by_label(metrics.JOBS, "status").items())},
            queue_depth=int(_one(metrics.JOB_QUEUE_DEPTH)),
        ),
    )
