"""The gateway's own HTTP endpoints: health, readiness and liveness, /metrics,
the documents (OpenAPI, the JSON-RPC method listing, the agent card), and the
JSON-RPC entry point itself.

The features' own routes (events, webhooks, storage, LLM) are added by their
modules; these are the ones that belong to no feature. Health is polled hard
(load balancers, the seed's load tests), so the store check behind it is reused
for :data:`HEALTH_CACHE_S` and the documents are encoded once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from agentcore import __version__
from agentcore.config import Config
from agentcore.errors import AgentCoreError, NotFound, StoreUnavailable
from agentcore.http import Request, Response, json_response
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.jsonrpc import Context, Dispatcher, Method
from agentcore.limits import REJECTED, Deadlines, check_json_depth
from agentcore.metrics import CONTENT_TYPE, Metrics
from agentcore.openapi import agent_card, method_listing, openapi_document
from agentcore.ratelimit.base import RateLimiter
from agentcore.repositories import Repositories
from agentcore.routing import Router

log = logging.getLogger("agentcore")

API = "/api/v1"
#: Seconds a database health check result is reused.
HEALTH_CACHE_S = 1.0


class Endpoints:
    """The built-in endpoints, given what they report on; :meth:`add_routes` mounts them."""

    def __init__(
        self,
        config: Config,
        repos: Repositories,
        dispatcher: Dispatcher,
        methods: list[Method[Any]],
        deadlines: Deadlines,
        limiter: RateLimiter,
        metrics: Metrics | None = None,
        *,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.repos = repos
        self.dispatcher = dispatcher
        self.methods = methods
        self.deadlines = deadlines
        self.limiter = limiter
        self.metrics = metrics
        #: Requests in flight, read when /metrics is scraped; None: the gauge is
        #: moved by every request instead (multiprocess mode, where it is summed).
        self.in_flight = in_flight
        self.started_at = time.monotonic()
        limits = config.limits
        # Read on every JSON-RPC request: looked up once here.
        self._read_timeout_s = limits.read_timeout_s
        self._handler_timeout_s = limits.handler_timeout_s
        self._control_body_limit = limits.max_body_bytes_by_class.get(
            "control", limits.max_body_bytes
        )
        self._max_json_depth = limits.max_json_depth
        self._router: Router | None = None
        self._static: dict[str, bytes] = {}
        #: When the store was last checked, and its status then.
        self._health: tuple[float, dict[str, Any]] | None = None
        #: The encoded health document and the store status it was built from.
        self._health_body: tuple[dict[str, Any], bytes] | None = None

    def add_routes(self, router: Router) -> None:
        """Mount the endpoints; /openapi.json documents every route of ``router``."""
        self._router = router
        router.add("GET", f"{API}/health", self.health)
        router.add("GET", f"{API}/health/ready", self.ready)
        router.add("GET", f"{API}/health/live", self.live)
        router.add("POST", f"{API}/jsonrpc", self.jsonrpc)
        router.add("GET", f"{API}/jsonrpc/methods", self.jsonrpc_methods)
        router.add("GET", "/metrics", self.metrics_endpoint)
        router.add("GET", "/openapi.json", self.openapi)
        router.add("GET", "/.well-known/agent-card.json", self.agent_card)
        router.add("GET", "/.well-known/agent.json", self.agent_card)

    def started(self) -> None:
        """The gateway has started: uptime counts from now, and what the health
        document warns about (per-worker limits and events) is logged once."""
        self.started_at = time.monotonic()
        rate_limit = self.rate_limit_status()
        if "warning" in rate_limit:
            log.warning("rate limiting: %s", rate_limit["warning"])
        events_status = self.events_status()
        if "warning" in events_status:
            log.warning("events: %s", events_status["warning"])

    # -- health ---------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """The health document, rebuilt at most once per HEALTH_CACHE_S (it is polled hard).

        Load balancers and the seed's load tests poll it at thousands per
        second; the database check is cached for the same time anyway, so the
        answer, uptime included, is as old as the store status it shows.
        """
        database = self._fresh_store_status() or await self._check_store()
        cached = self._health_body
        if cached is not None and cached[0] is database:
            return Response(200, cached[1])
        rate_limit = await self._checked_rate_limit_status()
        up = database["status"] == "up" and rate_limit.get("status", "up") == "up"
        status = "healthy" if up else "degraded"
        body = json_response(
            {
                "status": status,
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "workers": self.config.server.workers,
                "dependencies": {"database": database},
                "rate_limit": rate_limit,
                "events": self.events_status(),
            }
        ).body
        self._health_body = (database, body)
        return Response(200, body)

    async def _checked_rate_limit_status(self) -> dict[str, Any]:
        """:meth:`rate_limit_status` after asking a shared backend whether it answers
        (as often as the health document is rebuilt: at most once per HEALTH_CACHE_S),
        so an outage shows even while no limited request comes in."""
        if self.config.rate_limit.enabled and self.limiter.shared:
            with contextlib.suppress(StoreUnavailable):  # recorded in backend_error
                await self.limiter.ping()
        return self.rate_limit_status()

    def rate_limit_status(self) -> dict[str, Any]:
        """Whether and how requests are limited; for a shared backend (Redis) also
        whether it answered last (``status``, ``error``) and what requests get while
        it does not (``on_backend_error``)."""
        rl = self.config.rate_limit
        status: dict[str, Any] = {"enabled": rl.enabled, "backend": rl.backend}
        if rl.enabled and self.limiter.shared:
            status["on_backend_error"] = rl.on_backend_error
            error = self.limiter.backend_error
            status["status"] = "up" if error is None else "down"
            if error is not None:
                status["error"] = error
        if rl.enabled and not self.limiter.shared and self.config.server.workers > 1:
            status["warning"] = (
                "limits are per worker: each of the "
                f"{self.config.server.workers} workers counts on its own; "
                'use backend = "redis" for exact shared limits'
            )
        return status

    def events_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"fanout": self.config.events.fanout}
        if self.config.events.fanout == "local" and self.config.server.workers > 1:
            status["warning"] = (
                f"event fan-out is local with {self.config.server.workers} workers: streams on "
                "one worker will not see events published through another; "
                'set events.fanout = "redis"'
            )
        return status

    async def ready(self, request: Request) -> Response:
        database = await self._check_store()
        ok = database["status"] == "up"
        return json_response(
            {"status": "ready" if ok else "not_ready", "dependencies": {"database": database}},
            200 if ok else 503,
        )

    async def live(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    def _fresh_store_status(self) -> dict[str, Any] | None:
        """The store's last checked status while it is under HEALTH_CACHE_S old, else None."""
        checked = self._health
        if checked is not None and time.monotonic() - checked[0] < HEALTH_CACHE_S:
            return checked[1]
        return None

    async def _check_store(self) -> dict[str, Any]:
        """The store's status, checked at most once per HEALTH_CACHE_S (health is polled hard)."""
        fresh = self._fresh_store_status()
        if fresh is not None:
            return fresh
        now = time.monotonic()
        backend = self.config.database_url.split(":", 1)[0]
        try:
            await self.repos.check()
        except StoreUnavailable as exc:
            status: dict[str, Any] = {"status": "down", "backend": backend, "error": exc.message}
        else:
            status = {
                "status": "up",
                "backend": backend,
                "latency_ms": round((time.monotonic() - now) * 1000, 3),
            }
        self._health = (now, status)
        return status

    # -- JSON-RPC -------------------------------------------------------------

    async def jsonrpc(self, request: Request) -> Response:
        deadlines = self.deadlines
        try:
            task = deadlines.arm(self._read_timeout_s, "read", request.task)
            body = await request.body(self._control_body_limit)
            deadlines.arm(self._handler_timeout_s, "handler", task)
            check_json_depth(body, self._max_json_depth)
        except AgentCoreError as exc:
            if self.metrics is not None:
                # Too large, too slow, else (InvalidRequest) too deep.
                self.metrics.rejected.labels(REJECTED.get(type(exc), "json_too_deep")).inc()
            return Response(exc.status, self.dispatcher.error_body(exc))
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        context = Context(
            client=request.client_host,
            tenant=identity.tenant,
            agent_id=identity.agent_id,
            scopes=identity.scopes,
        )
        status, payload = await self.dispatcher.handle(body, context)
        return Response(status, payload or b"")

    # -- documents and metrics ------------------------------------------------

    async def jsonrpc_methods(self, request: Request) -> Response:
        return self._cached("methods", lambda: method_listing(self.methods))

    async def openapi(self, request: Request) -> Response:
        router = self._router
        assert router is not None  # routed to only once mounted
        return self._cached("openapi", lambda: openapi_document(self.methods, router.routes()))

    async def agent_card(self, request: Request) -> Response:
        host = (request.header(b"host") or b"127.0.0.1").decode("latin-1")
        scheme = request.scope.get("scheme", "http")
        return json_response(agent_card(self.methods, f"{scheme}://{host}"))

    async def metrics_endpoint(self, request: Request) -> Response:
        if self.metrics is None:
            raise NotFound("metrics are disabled")
        # Every tenant's series: an operator's scope. Open (the anonymous identity,
        # every scope) with authentication off or auth.protect_metrics = false.
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("metrics:read")
        if self.in_flight is not None:
            self.metrics.in_flight.set(self.in_flight())
        body = self.metrics.render(await self.repos.agents.count(), await self.repos.tasks.count())
        return Response(200, body, content_type=CONTENT_TYPE)

    def _cached(self, key: str, build: Callable[[], Any]) -> Response:
        body = self._static.get(key)
        if body is None:
            body = json_response(build()).body
            self._static[key] = body
        return Response(200, body)
