"""The IIR application: the steps every request goes through, whatever its route.

Order of the cross-cutting steps, all in :meth:`App.__rsgi__`: request id → client address →
per-IP limit and in-flight cap (probes: their own budget) → route match → auth → per-key request
limit and in-flight cap → handler → error shaping → metrics and one log line; the in-flight slots
are given back once the last byte is sent or the request failed, whatever happened. What a model
request does after that is :mod:`iir.service.pipeline`'s.

IIR runs one worker on purpose (it owns the GPU engine, the limiter and the job workers), so
nothing here may let one client hold the event loop or every slot: client text in errors is cut
(:func:`iir.core.errors.shown`), bodies have a deadline, each key and address a cap in flight.
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
from iir.core.errors import ApiError, shown
from iir.core.ids import random_hex
from iir.core.settings import Settings, broad_networks, load_settings
from iir.ops import logs, metrics
from iir.ops.hardware import register_gpu_metrics
from iir.ops.logs import request_id_var
from iir.ops.sdnotify import Notifier
from iir.policy import tokens
from iir.policy.auth import PEER, PEER_HEADER
from iir.store.sqlite import StoreError

applog = logging.getLogger("iir")

# Monitoring probes have their own per-IP budget and no in-flight cap: a scraper must never be
# locked out by the API traffic of its own address.
_PROBES = frozenset({"/health", "/metrics"})
# What one box asks of another: its models and load, and to run a chat request it forwards.
_PEER_ROUTES = frozenset({"/v1/registry/status", "/v1/models", "/v1/chat/completions"})
# Longest error message sent (and scrubbed): upstream messages are relayed, and any client text
# that reached one unbounded would cost its length in scrubbing.
_MAX_MESSAGE = 2048
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
        # Read now: the variables are then removed, so the engine's processes do not inherit them.
        self.notifier = Notifier.from_environ()
        for net in broad_networks(settings.trusted_proxies):
            applog.warning(
                "IIR_TRUSTED_PROXIES entry %s is wider than a /%d: every host in it may claim any "
                "client address in X-Forwarded-For",
                net,
                24 if net.version == 4 else 64,
                extra={"event": "trusted_proxies_broad"},
            )

    # --- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        # Load and integrity-check the token rank tables now, not on the first request (~0.4 s).
        await asyncio.to_thread(tokens.warm_up)
        await self.svc.limits.start()
        for backend in self.svc.backends:
            await backend.start()
        await self.svc.job_pool.start()
        await self.svc.responses.start()
        # The pings run on this loop: a loop held by anything stops them, and systemd restarts.
        self.notifier.start_watchdog()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        with suppress(Exception):
            await self.svc.responses.stop()
        with suppress(Exception):
            await self.svc.job_pool.stop()
        if self.log_forwarder is not None:
            self.log_forwarder.close()
        for backend in self.svc.backends:
            with suppress(Exception):
                await backend.close()
        with suppress(Exception):
            await self.svc.limits.close()
        logs.flush()
        self.notifier.close()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(self.startup())
            self.notifier.ready()
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
        req = Request(
            scope, proto, rid, client, self.settings.max_body_bytes, self.settings.body_timeout
        )
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
            for slot in req.held:  # success, error, client gone or stream ended alike
                slot.release()
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
        limits = self.svc.limits
        try:
            hop = self.svc.peer_keys is not None and req.header(PEER_HEADER) is not None
            req.client = limits.client(req.client, req.header_lines("x-forwarded-for"))
            if req.path in _PROBES:
                limits.check_probe(req.client)
            elif not hop:
                await limits.check_ip(req.client)
                req.held.append(limits.enter_ip(req.client))
            route, params = self.router.match(req.method, req.path)
            req.route = route.template
            if hop and route.auth:
                await self._peer_hop(req, route.template)
            elif route.auth:
                req.key_id = self.svc.keys.authenticate(
                    req.header("authorization"),
                    req.header(route.key_header) if route.key_header else None,
                )
                req.reply_headers += await limits.check_key(req.key_id)
                req.held.append(limits.enter_key(req.key_id))
            elif hop and req.path not in _PROBES:
                await self._check_ip(req)
            resp: Response | StreamResponse = await route.handler(self.svc, req, **params)
            resp.headers += req.reply_headers
            return resp
        except ApiError as err:
            # Upstream messages are relayed to the client: they must not carry a secret either.
            err.message = self.svc.scrubber.scrub_text(shown(err.message, _MAX_MESSAGE))[0]
            if err.param is not None:
                err.param = shown(err.param, 256)
            body = route.error_body(err) if route and route.error_body else err.body()
            return Response(err.status, body, JSON, err.headers + req.reply_headers)
        except Exception:
            applog.exception("unhandled error", extra={"route": req.route})
            internal = ApiError(500, f"Internal error (request id {req.request_id})")
            body = route.error_body(internal) if route and route.error_body else internal.body()
            return Response(500, body, JSON)

    async def _check_ip(self, req: Request) -> None:
        await self.svc.limits.check_ip(req.client)

    async def _peer_hop(self, req: Request, route: str) -> None:
        """A request another box of the fleet forwarded: authenticated by the fleet's peer key
        alone, and neither limited nor admitted again (the first box did both). Anything else
        carrying the marker is refused, and still pays the per-IP limit it tried to skip."""
        assert self.svc.peer_keys is not None
        try:
            if route not in _PEER_ROUTES:
                raise ApiError(403, f"{req.path} is not served to peers", code="not_for_peers")
            self.svc.peer_keys.authenticate(req.header("authorization"))
        except ApiError as err:
            await self._check_ip(req)
            if err.code == "not_for_peers":
                raise
            raise ApiError(
                403,
                f"{PEER_HEADER} is accepted only with the fleet's peer key",
                code="invalid_peer_key",
            ) from None
        req.key_id = PEER

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
