"""The open event streams of one worker: routing events to them, keepalive, shutdown.

Cost per idle connection is the point (10,000 per worker at <= 30 KB each):
a connection is one small object and, while it is idle, exactly one task,
the ASGI call itself, blocked on ``receive()``. Nothing else runs for it:

- one *router* task per worker takes every committed event from the hub
  (one hub subscription in all, not one per client) and offers it to the
  matching feeds, indexed by tenant. Offering never blocks: it appends to
  the connection's bounded send queue and, when no writer is running,
  starts one (the *flusher*), which writes the queue out and ends. A burst
  costs one short-lived task per busy connection; idle ones cost none;
- one *sweeper* per worker (run by the app every :attr:`Connections.tick_s`)
  sends WebSocket keepalive pings, closes idle WebSockets, writes SSE
  heartbeats, checks credentials again and gives up on connections that
  cannot take their close: no timer per connection.

Credentials end while streams stay open (a revoked API key, a JWT past its
``exp``): the sweeper checks each stream's credential again every
``auth.cache_s`` (once per distinct credential, through the authenticator and
its cache) and closes the streams of one that ended with 1008 (SSE: ``event:
error``). A WebSocket's client messages are checked on arrival as well
(``websocket.py``). A store that cannot answer keeps the streams open (it
cannot show a revocation either) and is asked again after ``auth.cache_s``.

Slow consumers: when a connection's queue (``realtime.send_queue_size``) is
full, the queue is dropped and the stream is closed (WebSocket 1013, SSE
``event: error``); the client resumes from its cursor. One slow client never
delays the router or anyone else, and memory stays bounded.

Writes to one connection are serialised by a lock, so the connection's own
replies (written by its ASGI task), replayed events and queued events never
interleave inside a message. Shutdown (:meth:`Connections.close`) closes
every stream with 1001 and waits ``realtime.shutdown_grace_s`` for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from agentcore.auth import Authenticator
from agentcore.clock import Clock, system_clock
from agentcore.config import RealtimeConfig
from agentcore.errors import AgentCoreError, Unauthorized
from agentcore.events.base import TASKS_SOURCE, Event, EventFilter
from agentcore.events.log import EventLog
from agentcore.events.memory import MemorySubscription
from agentcore.events.patterns import classify
from agentcore.events.repository import EventRepository
from agentcore.identity import Identity
from agentcore.lifecycle import Job, every
from agentcore.metrics import Metrics
from agentcore.realtime.feed import Feed
from agentcore.tasks.service import TaskService
from agentcore.types import Message, Send

log = logging.getLogger("agentcore.realtime")
K = TypeVar("K")

Transport = Literal["websocket", "sse"]
#: Events the router's hub subscription holds; the router drains it without
#: awaiting anything, so only a starved event loop could fill it.
ROUTER_QUEUE = 100_000
#: Seconds a connection may take to deliver its close before it is dropped.
CLOSE_TIMEOUT_S = 10.0
#: Encoded events remembered, so a broadcast is encoded once, not once per client.
ENCODED_CACHE = 256
#: Longest close reason a WebSocket close frame carries (bytes).
MAX_REASON = 123

_Item = tuple[Feed, Event] | bytes


class EventBody(msgspec.Struct):
    """An event as streams send it (after ``type``, and the WebSocket ``subscription``)."""

    id: int
    event_type: str
    data: dict[str, Any]
    timestamp: float
    source: str


class DispatchedBody(EventBody):
    """``task.assigned`` on an agent's own subscription: with the task as it is now."""

    task: Any = None


def close_reason(reason: str) -> str:
    """``reason`` cut to what a close frame can carry (123 bytes of UTF-8)."""
    data = reason.encode()
    if len(data) <= MAX_REASON:
        return reason
    return data[:MAX_REASON].decode(errors="ignore")


class Connection:
    """One open stream; the transports (``websocket.py``, ``sse.py``) fill in the framing."""

    transport: ClassVar[Transport]

    __slots__ = (
        "_closing",
        "_flusher",
        "_lock",
        "_outbox",
        "_send",
        "checked_at",
        "client",
        "closed",
        "closing_since",
        "credential",
        "feeds",
        "hub",
        "identity",
        "killed",
        "last_heard",
        "last_pinged",
        "last_sent",
        "task",
    )

    def __init__(
        self,
        hub: Connections,
        identity: Identity,
        send: Send,
        client: str,
        credential: str | None = None,
    ) -> None:
        self.hub = hub
        self.identity = identity
        self.client = client
        #: The API key or JWT the stream authenticated with, checked again while it
        #: is open; None without authentication.
        self.credential = credential
        self._send = send
        #: Subscriptions by id.
        self.feeds: dict[str, Feed] = {}
        self._lock = asyncio.Lock()
        self._outbox: deque[_Item] | None = None
        self._flusher: asyncio.Task[None] | None = None
        #: (code, reason) once a close was asked for.
        self._closing: tuple[int, str] | None = None
        #: True once the close was written or the peer went away: writes are no-ops.
        self.closed = False
        self.killed = False
        now = hub.now()
        self.last_heard = now
        self.last_sent = now
        self.last_pinged = now
        self.closing_since = 0.0
        #: When the credential was last found valid (monotonic seconds).
        self.checked_at = now
        #: The ASGI call serving the connection: cancelled by :meth:`kill`, and by a
        #: WebSocket closing while it waits in receive() (websocket.py, ``finish``).
        self.task = asyncio.current_task()

    # -- framing (per transport) ------------------------------------------------

    def frame(self, payload: bytes) -> Message:
        """The ASGI message that writes ``payload``."""
        raise NotImplementedError

    def event_payload(self, feed: Feed, event: Event, body: bytes) -> bytes:
        """``body`` (``event`` encoded as an :class:`EventBody`) as this transport sends it."""
        raise NotImplementedError

    async def finish(self, code: int, reason: str) -> None:
        """Write the end of the stream (called once, with the write lock held)."""
        raise NotImplementedError

    def tick(self, now: float, config: RealtimeConfig) -> None:
        """The sweeper's visit: keepalive and timeouts."""
        if self._closing is not None and now - self.closing_since > CLOSE_TIMEOUT_S:
            self.kill()

    # -- what the router and the sweeper call (never block) ---------------------

    @property
    def queue_limit(self) -> int:
        return self.hub.config.send_queue_size

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def enqueue(self, feed: Feed, event: Event) -> None:
        self._put((feed, event))

    def push(self, payload: bytes) -> None:
        """Queue a transport-ready message (keepalive ping, heartbeat) behind the events."""
        self._put(payload)

    def _put(self, item: _Item) -> None:
        if self._closing is not None:
            return
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        elif len(outbox) >= self.hub.config.send_queue_size:
            self.overflow()
            return
        outbox.append(item)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def overflow(self) -> None:
        """The client does not keep up: drop what is queued and close (1013)."""
        if self._closing is not None:
            return
        self.hub.slow_consumer()
        self.close(
            1013,
            f"slow consumer: more than {self.hub.config.send_queue_size} messages queued; "
            "resume from your cursor",
        )

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued, stop every feed and write the close as soon as possible."""
        if self._closing is not None:
            return
        self._closing = (code, close_reason(reason))
        self.closing_since = self.hub.now()
        self._outbox = None
        for feed in self.feeds.values():
            feed.stop()
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def kill(self) -> None:
        """Give up on a connection that cannot even take its close: end its tasks."""
        if self.killed:
            return
        self.killed = True
        self.closed = True
        if self._flusher is not None:
            self._flusher.cancel()
        if self.task is not None:
            self.task.cancel()

    # -- writing -----------------------------------------------------------------

    async def write(self, payload: bytes, feed: Feed | None = None) -> bool:
        """Write one message now, after any write in progress; False when it was not written."""
        async with self._lock:
            if self.closed or (feed is not None and not feed.active):
                return False
            try:
                await self._send(self.frame(payload))
            except OSError:  # uvicorn's ClientDisconnected: the peer went away
                self.closed = True
                return False
            self.last_sent = self.hub.now()
            return True

    async def write_event(self, feed: Feed, event: Event, *, live: bool) -> bool:
        body = await self.hub.encode(feed, event)
        if not await self.write(self.event_payload(feed, event, body), feed):
            return False
        self.hub.sent(self.transport, event, live=live)
        return True

    async def _flush(self) -> None:
        try:
            while self._outbox:
                item = self._outbox.popleft()
                if isinstance(item, bytes):
                    await self.write(item)
                elif item[0].active:
                    await self.write_event(item[0], item[1], live=True)
            if self._closing is not None:
                async with self._lock:
                    if not self.closed:
                        self.closed = True
                        await self.finish(*self._closing)
        except OSError:
            self.closed = True
        except Exception:  # boundary: one connection's failure is logged, never spreads
            log.exception("%s stream to %s failed", self.transport, self.client)
            self.closed = True
        finally:
            self._flusher = None

    def release(self) -> None:
        """Forget the connection's feeds and writer (its ASGI call is ending)."""
        self.closed = True
        self._outbox = None
        for feed in self.feeds.values():
            self.hub.detach(feed)
        self.feeds.clear()
        if self._flusher is not None:
            self._flusher.cancel()


class Connections:
    """The registry of one worker's open streams (see the module docstring)."""

    def __init__(
        self,
        log: EventLog,
        stored: EventRepository,
        tasks: TaskService,
        config: RealtimeConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Clock = system_clock,
        authenticator: Authenticator | None = None,
        recheck_s: float = 5.0,
    ) -> None:
        self.log = log
        self.config = config
        self._authenticator = authenticator
        #: Seconds between checks of an open stream's credential (``auth.cache_s``).
        self._recheck_s = recheck_s
        self._stored = stored
        self._tasks = tasks
        self._metrics = metrics
        #: Monotonic seconds: keepalive, idle and rate-limit arithmetic.
        self.now = clock
        #: Epoch seconds, the event timestamps' clock: publish-to-send latency.
        self._wall = wall_clock
        self._open: set[Connection] = set()
        #: Live feeds by tenant: an event is matched only against its tenant's feeds.
        #: tenant -> its feeds (every attached feed is in exactly one of the two indexes):
        #: feeds whose patterns are all exact types, filed under (tenant, type), so an
        #: event reaches them by one lookup however many streams are open; the rest
        #: (any glob pattern) are scanned per event of their tenant.
        self._feeds: dict[str, set[Feed]] = {}
        self._by_type: dict[tuple[str, str], set[Feed]] = {}
        self._scanned: dict[str, set[Feed]] = {}
        self._subscription: MemorySubscription | None = None
        self._encoded: dict[int, bytes] = {}
        self._encoder = msgspec.json.Encoder()
        self._empty = asyncio.Event()
        self._empty.set()
        #: True from shutdown on: new streams are refused.
        self.closing = False
        self.tick_s = max(
            0.05,
            min(
                1.0,
                config.ping_interval_s / 4,
                config.idle_timeout_s / 4,
                config.sse_heartbeat_s / 4,
                recheck_s / 2 if authenticator is not None and recheck_s > 0 else 1.0,
            ),
        )
        self._gauges = (
            {t: metrics.stream_connections.labels(t) for t in ("websocket", "sse")}
            if metrics is not None
            else {}
        )
        self._sent = (
            {t: metrics.stream_events_sent.labels(t) for t in ("websocket", "sse")}
            if metrics is not None
            else {}
        )

    # -- connections and feeds ---------------------------------------------------

    def __len__(self) -> int:
        return len(self._open)

    @property
    def subscriptions(self) -> int:
        return sum(len(feeds) for feeds in self._feeds.values())

    def open(self, conn: Connection) -> None:
        self._open.add(conn)
        self._empty.clear()
        if self._metrics is not None:
            self._gauges[conn.transport].inc()
        if self.closing:  # it authenticated while the streams were being closed
            conn.close(1001, "server shutting down")

    def release(self, conn: Connection) -> None:
        conn.release()
        if conn in self._open:
            self._open.discard(conn)
            if self._metrics is not None:
                self._gauges[conn.transport].dec()
        if not self._open:
            self._empty.set()

    def attach(self, feed: Feed) -> None:
        tenant = feed.filter.tenant
        assert tenant is not None, "stream feeds are always bound to a tenant"
        self._feeds.setdefault(tenant, set()).add(feed)
        types = _exact_types(feed.filter.patterns)
        if types is None:
            self._scanned.setdefault(tenant, set()).add(feed)
        else:
            for event_type in types:
                self._by_type.setdefault((tenant, event_type), set()).add(feed)
        if self._metrics is not None:
            self._metrics.stream_subscriptions.inc()

    def detach(self, feed: Feed) -> None:
        feed.stop()
        tenant = feed.filter.tenant or ""
        feeds = self._feeds.get(tenant)
        if feeds is not None and feed in feeds:
            feeds.discard(feed)
            if not feeds:
                del self._feeds[tenant]
            types = _exact_types(feed.filter.patterns)
            if types is None:
                _discard(self._scanned, tenant, feed)
            else:
                for event_type in types:
                    _discard(self._by_type, (tenant, event_type), feed)
            if self._metrics is not None:
                self._metrics.stream_subscriptions.dec()

    async def position(self, since: int | None) -> tuple[int, bool]:
        """The log's head and whether events after ``since`` were trimmed away (retention)."""
        head = await self.log.last_id()
        truncated = False
        if since is not None and since < head:
            first = await self._stored.read(since, 1)
            truncated = not first or first[0].id > since + 1
        return head, truncated

    # -- the router ----------------------------------------------------------------

    async def route(self) -> None:
        """Offer every committed event to the matching feeds until :meth:`close`."""
        while not self.closing:
            subscription = self.log.hub.subscribe(
                filter=EventFilter(), maxsize=ROUTER_QUEUE, policy="close"
            )
            self._subscription = subscription
            async for event in subscription:
                self.dispatch(event)
            if not subscription.overflowed:
                return
            log.error("the stream router fell %d events behind; closing every stream", ROUTER_QUEUE)
            for conn in tuple(self._open):
                conn.close(1013, "the server fell behind; resume from your cursor")

    def dispatch(self, event: Event) -> None:
        # Offering never changes the sets (a closing connection only stops its feeds).
        exact = self._by_type.get((event.tenant, event.type))
        if exact:
            for feed in exact:
                if feed.filter.matches(event):  # task and agent filters still apply
                    feed.offer(event)
        scanned = self._scanned.get(event.tenant)
        if scanned:
            for feed in scanned:
                if feed.filter.matches(event):
                    feed.offer(event)

    # -- encoding and accounting ---------------------------------------------------

    async def encode(self, feed: Feed, event: Event) -> bytes:
        """The event as a JSON object; ``task.assigned`` on an agent's feed carries the task
        (only the task service's own: a published one cannot deliver another agent's task)."""
        if feed.dispatch and event.type == "task.assigned" and event.source == TASKS_SOURCE:
            task: Any = None
            try:
                task = await self._tasks.get(str(event.data.get("task_id")), event.tenant)
            except AgentCoreError as exc:  # gone, or the store is down: send the event alone
                log.warning("task of event %d not attached: %s", event.id, exc.message)
            return self._encoder.encode(
                DispatchedBody(
                    event.id, event.type, event.data, event.timestamp, event.source, task
                )
            )
        body = self._encoded.get(event.id)
        if body is None:
            body = self._encoder.encode(
                EventBody(event.id, event.type, event.data, event.timestamp, event.source)
            )
            if len(self._encoded) >= ENCODED_CACHE:
                del self._encoded[next(iter(self._encoded))]
            self._encoded[event.id] = body
        return body

    def sent(self, transport: Transport, event: Event, *, live: bool) -> None:
        if self._metrics is None:
            return
        self._sent[transport].inc()
        if live:
            self._metrics.stream_publish_to_send.observe(max(0.0, self._wall() - event.timestamp))

    def slow_consumer(self) -> None:
        if self._metrics is not None:
            self._metrics.stream_slow_consumers.inc()

    # -- the sweeper and shutdown ----------------------------------------------------

    def jobs(self) -> list[Job]:
        """The router (until :meth:`close`) and the sweeper, every :attr:`tick_s`."""
        return [lambda stop: self.route(), every(self.tick_s, self.sweep)]

    async def sweep(self) -> None:
        """One visit to every connection: keepalive pings, idle closes, heartbeats,
        and the credentials due to be checked again."""
        now = self.now()
        config = self.config
        for conn in tuple(self._open):
            conn.tick(now, config)
        if self._authenticator is None:
            return
        due: dict[str, list[Connection]] = {}
        for conn in self._open:
            if (
                conn.credential is not None
                and not conn.closing
                and now - conn.checked_at >= self._recheck_s
            ):
                due.setdefault(conn.credential, []).append(conn)
        for credential, conns in due.items():
            try:
                await self._authenticator.authenticate(credential)
            except Unauthorized as exc:
                for conn in conns:
                    _credential_ended(conn, exc)
                continue
            except AgentCoreError as exc:  # the store is unavailable: asked again later
                log.warning("credential of %d streams not checked: %s", len(conns), exc.message)
            for conn in conns:
                conn.checked_at = now

    async def authorize(self, conn: Connection) -> bool:
        """Check ``conn``'s credential again now (a client message is to be acted on):
        False, with the stream closing (1008), when it has ended. A store that cannot
        answer raises its :class:`AgentCoreError` (503)."""
        if self._authenticator is None or conn.credential is None:
            return True
        try:
            await self._authenticator.authenticate(conn.credential)
        except Unauthorized as exc:
            _credential_ended(conn, exc)
            return False
        conn.checked_at = self.now()
        return True

    async def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close every stream and refuse new ones; returns when they are gone (or dropped)."""
        self.closing = True
        if self._subscription is not None:
            self._subscription.close()
        for conn in tuple(self._open):
            conn.close(code, reason)
        try:
            async with asyncio.timeout(self.config.shutdown_grace_s):
                await self._empty.wait()
        except TimeoutError:
            log.warning("%d streams did not take their close in time; dropping them", len(self))
            for conn in tuple(self._open):
                conn.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._empty.wait()


def _credential_ended(conn: Connection, exc: Unauthorized) -> None:
    log.info("closing a %s stream of %s: %s", conn.transport, conn.client, exc.message)
    conn.close(1008, f"credential ended: {exc.message}")


def _exact_types(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """The patterns when every one is an exact event type; None when any is a glob."""
    if all(classify(p)[0] == "exact" for p in patterns):
        return patterns
    return None


def _discard(index: dict[K, set[Feed]], key: K, feed: Feed) -> None:
    feeds = index.get(key)
    if feeds is not None:
        feeds.discard(feed)
        if not feeds:
            del index[key]
