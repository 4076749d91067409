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
increase in commit order (appenders queue on the log's counter row). A
change that has ended is handed off once every change of this process whose
append was sent before it ended has ended too, in id order: a change in
flight then may hold smaller ids (the answer to its commit not yet read),
one sent later cannot. So this process's subscribers see ids in order even
when the answers to the commits arrive in another order.
:meth:`EventLog.publish` appends one event that changes no rows (the
integration API's ``events.publish``).

A change whose last statement is a single write (a task created, a task's
transition) names it with :meth:`Change.last_write`; on PostgreSQL the unit
of work then sends that write and the events' append as one statement, which
is also its commit (``store/postgres.py``).

The fan-out's queue is bounded (:data:`FANOUT_QUEUE_BATCHES`); when Redis
falls that far behind, committing changes wait for it.

Retention: a periodic trim keeps the newest ``events.retention_count``
events and none older than ``events.retention_s``; a client resuming from a
trimmed cursor gets what is left (see the streams' ``since`` semantics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from agentcore.clock import Clock
from agentcore.config import EventsConfig
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event, EventFilter, Fanout
from agentcore.events.memory import MemoryEventBus
from agentcore.events.sequence import Sequence
from agentcore.lifecycle import Job, every
from agentcore.models import DEFAULT_TENANT
from agentcore.repositories import Repositories

if TYPE_CHECKING:
    from agentcore.metrics import Metrics

log = logging.getLogger("agentcore.events")

#: Committed batches waiting for the fan-out before committing changes wait for it.
FANOUT_QUEUE_BATCHES = 1_000


class Change:
    """One state change in progress: the repositories of its unit of work, and its events."""

    __slots__ = ("_clock", "_log", "_ticket", "events", "repos", "stored")

    def __init__(self, repos: Repositories, clock: Clock, log: EventLog) -> None:
        self.repos = repos
        self._clock = clock
        self._log = log
        #: The hand-off ticket, once the append has been sent (-1 before).
        self._ticket = -1
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

    async def last_write(self, write: Callable[[Repositories], Awaitable[bool]]) -> bool:
        """Run the change's last write, ``write(repos)`` (true when it changed a row),
        after every event of the change is emitted; a write that changed nothing
        drops them. Nothing may follow in the block.

        Where the database can, the write and the events' append go as one
        statement (PostgreSQL, when the change has written nothing before).
        """
        if not self.events:
            return await write(self.repos)
        self._ticket = self._log.sending()
        changed, stored = await self.repos.last_write(write, self.events)
        if not changed:
            self.events = []
        elif stored is not None:
            self.events, self.stored = [], stored
        return changed


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
        #: Hand-off in id order: tickets issued to appends as they are sent, those
        #: not yet ended, and ended changes with the tickets issued by their end.
        self._sent = 0
        self._in_flight: set[int] = set()
        self._ended: list[tuple[int, list[Event]]] = []
        self._handing_off = False
        #: Committed batches for the fan-out task; None ends it.
        self._outbox: asyncio.Queue[list[Event] | None] = asyncio.Queue(FANOUT_QUEUE_BATCHES)
        self._closed = True
        #: With a fan-out, this process's and the others' events meet here and reach the
        #: hub in id order, gaps filled from the log (sequence.py); alone, they go direct.
        self._sequence = Sequence(hub.publish, self._events.read) if fanout is not None else None
        self._to_hub = hub.publish if self._sequence is None else self._sequence.offer

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """One atomic state change; its events reach subscribers once it has committed.

        Raising in the block rolls everything back and publishes nothing.
        """
        if self._closed:
            raise StoreUnavailable("the event log is not running")
        change: Change | None = None
        try:
            async with self._repos.transaction() as unit:
                change = Change(unit, self._clock, self)
                yield change
                if change.events:
                    if change._ticket < 0:
                        change._ticket = self.sending()
                    change.stored = await unit.events.append(change.events)
        except BaseException:
            if change is not None and change._ticket >= 0:
                await self._end(change._ticket, None)  # rolled back, or its outcome unknown
            raise
        if change._ticket >= 0:
            await self._end(change._ticket, change.stored)

    def sending(self) -> int:
        """A ticket for an append about to be sent; the change ends it."""
        ticket = self._sent
        self._sent += 1
        self._in_flight.add(ticket)
        return ticket

    async def _end(self, ticket: int, stored: list[Event] | None) -> None:
        self._in_flight.discard(ticket)
        if stored:
            self._ended.append((self._sent, stored))
        await self._hand_off()

    async def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        source: str = "gateway",
    ) -> Event:
        """Append one event; returns once it is durable, with its id. No rows change
        with it, so the append is the whole change (one statement on PostgreSQL)."""
        if self._closed:
            raise StoreUnavailable("the event log is not running")
        event = Event(
            type=event_type, timestamp=self._clock(), source=source, tenant=tenant, data=data
        )
        ticket = self.sending()
        try:
            stored = await self._events.append([event])
        except BaseException:
            await self._end(ticket, None)
            raise
        await self._end(ticket, stored)
        return stored[0]

    async def _hand_off(self) -> None:
        """Hand off, in id order, every ended change that no change in flight may
        precede (one sent before it ended); one caller at a time does it."""
        if self._handing_off:
            return
        self._handing_off = True
        try:
            while self._ended:
                oldest = min(self._in_flight, default=self._sent)
                ready = [entry for entry in self._ended if entry[0] <= oldest]
                if not ready:
                    break
                self._ended = [entry for entry in self._ended if entry[0] > oldest]
                ready.sort(key=lambda entry: entry[1][0].id)
                to_hub = self._to_hub
                for _, stored in ready:
                    for event in stored:
                        to_hub(event)
                    if self.fanout is not None:
                        await self._outbox.put(stored)
        finally:
            self._handing_off = False

    def deliver(self, event: Event) -> None:
        """Hand an event committed elsewhere (another worker) to this process's subscribers."""
        self._to_hub(event)

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

    def jobs(self, metrics: Metrics | None = None) -> list[Job]:
        """Trimming every ``events.trim_interval_s``; the fan-out out (:meth:`run`,
        until :meth:`close`) and in (events from other workers, until stopped)."""
        trim = every(self._config.trim_interval_s, self.trim)
        fanout = self.fanout
        if fanout is None:
            return [trim]
        return [trim, lambda stop: self.run(), lambda stop: self._receive(fanout, stop, metrics)]

    async def _receive(self, fanout: Fanout, stop: asyncio.Event, metrics: Metrics | None) -> None:
        """Deliver events committed by other workers and instances until ``stop``."""

        def deliver(event: Event) -> None:
            if metrics is not None:
                metrics.fanout_received.inc()
            self.deliver(event)

        if self._sequence is not None:
            # Read before listening: what commits in between is a gap, filled from the log.
            self._sequence.start(await self.last_id())
        async with asyncio.TaskGroup() as group:
            receiving = group.create_task(fanout.run(deliver))
            await stop.wait()
            receiving.cancel()
        if self._sequence is not None:
            await self._sequence.close()

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
