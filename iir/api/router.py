"""URL routing: the table of what IIR serves, matched by path template.

Every route is declared the same way: method, path template, handler, and the models of its
request body and of its answer. The same models validate requests and build ``/openapi.json``, so
the document cannot drift from what the server does.

A handler is a plain ``async def handler(svc, req, **path_params)`` that returns a
:class:`~iir.api.http.Response` or :class:`~iir.api.http.StreamResponse`; ``svc`` is the
:class:`~iir.api.services.Services` the app was built with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from iir.core.errors import ApiError, shown

Handler = Callable[..., Awaitable[Any]]

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # e.g. "/v1/async/chat/completions/{job_id}"; also the metrics label
    handler: Handler
    summary: str
    auth: bool = True
    #: The request body's model (a pydantic model or a type a ``TypeAdapter`` takes).
    request: Any = None
    #: The answer's model for ``status``; None documents a free-form JSON object.
    response: Any = None
    status: int = 200
    #: Other successful answers, as (status, model) pairs (e.g. 202 for a request run as a job).
    more: tuple[tuple[int, Any], ...] = ()
    #: The model of one SSE event when the route can stream (``stream: true``).
    stream: Any = None
    content_type: str = JSON
    tags: tuple[str, ...] = ()
    #: A header that may carry the API key instead of ``Authorization`` (``x-api-key``).
    key_header: str | None = None
    #: The error body in this route's own shape (Anthropic's on ``/v1/messages``), and its model.
    error_body: Callable[[ApiError], bytes] | None = None
    error_model: Any = None


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[tuple[list[str], dict[str, Route]]] = []
        for r in routes:
            if "{" in r.template:
                parts = r.template.strip("/").split("/")
                for existing, methods in self._dynamic:
                    if existing == parts:
                        methods[r.method] = r
                        break
                else:
                    self._dynamic.append((parts, {r.method: r}))
            else:
                self._static.setdefault(r.template, {})[r.method] = r

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        methods = self._static.get(path)
        params: dict[str, str] = {}
        if methods is None:
            segs = path.strip("/").split("/")
            for parts, candidate in self._dynamic:
                if len(parts) == len(segs) and all(
                    p == s or (p.startswith("{") and s) for p, s in zip(parts, segs, strict=True)
                ):
                    methods = candidate
                    params = {
                        p[1:-1]: s for p, s in zip(parts, segs, strict=True) if p.startswith("{")
                    }
                    break
        if methods is None:
            raise ApiError(404, f"No route for {shown(path)}", code="route_not_found")
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            allow = ", ".join(sorted(methods))
            raise ApiError(
                405,
                f"Method {shown(method, 16)} is not allowed on {shown(path)}; allowed: {allow}",
                headers=[("allow", allow)],
            )
        return route, params


__all__ = ["JSON", "Handler", "Route", "Router", "shown"]
