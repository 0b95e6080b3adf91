"""The IIR application: the route table and the steps every request goes through.

Order of the cross-cutting steps, all in :meth:`App.__rsgi__`:
request id → route match → auth → handler → error shaping → metrics and one log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextlib import suppress
from typing import Any

import orjson
from granian.rsgi import ProtocolClosed

from . import __version__, logs, metrics, openapi, registry_routes, tokens
from .auth import KeyRing
from .backends.echo import EchoBackend
from .backends.remote import remote_backends
from .backends.vllm import VllmBackend
from .chat import ChatService
from .config import Settings, load_settings
from .errors import ApiError
from .hardware import register_gpu_metrics
from .http import JSON, DisconnectWatch, Request, Response, StreamResponse, json_response
from .ids import random_hex
from .infer import INFER_SCHEMAS, InferService
from .jobs import JOB_SCHEMAS, JobPool, JobStore, StoreError, db_path
from .limits import Limits
from .logs import request_id_var
from .registry import ModelRegistry
from .routes import Route, Router
from .routing import api as routing_api
from .routing.policy import load_policy
from .routing.router import Router as ModelRouter
from .scrub import Scrubber

applog = logging.getLogger("iir")

# Monitoring probes are not rate-limited per IP: a scraper must never be locked out.
_PROBES = frozenset({"/health", "/metrics"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class App:
    """The RSGI application served by Granian (one per worker process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        self.limits = Limits(settings)
        # Secrets: the process's secret environment values (provider keys too) and IIR's own keys.
        self.scrubber = Scrubber.from_environ(settings.env, extra_secrets=settings.api_keys)
        logs.set_scrubber(self.scrubber)
        self.echo = EchoBackend(settings.echo_token_delay_ms)
        self.local = VllmBackend(settings)
        self.registry = ModelRegistry([self.echo, self.local, *remote_backends(settings)])
        self.routing = ModelRouter(
            settings.routing_policy or load_policy(settings.routing_file),
            self.registry,
            settings.routing_strategy,
            settings.local_max_queue,
        )
        self.chat = ChatService(
            self.registry,
            settings.upstream.fallbacks,
            scrubber=self.scrubber,
            limits=self.limits,
            max_prompt_tokens=settings.max_prompt_tokens,
            router=self.routing,
            default_model=settings.default_model,
        )
        self.jobs = JobPool(
            JobStore(
                db_path(settings.data_dir),
                settings.job_ttl_seconds,
                timeout=settings.job_db_timeout,
            ),
            self.chat,
            settings.job_concurrency,
            settings.job_queue_max,
            scrub=self.scrubber.scrub,
        )
        self.infer = InferService(self.chat, self.jobs)
        self.router = Router(self._routes())
        self._openapi: bytes | None = None
        self.log_forwarder: Any = None
        self._docs_dir = openapi.swagger_dir()
        # Read at scrape time: a plain counter costs less per request than a locked gauge.
        self.inflight = 0
        metrics.INFLIGHT.set_function(lambda: self.inflight)
        metrics.BUILD_INFO.labels(__version__).set(1)
        register_gpu_metrics(metrics.REGISTRY)
        registry_routes.document()

    def _routes(self) -> list[Route]:
        return [
            Route("GET", "/health", self.health, auth=False, summary="Health check"),
            Route("GET", "/version", self.version, auth=False, summary="Version of IIR"),
            Route("GET", "/metrics", self.metrics, auth=False, summary="Prometheus metrics"),
            Route("GET", "/openapi.json", self.openapi_json, auth=False, summary="This document"),
            Route("GET", "/docs", self.docs, auth=False, summary="Interactive API docs"),
            Route(
                "GET",
                "/docs/assets/{name}",
                self.docs_asset,
                auth=False,
                summary="Assets of the docs page",
            ),
            Route("GET", "/v1/models", self.models, summary="List available models"),
            Route(
                "POST",
                "/v1/chat/completions",
                self.chat.handle,
                summary="Chat completion (OpenAI-compatible), streamed or not",
            ),
            *registry_routes.routes(self.registry),
            *routing_api.routes(self.chat),
            *self._job_routes(),
        ]

    def _job_routes(self) -> list[Route]:
        job = "/v1/async/chat/completions/{job_id}"
        openapi.register_operation(
            "POST",
            "/v1/async/chat/completions",
            {"request": "ChatRequest", "ok": "JobStatus", "ok_status": 202},
            {**JOB_SCHEMAS, **INFER_SCHEMAS},
        )
        openapi.register_operation("GET", job, {"ok": "JobResult"})
        openapi.register_operation("DELETE", job, {"ok": "JobStatus"})
        openapi.register_operation(
            "POST", "/infer", {"request": "InferRequest", "ok": "InferResponse"}
        )
        return [
            Route(
                "POST",
                "/v1/async/chat/completions",
                self.jobs.handle_submit,
                summary="Submit a chat completion job (202 once it is stored)",
            ),
            Route("GET", job, self.jobs.handle_get, summary="Status or result of a job"),
            Route(
                "DELETE", job, self.jobs.handle_cancel, summary="Cancel a pending or running job"
            ),
            Route(
                "POST",
                "/infer",
                self.infer.handle,
                summary="Direct inference on a named model (optionally as a job)",
            ),
        ]

    # --- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        # Load and integrity-check the token rank tables now, not on the first request (~0.4 s).
        await asyncio.to_thread(tokens.warm_up)
        for backend in self.registry.backends:
            await backend.start()
        await self.jobs.start()

    async def shutdown(self) -> None:
        with suppress(Exception):
            await self.jobs.stop()
        if self.log_forwarder is not None:
            self.log_forwarder.close()
        for backend in self.registry.backends:
            with suppress(Exception):
                await backend.close()
        logs.flush()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(self.startup())
        except StoreError as exc:
            # One clear line instead of a traceback; the parent process then exits 2.
            applog.critical("cannot start: %s", exc, extra={"event": "job_store_refused"})
            logging.shutdown()
            os._exit(2)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        with suppress(Exception):
            loop.run_until_complete(self.shutdown())

    # --- the request path ---------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            proto.close(1003)
            return
        started = time.perf_counter()
        incoming = scope.headers.get("x-request-id")
        rid = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else random_hex(16)
        token = request_id_var.set(rid)
        client = scope.client.rsplit(":", 1)[0].strip("[]") if scope.client else ""
        req = Request(scope, proto, rid, client, self.settings.max_body_bytes)
        self.inflight += 1
        status = 500
        try:
            resp = await self._dispatch(req)
            base = [("x-request-id", rid)]
            if isinstance(resp, StreamResponse):
                status = resp.status
                await self._stream(proto, req, resp, base)
            else:
                status = resp.status
                proto.response_bytes(
                    resp.status,
                    [("content-type", resp.content_type), *base, *resp.headers],
                    resp.body,
                )
        finally:
            elapsed = time.perf_counter() - started
            self.inflight -= 1
            metrics.observe_request(req.route, req.method, status, elapsed)
            logs.access(
                {
                    "method": req.method,
                    "route": req.route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "model": req.state.get("model"),
                    "client": req.client,
                }
            )
            request_id_var.reset(token)

    async def _dispatch(self, req: Request) -> Response | StreamResponse:
        try:
            if req.path not in _PROBES:
                self.limits.check_ip(self.limits.client(req.client, req.header("x-forwarded-for")))
            route, params = self.router.match(req.method, req.path)
            req.route = route.template
            if route.auth:
                req.key_id = self.keys.authenticate(req.header("authorization"))
            if route.auth:
                req.reply_headers += self.limits.check_key(req.key_id)
            resp = await route.handler(req, **params)
            resp.headers += req.reply_headers
            return resp
        except ApiError as err:
            # Upstream messages are relayed to the client: they must not carry a secret either.
            err.message = self.scrubber.scrub_text(err.message)[0]
            return Response(err.status, err.body(), JSON, err.headers + req.reply_headers)
        except Exception:
            applog.exception("unhandled error", extra={"route": req.route})
            err = ApiError(500, f"Internal error (request id {req.request_id})")
            return Response(500, err.body(), JSON)

    async def _stream(
        self, proto: Any, req: Request, resp: StreamResponse, base: list[tuple[str, str]]
    ) -> None:
        """Sends an SSE body, cancelling the producer as soon as the client goes away."""
        transport = proto.response_stream(
            resp.status, [("content-type", resp.content_type), *base, *resp.headers]
        )

        left = False
        try:
            with DisconnectWatch(proto) as watch:
                try:
                    async for chunk in resp.chunks:
                        await transport.send_bytes(chunk)
                except ProtocolClosed:
                    left = True
                except Exception:
                    applog.exception("stream failed while sending", extra={"route": req.route})
        finally:
            aclose = getattr(resp.chunks, "aclose", None)
            if aclose is not None:
                with suppress(Exception):
                    await aclose()  # a producer stopped early releases what it holds now
        if left or watch.gone:
            metrics.STREAM_DISCONNECTS.inc()
            applog.info(
                "client disconnected; generation cancelled",
                extra={"event": "disconnect", "route": req.route},
            )

    # --- handlers of the core routes ------------------------------------------------------------

    async def health(self, req: Request) -> Response:
        # 503 while a local engine is dead or failed, so that a load balancer or systemd watchdog
        # notices; everything else (echo, remote providers) is still served meanwhile.
        problems = self.registry.degraded()
        if problems:
            return json_response({"status": "degraded", "reasons": problems}, status=503)
        return json_response({"status": "ok"})

    async def version(self, req: Request) -> Response:
        return json_response({"version": __version__})

    async def metrics(self, req: Request) -> Response:
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    async def openapi_json(self, req: Request) -> Response:
        if self._openapi is None:
            self._openapi = orjson.dumps(openapi.build(self.router.routes))
        return Response(200, self._openapi)

    async def docs(self, req: Request) -> Response:
        return Response(200, openapi.DOCS_HTML.encode(), "text/html; charset=utf-8")

    async def docs_asset(self, req: Request, name: str) -> Response:
        kind = openapi.DOCS_ASSETS.get(name)
        if kind is None or self._docs_dir is None:
            raise ApiError(404, f"No docs asset named {name!r}")
        body = await asyncio.to_thread((self._docs_dir / name).read_bytes)
        return Response(200, body, kind, [("cache-control", "public, max-age=86400")])

    async def models(self, req: Request) -> Response:
        data = [
            {"id": c.id, "object": "model", "created": c.created, "owned_by": c.owned_by}
            for c in self.registry.cards()
        ]
        return json_response({"object": "list", "data": data})


def create_app() -> App:
    """Granian's factory target: settings come from the environment and ``IIR_ENV_FILE``."""
    settings = load_settings(os.environ, os.environ.get("IIR_ENV_FILE") or None)
    logs.configure(settings.log_level)
    app = App(settings)
    app.log_forwarder = logs.forward(dict(settings.env))
    return app
