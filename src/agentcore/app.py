"""The application: ``create_app(config)`` builds the whole gateway, the lifespan runs it.

Request flow, top-down: ``Gateway.__call__`` (ASGI) -> the protection chain
(protection.py), one object for HTTP and WebSocket (security headers, CORS,
forged writes and the Host check -> authentication -> rate limiting -> load
shedding, each check awaited only when it has to wait) -> router -> handler
(health, metrics, JSON-RPC dispatch -> method -> registry / task service ->
repositories). Errors are rendered once, here:
an :class:`AgentCoreError` becomes its status and JSON body; anything else is
logged and becomes a 500 (a bug).

The lifespan opens the database and starts every feature's background jobs
(lifecycle.py: heartbeat flush, agent and task sweeps, event trimming and
fan-out, the stream router and keepalive, LLM usage, storage sweeps, webhook
delivery) as tasks it owns; shutdown stops them, flushes the last heartbeats
and closes the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from agentcore import __version__, extras, storage
from agentcore.auth import AuthMiddleware, build_authenticator
from agentcore.clock import Clock, system_clock
from agentcore.config import Config
from agentcore.datadir import DIR_MODE, tighten
from agentcore.errors import (
    AgentCoreError,
    HandlerTimeout,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    StoreUnavailable,
)
from agentcore.events.api import add_routes as add_event_routes
from agentcore.events.base import Fanout
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus
from agentcore.http import Request, Response, error_response, json_response
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.jsonrpc import Context, Dispatcher
from agentcore.lifecycle import Background
from agentcore.limits import Deadlines, LoadShedMiddleware, check_json_depth
from agentcore.llm.api import LlmApi
from agentcore.methods import build_methods
from agentcore.metrics import CONTENT_TYPE, Metrics
from agentcore.openapi import agent_card, method_listing, openapi_document
from agentcore.protection import ProtectionChain
from agentcore.proxies import TrustedProxies
from agentcore.ratelimit.base import RateLimiter
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.ratelimit.middleware import RateLimitMiddleware
from agentcore.realtime.connections import Connections
from agentcore.realtime.sse import SSE_PATH, SseEndpoint
from agentcore.realtime.websocket import WS_PATH, WebSocketEndpoint
from agentcore.registry.service import Registry
from agentcore.repositories import Repositories, open_repositories
from agentcore.routing import Router
from agentcore.security import SecurityMiddleware, host_names
from agentcore.storage.api import PREFIX as STORAGE_PREFIX
from agentcore.storage.api import add_routes as add_storage_routes
from agentcore.storage.base import BlobStore
from agentcore.tasks.service import TaskService
from agentcore.types import Receive, Scope, Send
from agentcore.webhooks.api import add_routes as add_webhook_routes
from agentcore.webhooks.repository import WebhookRepository
from agentcore.webhooks.secretbox import SecretBox
from agentcore.webhooks.ssrf import AddressPolicy
from agentcore.webhooks.worker import WebhookWorker

log = logging.getLogger("agentcore")

API = "/api/v1"
#: Seconds a database health check result is reused.
HEALTH_CACHE_S = 1.0
#: Seconds shutdown waits for background tasks before cancelling them.
SHUTDOWN_GRACE_S = 10.0
#: Errors counted in agentcore_rejected_total, by reason.
REJECTED: dict[type[AgentCoreError], str] = {
    PayloadTooLarge: "body_too_large",
    RequestTimeout: "read_timeout",
}


class Gateway:
    """The ASGI application."""

    def __init__(
        self,
        config: Config,
        *,
        repos: Repositories | None = None,
        blobs: BlobStore | None = None,
        clock: Clock = system_clock,
        metrics_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.repos = repos or open_repositories(
            config.database_url,
            pool_min_size=config.database.pool_min_size,
            pool_max_size=config.database.pool_max_size,
            statement_timeout_s=config.database.statement_timeout_s,
            box=SecretBox(config.webhook_secrets_key_file),
        )
        self.metrics = (
            Metrics(metrics_dir, max_label_values=config.metrics.max_label_values)
            if config.metrics.enabled
            else None
        )
        #: The in-process hub every stream subscribes to; fed by the event log.
        self.bus = MemoryEventBus(config.events.subscriber_queue_size)
        #: Carries committed events to the other workers and instances; None: local only.
        self.fanout = _build_fanout(config)
        self.events = EventLog(self.repos, self.bus, config.events, clock, self.fanout)
        self.registry = Registry(self.repos.agents, self.events, config.registry, clock)
        self.tasks = TaskService(self.repos.tasks, self.events, config.tasks, clock)
        self.registry.on_available = self.tasks.on_agent_available
        self.registry.on_leave = self.tasks.release
        self.registry.on_released = self.tasks.assign_pending
        #: Blob storage (local files or S3); clients are created on first use.
        self.blobs = blobs or storage.open_blob_store(
            config.storage, config.database.data_dir, os.environ, clock
        )
        #: LLM routing (docs/llm.md); provider API keys are read from ``environ`` here, once.
        self.llm = LlmApi(
            config.llm,
            self.repos.llm_usage,
            clock,
            os.environ if environ is None else environ,
            self.metrics,
        )
        self.methods = [
            *build_methods(self.registry, self.tasks, config.tasks.max_page_size),
            *self.llm.methods(),
        ]
        self.dispatcher = Dispatcher(self.methods, max_batch_size=config.limits.max_batch_size)
        #: Webhooks (docs/webhooks.md): the repository when enabled; the worker when
        #: this process delivers too (``webhooks.run_in_gateway``).
        self.webhooks: WebhookRepository | None = None
        self.webhook_worker: WebhookWorker | None = None
        if config.webhooks.enabled:
            self.webhooks = self.repos.webhooks
            if config.webhooks.run_in_gateway:
                self.webhook_worker = WebhookWorker(
                    self.webhooks, config.webhooks, clock, self.events, self.metrics
                )
        self.router = self._routes()
        self.limiter = _build_limiter(config, clock)
        self.proxies = TrustedProxies(config.server.trusted_proxies)
        self.authenticator = build_authenticator(config.auth, self.repos.api_keys, clock)
        #: Open WebSocket and SSE streams: the event router, keepalive sweeper, shutdown.
        self.streams = Connections(
            self.events,
            self.repos.events,
            self.tasks,
            config.realtime,
            metrics=self.metrics,
            wall_clock=clock,
            authenticator=self.authenticator,
            recheck_s=config.auth.cache_s,
        )
        self.websocket = WebSocketEndpoint(
            self.streams, self.authenticator, self.dispatcher, config, self.metrics
        )
        self.sse = SseEndpoint(self.streams, config)
        self.shedder = LoadShedMiddleware(
            config.limits.max_in_flight, self.metrics, streams={SSE_PATH}
        )
        self.protection = self._protection()
        self.started_at = time.monotonic()
        limits = config.limits
        # Read on every request: looked up once here.
        self._read_timeout_s = limits.read_timeout_s
        self._handler_timeout_s = limits.handler_timeout_s
        self._control_body_limit = limits.max_body_bytes_by_class.get(
            "control", limits.max_body_bytes
        )
        self._max_json_depth = limits.max_json_depth
        self.deadlines = Deadlines(
            min(1.0, limits.read_timeout_s / 4, limits.handler_timeout_s / 4)
        )
        #: With one worker the in-flight gauge is read from the shedder at scrape
        #: time; in multiprocess mode each request moves it (slower, but summed).
        self._count_in_flight = metrics_dir is not None
        #: Every feature's background work, run by the lifespan.
        self.background = Background(
            [
                *self.registry.jobs(),
                *self.tasks.jobs(config.registry.sweep_interval_s),
                *self.events.jobs(self.metrics),
                *self.streams.jobs(),
                *self.deadlines.jobs(),
                *self.llm.jobs(),
                *storage.jobs(self.blobs),
                *(self.webhook_worker.jobs(self.bus) if self.webhook_worker else ()),
            ]
        )
        self._static: dict[str, bytes] = {}
        self._health: tuple[float, dict[str, Any]] | None = None
        #: The encoded health document and the store status it was built from.
        self._health_body: tuple[dict[str, Any], bytes] | None = None

    # -- routes ---------------------------------------------------------------

    def _routes(self) -> Router:
        r = Router()
        r.add("GET", f"{API}/health", self.health)
        r.add("GET", f"{API}/health/ready", self.ready)
        r.add("GET", f"{API}/health/live", self.live)
        r.add("POST", f"{API}/jsonrpc", self.jsonrpc)
        r.add("GET", f"{API}/jsonrpc/methods", self.jsonrpc_methods)
        r.add("GET", "/metrics", self.metrics_endpoint)
        r.add("GET", "/openapi.json", self.openapi)
        r.add("GET", "/.well-known/agent-card.json", self.agent_card)
        r.add("GET", "/.well-known/agent.json", self.agent_card)
        limits = self.config.limits
        integration_body = limits.max_body_bytes_by_class.get("integration", limits.max_body_bytes)
        add_event_routes(r, self.events, integration_body)
        if self.webhooks is not None:
            policy = AddressPolicy(self.config.webhooks.allowed_networks)
            add_webhook_routes(
                r, self.webhooks, policy, self.config.webhooks, self.clock, integration_body
            )
        add_storage_routes(r, self.blobs, self.config.storage, integration_body)
        self.llm.add_routes(r, limits.max_body_bytes_by_class.get("llm", limits.max_body_bytes))
        return r

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
        status = "healthy" if database["status"] == "up" else "degraded"
        body = json_response(
            {
                "status": status,
                "version": __version__,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "workers": self.config.server.workers,
                "dependencies": {"database": database},
                "rate_limit": self._rate_limit_status(),
                "events": self._events_status(),
            }
        ).body
        self._health_body = (database, body)
        return Response(200, body)

    def _rate_limit_status(self) -> dict[str, Any]:
        rl = self.config.rate_limit
        status: dict[str, Any] = {"enabled": rl.enabled, "backend": rl.backend}
        if rl.enabled and not self.limiter.shared and self.config.server.workers > 1:
            status["warning"] = (
                "limits are per worker: each of the "
                f"{self.config.server.workers} workers counts on its own; "
                'use backend = "redis" for exact shared limits'
            )
        return status

    def _events_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"fanout": self.config.events.fanout}
        if self.fanout is None and self.config.server.workers > 1:
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

    async def jsonrpc_methods(self, request: Request) -> Response:
        return self._cached("methods", lambda: method_listing(self.methods))

    async def openapi(self, request: Request) -> Response:
        return self._cached("openapi", lambda: openapi_document(self.methods, self.router.routes()))

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
        if not self._count_in_flight:
            self.metrics.in_flight.set(self.shedder.in_flight)
        body = self.metrics.render(await self.repos.agents.count(), await self.repos.tasks.count())
        return Response(200, body, content_type=CONTENT_TYPE)

    def _cached(self, key: str, build: Callable[[], Any]) -> Response:
        body = self._static.get(key)
        if body is None:
            body = json_response(build()).body
            self._static[key] = body
        return Response(200, body)

    def _protection(self) -> ProtectionChain:
        config = self.config
        server = config.server
        security = SecurityMiddleware(
            cors_origins=server.cors_allow_origins,
            hsts=server.hsts,
            proxies=self.proxies,
            # DNS rebinding matters only when the gateway asks for no credentials.
            hosts=host_names(server.host, server.port, server.allowed_hosts)
            if config.auth.mode == "off"
            else None,
            raw_uploads=(f"{STORAGE_PREFIX}/",),
            form_uploads=(f"{STORAGE_PREFIX}/upload",),
        )
        auth = AuthMiddleware(
            self.authenticator, protect_metrics=config.auth.protect_metrics, metrics=self.metrics
        )
        ratelimit = (
            RateLimitMiddleware(self.limiter, config.rate_limit, self.proxies, self.metrics)
            if config.rate_limit.enabled
            else None
        )
        return ProtectionChain(
            security,
            auth,
            ratelimit,
            self.shedder,
            http=self._http,
            stream=self._stream,
            websocket=self._websocket,
        )

    # -- ASGI -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.protection(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An admitted HTTP request on a long-lived stream's path."""
        if scope["path"] == SSE_PATH and scope["method"] == "GET":
            await self.sse(scope, receive, send)  # long-lived: no handler deadline
        else:
            await self._http(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An admitted WebSocket handshake."""
        if scope["path"] == WS_PATH:
            await self.websocket(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "no such endpoint"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        metrics = self.metrics
        if self._count_in_flight and metrics is not None:
            metrics.in_flight.inc()
        route_name = "unmatched"
        method: str = scope["method"]
        deadlines = self.deadlines
        task = deadlines.arm(self._handler_timeout_s, "handler")
        try:
            route, handler, params = self.router.match(method, scope["path"])
            route_name = route.path
            request = Request(scope, receive)
            request.path_params = params
            request.task = task
            response = await handler(request)
        except asyncio.CancelledError:
            kind = deadlines.missed(task)
            if kind is None:
                raise
            response = self._timed_out(kind, scope["path"])
        except AgentCoreError as exc:
            if exc.status >= 500:
                log.error("request %s %s failed: %s", method, scope["path"], exc.message)
            reason = REJECTED.get(type(exc))
            if reason is not None and metrics is not None:
                metrics.rejected.labels(reason).inc()
            response = error_response(exc, scope["path"])
        except Exception:
            log.exception("unhandled error on %s %s", method, scope["path"])
            response = error_response(AgentCoreError("internal error"))
        finally:
            deadlines.disarm(task)
        try:
            await response(scope, receive, send)
        finally:
            if metrics is not None:
                if self._count_in_flight:
                    metrics.in_flight.dec()
                metrics.observe(route_name, method, response.status, time.perf_counter() - started)

    def _timed_out(self, kind: str, path: str) -> Response:
        limits = self.config.limits
        exc: AgentCoreError
        if kind == "read":
            exc = RequestTimeout(f"request body not received within {limits.read_timeout_s:g} s")
        else:
            exc = HandlerTimeout(
                f"the request took longer than {limits.handler_timeout_s:g} s to handle"
            )
        if self.metrics is not None:
            self.metrics.rejected.labels(f"{kind}_timeout").inc()
        return error_response(exc, path)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            await self.startup()
        except Exception as exc:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    # -- lifecycle ------------------------------------------------------------

    async def startup(self) -> None:
        tighten(self.config.database.data_dir, DIR_MODE)  # made by an older version: 0755
        await self.repos.open()
        if self.webhooks is not None:
            sealed = await self.webhooks.seal()
            if sealed:
                log.info("webhooks: encrypted the clear-text secrets of %d webhooks", sealed)
        await self.llm.open()
        await storage.sweep_leftovers(self.blobs)
        self.started_at = time.monotonic()
        if self.metrics is not None:
            self.bus.on_publish = self.metrics.count_event
        self.events.open()
        self.background.start()
        await self.tasks.assign_pending()
        rate_limit = self._rate_limit_status()
        if "warning" in rate_limit:
            log.warning("rate limiting: %s", rate_limit["warning"])
        events_status = self._events_status()
        if "warning" in events_status:
            log.warning("events: %s", events_status["warning"])
        log.info(
            "agentcore %s ready (database: %s)",
            __version__,
            self.config.database_url.split(":", 1)[0],
        )

    async def close_streams(self) -> None:
        """Close every WebSocket with 1001 and end every SSE stream; refuse new ones.

        Called by the server before it closes connections itself (server.py),
        and again, harmlessly, by :meth:`shutdown`.
        """
        await self.streams.close(1001, "server shutting down")

    async def shutdown(self) -> None:
        self.background.stop.set()
        await self.close_streams()
        with contextlib.suppress(StoreUnavailable):
            await self.registry.flush()
        await self.events.close()  # the fan-out sends what is queued, then returns
        await self.background.join(SHUTDOWN_GRACE_S)
        await self.tasks.close()
        if self.fanout is not None:
            await self.fanout.close()  # after the log: its last batches were fanned out
        await self.bus.close()
        await self.limiter.close()
        await self.blobs.close()
        await self.llm.close()
        await self.repos.close()


def _build_limiter(config: Config, clock: Clock) -> RateLimiter:
    if config.rate_limit.backend == "redis":
        extras.REDIS_RATE_LIMIT.require()
        from agentcore.ratelimit.redis import RedisRateLimiter

        return RedisRateLimiter(config.rate_limit.redis_url)
    return MemoryRateLimiter(clock)


def _build_fanout(config: Config) -> Fanout | None:
    events = config.events
    if events.fanout == "redis":
        extras.REDIS_FANOUT.require()
        from agentcore.events.redis import RedisFanout

        return RedisFanout(events.redis_url, events.redis_channel)
    return None


def create_app(config: Config, **kwargs: Any) -> Gateway:
    """Build the gateway for ``config``; nothing runs until the ASGI lifespan starts it."""
    return Gateway(config, **kwargs)
