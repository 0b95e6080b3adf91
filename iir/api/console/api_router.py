"""The operator console: a read-only page at ``/console`` and the JSON it shows.

The page and its script and style are package data served by IIR itself (a LAN appliance cannot
count on a CDN), under a Content-Security-Policy that allows nothing but this origin. The page
holds no data: it asks for an API key, keeps it in the tab's sessionStorage and polls
``GET /v1/console/summary`` with it, so the console needs no auth of its own.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

from iir.api.console.protocol import ConsoleSummary
from iir.api.console.serving import summarize
from iir.api.http import Request, Response
from iir.api.router import Route
from iir.core.errors import ApiError

if TYPE_CHECKING:
    from iir.api.services import Services

#: The files the page loads, with their content types; nothing else is served from the folder.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    # Small files, and an upgrade must show at once: revalidate on every load.
    ("cache-control", "no-cache"),
]


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


async def page(svc: Services, req: Request) -> Response:
    return Response(200, _read("index.html"), "text/html; charset=utf-8", list(HEADERS))


async def asset(svc: Services, req: Request, name: str) -> Response:
    kind = ASSETS.get(name)
    if kind is None:
        raise ApiError(404, "No such console asset", code="not_found")
    return Response(200, _read(name), kind, list(HEADERS))


async def summary(svc: Services, req: Request) -> Response:
    doc = summarize(await svc.registry.status())
    return Response(200, doc.model_dump_json().encode(), headers=[("cache-control", "no-store")])


ROUTES = [
    Route(
        "GET",
        "/console",
        page,
        "The operator console (a page; its data comes from /v1/console/summary)",
        auth=False,
        content_type="text/html",
        tags=("console",),
    ),
    Route(
        "GET",
        "/console/{name}",
        asset,
        "Script, style and icon of the console page",
        auth=False,
        content_type="application/octet-stream",
        tags=("console",),
    ),
    Route(
        "GET",
        "/v1/console/summary",
        summary,
        "What the console shows: traffic, latency, routing, tokens, models, providers, GPUs",
        response=ConsoleSummary,
        tags=("console",),
    ),
]
