"""URL routing: the table of what IIR serves, matched by path template."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # e.g. "/v1/async/chat/completions/{job_id}"; also the metrics label
    handler: Handler
    auth: bool = True
    summary: str = ""


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
            raise ApiError(404, f"No route for {path}", code="route_not_found")
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            allow = ", ".join(sorted(methods))
            raise ApiError(
                405,
                f"Method {method} is not allowed on {path}; allowed: {allow}",
                headers=[("allow", allow)],
            )
        return route, params
