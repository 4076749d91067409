"""The application: ``create_app(config)`` builds the whole gateway, the lifespan runs it.

:class:`Gateway` only wires: it builds the repositories and the feature
services, a router with every feature's routes and the built-in endpoints
(endpoints.py), the protection chain (protection.py) and the list of
background jobs (lifecycle.py), and dispatches ASGI scopes.

Request flow, top-down: ``Gateway.__call__`` -> the protection chain, one
object for HTTP and WebSocket (security headers, CORS, forged writes and the
Host check -> authentication -> rate limiting -> load shedding, each check
awaited only when it has to wait) -> router -> handler (health, metrics,
JSON-RPC dispatch -> method -> registry / task service -> repositories), or
the WebSocket and SSE endpoints. Errors are rendered once, here: an
:class:`AgentCoreError` becomes its status and JSON body; anything else is
logged and becomes a 500 (a bug). What the path costs: docs/performance.md.

The lifespan opens the store, starts every feature's background jobs as tasks
it owns (heartbeat flush, agent and task sweeps, event trimming and fan-out,
the stream router and keepalive, LLM usage, storage sweeps, webhook delivery);
shutdown closes the streams, stops the jobs, flushes the last heartbeats and
closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from agentcore import __version__, extras, storage
from agentcore.auth import AuthCheck, build_authenticator
from agentcore.clock import Clock, system_clock
from agentcore.config import Config
from agentcore.datadir import DIR_MODE, tighten
from agentcore.endpoints import Endpoints
from agentcore.errors import AgentCoreError, HandlerTimeout, RequestTimeout, StoreUnavailable
from agentcore.events.api import add_routes as add_event_routes
from agentcore.events.base import Fanout
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus
from agentcore.http import Request, Response, error_response
from agentcore.jsonrpc import Dispatcher
from agentcore.lifecycle import Background
from agentcore.limits import REJECTED, Deadlines, LoadShedder
from agentcore.llm.api import LlmApi
from agentcore.methods import build_methods
from agentcore.metrics import Metrics
from agentcore.protection import ProtectionChain
from agentcore.proxies import TrustedProxies
from agentcore.ratelimit.base import RateLimiter
from agentcore.ratelimit.check import RateLimitCheck
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.realtime.connections import Connections
from agentcore.realtime.sse import SSE_PATH, SseEndpoint
from agentcore.realtime.websocket import WS_PATH, WebSocketEndpoint
from agentcore.registry.service import Registry
from agentcore.repositories import Repositories, open_repositories
from agentcore.routing import Router
from agentcore.security import SecurityCheck, host_names
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

#: Seconds shutdown waits for background tasks before cancelling them.
SHUTDOWN_GRACE_S = 10.0


class Gateway:
    """The ASGI application.

    ``environ`` is read for the credentials the configuration names by
    variable (LLM provider keys, S3 keys); None reads none. The edges that
    build the app (the CLI's server, the seed's module) pass the process's.
    """

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
        environ = {} if environ is None else environ
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
            config.storage, config.database.data_dir, environ, clock
        )
        #: LLM routing (docs/llm.md); provider API keys are read from ``environ`` here, once.
        self.llm = LlmApi(config.llm, self.repos.llm_usage, clock, environ, self.metrics)
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
        limits = config.limits
        self._handler_timeout_s = limits.handler_timeout_s  # read on every request
        self.deadlines = Deadlines(
            min(1.0, limits.read_timeout_s / 4, limits.handler_timeout_s / 4)
        )
        self.shedder = LoadShedder(limits.max_in_flight, self.metrics, streams={SSE_PATH})
        #: With one worker the in-flight gauge is read from the shedder at scrape
        #: time; in multiprocess mode each request moves it (slower, but summed).
        self._count_in_flight = metrics_dir is not None
        self.endpoints = Endpoints(
            config,
            self.repos,
            self.dispatcher,
            self.methods,
            self.deadlines,
            self.limiter,
            self.metrics,
            in_flight=None if self._count_in_flight else lambda: self.shedder.in_flight,
        )
        self.router = self._routes()
        self.protection = self._protection()
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

    def _routes(self) -> Router:
        r = Router()
        self.endpoints.add_routes(r)
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

    def _protection(self) -> ProtectionChain:
        config = self.config
        server = config.server
        security = SecurityCheck(
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
        auth = AuthCheck(
            self.authenticator, protect_metrics=config.auth.protect_metrics, metrics=self.metrics
        )
        ratelimit = (
            RateLimitCheck(self.limiter, config.rate_limit, self.proxies, self.metrics)
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
        """An admitted HTTP request: routed, handled under its deadline, its error
        rendered, its metrics observed."""
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
        self.endpoints.started()
        if self.metrics is not None:
            self.bus.on_publish = self.metrics.count_event
        self.events.open()
        self.background.start()
        await self.tasks.assign_pending()
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
