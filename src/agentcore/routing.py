"""Path routing: exact paths by dict lookup, ``{param}`` paths by regex.

``{param}`` matches one segment (``[^/]+``); ``{param:path}`` matches the rest
of the path, slashes included (storage keys). A route is documented under its
path with ``{param:path}`` written ``{param}`` (OpenAPI has no catch-all).
When the first route matching a path lacks the method, later routes are tried
(``POST /storage/upload`` and ``GET /storage/{key:path}`` share ``upload``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agentcore.errors import MethodNotAllowed, NotFound
from agentcore.http import Request, Response

Handler = Callable[[Request], Awaitable[Response]]
RouteClass = Literal["control", "integration", "llm"]


def route_class(path: str) -> RouteClass | None:
    """The rate-limit and body-limit class of a path; None for open routes (health, metrics)."""
    if path.startswith("/api/v1/integration/llm") or path.startswith("/v1/"):
        return "llm"
    if path.startswith("/api/v1/integration"):
        return "integration"
    if path.startswith("/api/v1/") and not path.startswith("/api/v1/health"):
        return "control"
    return None


@dataclass(frozen=True)
class Doc:
    """How a REST route appears in /openapi.json; the types are the ones that validate."""

    summary: str
    #: msgspec type of the JSON body, if any.
    body: Any = None
    #: msgspec type of the query string parameters, if any.
    query: Any = None
    #: msgspec type of the success response body, if any.
    response: Any = None
    status: int = 200
    #: Other documented statuses -> description (all with the JSON error body).
    errors: dict[int, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass
class Route:
    path: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    pattern: re.Pattern[str] | None = None
    docs: dict[str, Doc] = field(default_factory=dict)


class Router:
    def __init__(self) -> None:
        self._exact: dict[str, Route] = {}
        self._patterns: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, doc: Doc | None = None) -> None:
        shown = re.sub(r"\{(\w+):path\}", r"{\1}", path)
        route = self._exact.get(shown) or next((r for r in self._patterns if r.path == shown), None)
        if route is None:
            route = Route(shown)
            if "{" in path:
                regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", path)
                regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
                route.pattern = re.compile(f"^{regex}$")
                self._patterns.append(route)
            else:
                self._exact[path] = route
        route.handlers[method] = handler
        if doc is not None:
            route.docs[method] = doc

    def match(self, method: str, path: str) -> tuple[Route, Handler, dict[str, str]]:
        """The route, its handler and path params; NotFound / MethodNotAllowed otherwise."""
        params: dict[str, str] = {}
        route = self._exact.get(path)
        handler = None if route is None else _handler(route, method)
        if handler is None:
            first = route
            for candidate in self._patterns:
                assert candidate.pattern is not None
                m = candidate.pattern.match(path)
                if m:
                    first = first or candidate
                    handler = _handler(candidate, method)
                    if handler is not None:
                        route, params = candidate, m.groupdict()
                        break
            if first is None:
                raise NotFound(f"no route for {path[:200]}")
            route = route if handler is not None else first
        assert route is not None
        if handler is None:
            allowed = ", ".join(
                sorted({*route.handlers, *(["HEAD"] if "GET" in route.handlers else [])})
            )
            raise MethodNotAllowed(
                f"{method[:20]} not allowed on {route.path}; allowed: {allowed}",
                headers=((b"allow", allowed.encode()),),
            )
        return route, handler, params

    def routes(self) -> list[Route]:
        return [*self._exact.values(), *self._patterns]


def _handler(route: Route, method: str) -> Handler | None:
    handler = route.handlers.get(method)
    if handler is None and method == "HEAD":
        handler = route.handlers.get("GET")
    return handler
