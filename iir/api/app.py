"""The IIR application: the steps every request goes through, whatever its route.

Order of the cross-cutting steps, all in :meth:`App.__rsgi__`: request id → per-IP limit → route
match → auth → per-key request limit → handler → error shaping → metrics and one log line. What
a model request does after that is :mod:`iir.service.pipeline`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextlib import suppress
from typing import Any

from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]

from iir import __version__
from iir.api import services
from iir.api.http import JSON, DisconnectWatch, Request, Response, StreamResponse
from iir.api.router import Router
from iir.core.errors import ApiError
from iir.core.ids import random_hex
from iir.core.settings import Settings, load_settings
from iir.ops import logs, metrics
from iir.ops.hardware import register_gpu_metrics
from iir.ops.logs import request_id_var
from iir.policy import tokens
from iir.store.sqlite import StoreError

applog = logging.getLogger("iir")

# Monitoring probes are not rate-limited per IP: a scraper must never be locked out.
_PROBES = frozenset({"/health", "/metrics"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class App:
    """The RSGI application served by Granian (one per worker process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.svc = services.build(settings)
        logs.set_scrubber(self.svc.scrubber)
        self.router = Router(self.svc.routes)
        self.log_forwarder: Any = None
        # Read at scrape time: a plain counter costs less per request than a locked gauge.
        self.inflight = 0
        metrics.INFLIGHT.set_function(lambda: self.inflight)
        metrics.BUILD_INFO.labels(__version__).set(1)
        register_gpu_metrics(metrics.REGISTRY)

    # --- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        # The token rank tables (about 70 MB for o200k, 35 MB for cl100k) load on first use,
        # unless every request counts tokens (a prompt cap or a per-key token limit): then
        # they load and are checked now, not on the first request (~0.4 s).
        if self.settings.max_prompt_tokens or self.settings.rate_limit_tpm_per_key:
            await asyncio.to_thread(tokens.warm_up)
        for backend in self.svc.backends:
            await backend.start()
        await self.svc.job_pool.start()
        await self.svc.responses.start()

    async def shutdown(self) -> None:
        with suppress(Exception):
            await self.svc.responses.stop()
        with suppress(Exception):
            await self.svc.job_pool.stop()
        if self.log_forwarder is not None:
            self.log_forwarder.close()
        for backend in self.svc.backends:
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
        route = None
        try:
            if req.path not in _PROBES:
                self.svc.limits.check_ip(
                    self.svc.limits.client(req.client, req.header("x-forwarded-for"))
                )
            route, params = self.router.match(req.method, req.path)
            req.route = route.template
            if route.auth:
                req.key_id = self.svc.keys.authenticate(
                    req.header("authorization"),
                    req.header(route.key_header) if route.key_header else None,
                )
                req.reply_headers += self.svc.limits.check_key(req.key_id)
            resp: Response | StreamResponse = await route.handler(self.svc, req, **params)
            resp.headers += req.reply_headers
            return resp
        except ApiError as err:
            # Upstream messages are relayed to the client: they must not carry a secret either.
            err.message = self.svc.scrubber.scrub_text(err.message)[0]
            body = route.error_body(err) if route and route.error_body else err.body()
            return Response(err.status, body, JSON, err.headers + req.reply_headers)
        except Exception:
            applog.exception("unhandled error", extra={"route": req.route})
            internal = ApiError(500, f"Internal error (request id {req.request_id})")
            body = route.error_body(internal) if route and route.error_body else internal.body()
            return Response(500, body, JSON)

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


def create_app() -> App:
    """Granian's factory target: settings come from the environment and ``IIR_ENV_FILE``."""
    settings = load_settings(os.environ, os.environ.get("IIR_ENV_FILE") or None)
    logs.configure(settings.log_level)
    app = App(settings)
    app.log_forwarder = logs.forward(dict(settings.env))
    return app
