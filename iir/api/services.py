"""The parts of one IIR process, built once from the settings: what every handler is given.

This is the composition root: the only place that knows which backends, limits and stores exist,
and the route table (every API surface's ``ROUTES``).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from iir.api import registry, routing, system
from iir.api.chat import api_router as chat
from iir.api.completions import api_router as completions
from iir.api.console import api_router as console
from iir.api.embeddings import api_router as embeddings
from iir.api.infer import api_router as infer
from iir.api.jobs import api_router as jobs
from iir.api.jobs.serving import Jobs
from iir.api.messages import api_router as messages
from iir.api.responses import api_router as responses
from iir.api.router import Route
from iir.backends.base import Backend
from iir.backends.echo import EchoBackend
from iir.backends.echo_embed import EchoEmbedBackend
from iir.backends.local.vllm import VllmBackend
from iir.backends.peers import PeerBackend
from iir.backends.providers.catalog import remote_backends
from iir.backends.registry import ModelRegistry
from iir.core.settings import Settings
from iir.ops.metrics import CachedRender
from iir.policy.auth import KeyRing
from iir.policy.limits import Limits, build_limits
from iir.policy.routing.router import Router
from iir.policy.routing.rules import load_policy
from iir.policy.scrub import Scrubber
from iir.service.jobs import JobPool
from iir.service.pipeline import Pipeline
from iir.store.factory import job_store, response_table
from iir.store.responses import ResponseStore

#: Every route IIR serves, surface by surface.
ROUTES: list[Route] = [
    *system.ROUTES,
    *chat.ROUTES,
    *responses.ROUTES,
    *messages.ROUTES,
    *embeddings.ROUTES,
    *completions.ROUTES,
    *jobs.ROUTES,
    *infer.ROUTES,
    *routing.ROUTES,
    *registry.ROUTES,
    *console.ROUTES,
]


@dataclass(eq=False)
class Services:
    settings: Settings
    keys: KeyRing
    #: The fleet's peer key (``IIR_PEER_KEY``), accepted only on peer hops; None without one.
    peer_keys: KeyRing | None
    limits: Limits
    scrubber: Scrubber
    backends: list[Backend]
    registry: ModelRegistry
    pipeline: Pipeline
    jobs: Jobs
    job_pool: JobPool
    #: Stored responses of the Responses API (in the job database).
    responses: ResponseStore
    routes: list[Route] = field(default_factory=lambda: list(ROUTES))
    #: ``/openapi.json``, rendered on first request.
    openapi: bytes | None = None
    #: ``/metrics``' body, rendered off the event loop and reused for a second.
    metrics: CachedRender = field(default_factory=CachedRender)
    #: The key ``/metrics`` requires (``IIR_METRICS_KEY``); None when it is open.
    metrics_key: KeyRing | None = None


def url_passwords(settings: Settings) -> list[str]:
    """Passwords inside the fleet's server URLs: secrets like any key."""
    found = []
    for url in (settings.state_url, settings.job_store_url):
        if url:
            with suppress(ValueError):
                password = urlsplit(url).password
                if password:
                    found.append(unquote(password))
    return found


def build(settings: Settings) -> Services:
    limits = build_limits(settings)
    # Secrets: the process's secret environment values (provider keys too) and IIR's own keys.
    scrubber = Scrubber.from_environ(
        settings.env,
        extra_secrets=(*settings.api_keys, *url_passwords(settings)),
        rules_file=settings.scrub_rules_file,
    )
    backends: list[Backend] = [
        EchoBackend(settings.echo_token_delay_ms, settings.max_answer_bytes),
        EchoEmbedBackend(),
        VllmBackend(settings),
        *remote_backends(settings),
    ]
    if settings.peers:
        # After this box's own engine (its names come first), before the remote providers.
        backends.insert(2, PeerBackend(settings, lambda: models.own_names()))
    models = ModelRegistry(backends)
    router = Router(
        load_policy(settings.routing_file),
        models,
        settings.routing_strategy,
        settings.local_max_queue,
        settings.routing_last_resort,
    )
    pipeline = Pipeline(
        models,
        scrubber,
        limits=limits,
        router=router,
        fallbacks=settings.upstream.fallbacks,
        max_prompt_tokens=settings.max_prompt_tokens,
        default_model=settings.default_model,
        max_answer_bytes=settings.max_answer_bytes,
    )
    job_runner = Jobs(pipeline)
    pool = JobPool(
        job_store(settings),
        job_runner.run,
        settings.job_concurrency,
        settings.job_queue_max,
        scrub=scrubber.scrub,
        on_end=job_runner.ended,
        max_attempts=settings.job_max_attempts,
        max_pending_per_key=settings.job_max_pending_per_key,
        max_bytes_per_key=settings.job_max_bytes_per_key,
        max_result_bytes=settings.job_max_result_bytes,
        write_retries=settings.job_write_retries,
        lease=settings.job_lease_seconds,
    )
    job_runner.bind(pool)
    stored = ResponseStore(
        response_table(pool.store), settings.response_ttl_seconds, scrub=scrubber.scrub
    )
    return Services(
        settings=settings,
        keys=KeyRing(settings.api_keys),
        peer_keys=KeyRing([settings.peer_key]) if settings.peer_key else None,
        metrics_key=KeyRing([settings.metrics_key]) if settings.metrics_key else None,
        metrics=CachedRender(settings.metrics_cache_seconds),
        limits=limits,
        scrubber=scrubber,
        backends=backends,
        registry=models,
        pipeline=pipeline,
        jobs=job_runner,
        job_pool=pool,
        responses=stored,
    )
