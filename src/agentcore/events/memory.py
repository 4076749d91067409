"""The in-process hub: bounded per-subscriber queues, no I/O."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from agentcore.events.base import Event, EventFilter, OverflowPolicy


class MemorySubscription:
    def __init__(
        self,
        bus: MemoryEventBus,
        event_filter: EventFilter,
        maxsize: int,
        policy: OverflowPolicy,
    ) -> None:
        self._bus = bus
        self.filter = event_filter
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._policy = policy
        self._wakeup = asyncio.Event()
        self.closed = False
        self.dropped = 0
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) >= self._maxsize:
            if self._policy == "close":
                self.overflowed = True
                self.close()
                return
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._discard(self)
            self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    def drain(self) -> list[Event]:
        """Take every queued event without waiting."""
        events = list(self._queue)
        self._queue.clear()
        return events

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self.closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()


class MemoryEventBus:
    def __init__(self, default_maxsize: int = 10_000) -> None:
        self._subs: set[MemorySubscription] = set()
        self._default_maxsize = default_maxsize
        #: Called with every event offered to subscribers (metrics); must not block.
        self.on_publish: Callable[[Event], None] | None = None

    def publish(self, event: Event) -> None:
        if self.on_publish is not None:
            self.on_publish(event)
        for sub in tuple(self._subs):
            if sub.filter.matches(event):
                sub.offer(event)

    def subscribe(
        self,
        *,
        patterns: tuple[str, ...] = ("*",),
        maxsize: int | None = None,
        policy: OverflowPolicy = "drop_oldest",
        filter: EventFilter | None = None,
    ) -> MemorySubscription:
        event_filter = filter or EventFilter(patterns=patterns)
        sub = MemorySubscription(self, event_filter, maxsize or self._default_maxsize, policy)
        self._subs.add(sub)
        return sub

    def _discard(self, sub: MemorySubscription) -> None:
        self._subs.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    async def close(self) -> None:
        for sub in tuple(self._subs):
            sub.close()
