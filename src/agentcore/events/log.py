"""The durable event log: group-committed appends, local fan-out, replay.

``publish`` hands the event to one writer task and waits until it is
committed: acknowledged means durable. The writer takes everything queued at
that moment (up to ``events.batch_max``) and appends it in one transaction,
so a burst of publishers costs one commit, not one each. The store assigns
gap-free, increasing ids. Committed events go to this process's hub and,
through the :class:`~agentcore.events.base.Fanout` when there is one, to every
other worker and instance.

A publisher waits for its commit and nothing else: the batch's futures are
resolved as soon as the append returns, and the writer goes on to the next
batch without waiting for the fan-out, which a task of its own sends in
commit order (Redis round trips, reconnect back-off). There is no batching
window: a publish arriving at an idle writer commits at once; one arriving
during a commit waits for that commit to end, then for its own (group commit).

The writer's queue is bounded (``events.writer_queue_size``); when it is
full, publishers wait (back-pressure) rather than the log growing without
bound. So is the fan-out's (:data:`FANOUT_QUEUE_BATCHES`); when Redis falls
that far behind, the writer waits for it.

Retention: a periodic trim keeps the newest ``events.retention_count``
events and none older than ``events.retention_s``; a client resuming from a
trimmed cursor gets what is left (see the streams' ``since`` semantics).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from agentcore.clock import Clock
from agentcore.config import EventsConfig
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event, EventFilter, Fanout
from agentcore.events.memory import MemoryEventBus
from agentcore.models import DEFAULT_TENANT
from agentcore.store.base import Store

log = logging.getLogger("agentcore.events")

_Pending = tuple[Event, "asyncio.Future[Event]"]

#: Committed batches waiting for the fan-out before the writer waits for it.
FANOUT_QUEUE_BATCHES = 1_000


class EventLog:
    def __init__(
        self,
        store: Store,
        hub: MemoryEventBus,
        config: EventsConfig,
        clock: Clock,
        fanout: Fanout | None = None,
    ) -> None:
        self._store = store
        self.hub = hub
        self._config = config
        self._clock = clock
        self.fanout = fanout
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(config.writer_queue_size)
        #: Committed batches for the fan-out task; None ends it.
        self._outbox: asyncio.Queue[list[Event] | None] = asyncio.Queue(FANOUT_QUEUE_BATCHES)
        self._closed = True

    async def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        source: str = "gateway",
    ) -> Event:
        if self._closed:
            raise StoreUnavailable("the event log is not running")
        event = Event(
            type=event_type, timestamp=self._clock(), source=source, tenant=tenant, data=data
        )
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))
        return await future

    def deliver(self, event: Event) -> None:
        """Hand an event committed elsewhere (another worker) to this process's subscribers."""
        self.hub.publish(event)

    def open(self) -> None:
        """Accept events; :meth:`run` must be running to commit them."""
        self._closed = False

    async def run(self) -> None:
        """The writer (and the fan-out): from startup until :meth:`close` drains the queue."""
        if self.fanout is None:
            await self._write()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._fan_out(self.fanout))
            try:
                await self._write()
            finally:
                await self._outbox.put(None)  # the fan-out sends what is queued, then ends

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self._config.batch_max and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._commit(batch)
            if stop:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            stored = await self._store.append_events([event for event, _ in batch])
        except Exception as exc:  # boundary: every waiting publisher gets the error
            log.error("event log append failed: %s", exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), event in zip(batch, stored, strict=True):
            if not future.done():
                future.set_result(event)
        for event in stored:
            self.hub.publish(event)
        if self.fanout is not None:
            await self._outbox.put(stored)

    async def _fan_out(self, fanout: Fanout) -> None:
        """Send committed batches to other processes, in commit order, until the end marker."""
        while (batch := await self._outbox.get()) is not None:
            try:
                await fanout.publish(batch)
            except Exception:  # boundary: the events are durable; remote streams can replay
                log.exception("event fan-out failed")

    async def close(self) -> None:
        """Stop accepting events and let the writer commit what is queued."""
        if not self._closed:
            self._closed = True
            await self._queue.put(None)

    async def replay(self, after_id: int, event_filter: EventFilter, limit: int) -> list[Event]:
        """Up to ``limit`` stored events after ``after_id`` that match ``event_filter``."""
        found: list[Event] = []
        cursor = after_id
        while len(found) < limit:
            page = await self._store.read_events(cursor, 1000, event_filter.tenant)
            if not page:
                break
            found.extend(e for e in page if event_filter.matches(e))
            cursor = page[-1].id
        return found[:limit]

    async def last_id(self) -> int:
        return await self._store.last_event_id()

    async def trim(self) -> int:
        cfg = self._config
        return await self._store.trim_events(cfg.retention_count, self._clock() - cfg.retention_s)
