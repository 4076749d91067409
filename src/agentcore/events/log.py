"""The durable event log: events commit with the state change that causes them.

A state change (a task created and assigned, an agent registered, a batch of
agents expired) runs in :meth:`EventLog.change`: one unit of work in
which the change writes its rows through ``change.repos`` and names its
events with ``change.emit``. The events are appended as the transaction's
last statements, so the rows and their events commit together or not at
all: a crash can lose an unacknowledged change, never the event of a
committed one, which webhooks and streams promise at least once.

After the commit, and only then, the committed events go to this process's
hub and, through the :class:`~agentcore.events.base.Fanout` when there is
one, to every other worker and instance. The store assigns gap-free ids that
increase in commit order (appenders queue on the log's counter row), and
each change takes a ticket as its append returns: committed changes are
handed off in ticket order, so this process's subscribers see ids in order
even when the commits themselves end in another order.
:meth:`EventLog.publish` is a change with one event and no rows (the
integration API's ``events.publish``).

The fan-out's queue is bounded (:data:`FANOUT_QUEUE_BATCHES`); when Redis
falls that far behind, committing changes wait for it.

Retention: a periodic trim keeps the newest ``events.retention_count``
events and none older than ``events.retention_s``; a client resuming from a
trimmed cursor gets what is left (see the streams' ``since`` semantics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from agentcore.clock import Clock
from agentcore.config import EventsConfig
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event, EventFilter, Fanout
from agentcore.events.memory import MemoryEventBus
from agentcore.models import DEFAULT_TENANT
from agentcore.repositories import Repositories

log = logging.getLogger("agentcore.events")

#: Committed batches waiting for the fan-out before committing changes wait for it.
FANOUT_QUEUE_BATCHES = 1_000


class Change:
    """One state change in progress: the repositories of its unit of work, and its events."""

    __slots__ = ("_clock", "events", "repos", "stored")

    def __init__(self, repos: Repositories, clock: Clock) -> None:
        self.repos = repos
        self._clock = clock
        #: Events to append when the change commits, in order.
        self.events: list[Event] = []
        #: The same events as committed, with their ids (once the block has ended).
        self.stored: list[Event] = []

    def emit(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        source: str = "gateway",
    ) -> None:
        self.events.append(
            Event(type=event_type, timestamp=self._clock(), source=source, tenant=tenant, data=data)
        )


class EventLog:
    def __init__(
        self,
        repos: Repositories,
        hub: MemoryEventBus,
        config: EventsConfig,
        clock: Clock,
        fanout: Fanout | None = None,
    ) -> None:
        self._repos = repos
        self._events = repos.events
        self.hub = hub
        self._config = config
        self._clock = clock
        self.fanout = fanout
        #: Hand-off in append order: tickets issued, the next to hand off, and the
        #: changes that ended out of turn (None: rolled back, nothing to hand off).
        self._issued = 0
        self._next = 0
        self._ended: dict[int, list[Event] | None] = {}
        self._handing_off = False
        #: Committed batches for the fan-out task; None ends it.
        self._outbox: asyncio.Queue[list[Event] | None] = asyncio.Queue(FANOUT_QUEUE_BATCHES)
        self._closed = True

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """One atomic state change; its events reach subscribers once it has committed.

        Raising in the block rolls everything back and publishes nothing.
        """
        if self._closed:
            raise StoreUnavailable("the event log is not running")
        ticket = -1
        try:
            async with self._repos.transaction() as unit:
                change = Change(unit, self._clock)
                yield change
                if change.events:
                    change.stored = await unit.events.append(change.events)
                    ticket = self._issued
                    self._issued += 1
        except BaseException:
            if ticket >= 0:  # appended, then rolled back (or its commit's outcome unknown)
                self._ended[ticket] = None
                await self._hand_off()
            raise
        if ticket >= 0:
            self._ended[ticket] = change.stored
            await self._hand_off()

    async def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        source: str = "gateway",
    ) -> Event:
        """Append one event; returns once it is durable, with its id."""
        async with self.change() as change:
            change.emit(event_type, data, tenant=tenant, source=source)
        return change.stored[0]

    async def _hand_off(self) -> None:
        """Hand off every ended change whose turn has come; one caller at a time does it."""
        if self._handing_off:
            return
        self._handing_off = True
        try:
            while self._next in self._ended:
                stored = self._ended.pop(self._next)
                self._next += 1
                if not stored:
                    continue
                for event in stored:
                    self.hub.publish(event)
                if self.fanout is not None:
                    await self._outbox.put(stored)
        finally:
            self._handing_off = False

    def deliver(self, event: Event) -> None:
        """Hand an event committed elsewhere (another worker) to this process's subscribers."""
        self.hub.publish(event)

    def open(self) -> None:
        """Accept changes; :meth:`run` must be running for the fan-out."""
        self._closed = False

    async def run(self) -> None:
        """The fan-out, from startup until :meth:`close`."""
        if self.fanout is None:
            return
        while (batch := await self._outbox.get()) is not None:
            try:
                await self.fanout.publish(batch)
            except Exception:  # boundary: the events are durable; remote streams can replay
                log.exception("event fan-out failed")

    async def close(self) -> None:
        """Stop accepting changes; the fan-out sends what is queued, then ends."""
        if not self._closed:
            self._closed = True
            if self.fanout is not None:
                await self._outbox.put(None)

    async def replay(self, after_id: int, event_filter: EventFilter, limit: int) -> list[Event]:
        """Up to ``limit`` stored events after ``after_id`` that match ``event_filter``."""
        found: list[Event] = []
        cursor = after_id
        while len(found) < limit:
            page = await self._events.read(cursor, 1000, event_filter.tenant)
            if not page:
                break
            found.extend(e for e in page if event_filter.matches(e))
            cursor = page[-1].id
        return found[:limit]

    async def last_id(self) -> int:
        return await self._events.last_id()

    async def trim(self) -> int:
        cfg = self._config
        return await self._events.trim(cfg.retention_count, self._clock() - cfg.retention_s)
