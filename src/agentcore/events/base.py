"""The event vocabulary: what an event is, how a subscriber filters, how events leave the process.

Every agent and task state change (and, later, every event published through
the integration API) becomes an :class:`Event` in the durable event log
(``events/log.py``), which gives it a gap-free id. Subscribers (WebSocket and
SSE streams, webhooks) read from an in-process hub (``events/memory.py``),
each with a bounded queue and an explicit overflow policy:

- ``drop_oldest``: the oldest queued event is discarded and ``dropped`` counts it
  (for consumers that can re-read history from the log);
- ``close``: the subscription is closed and marked ``overflowed``; the consumer
  sees the end of the stream and decides (a WebSocket closes with 1013).

A :class:`Fanout` carries committed events to the hubs of other workers and
instances (Redis pub/sub); with one worker there is none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, Protocol

import msgspec

from agentcore.events.patterns import matches
from agentcore.models import DEFAULT_TENANT

OverflowPolicy = Literal["drop_oldest", "close"]


#: First dotted segments of the event types the gateway itself emits (``agent.*``
#: from the registry, ``task.*`` from the task service, ``webhook.*`` from delivery;
#: ``agentcore.*`` kept for later): ``events.publish`` refuses them, so a published
#: event can never pass for a state change (issue 14).
SYSTEM_TYPE_PREFIXES = ("agent", "task", "webhook", "agentcore")
#: The ``source`` of the task service's events: the only ``task.assigned`` a dispatch feed trusts.
TASKS_SOURCE = "tasks"


def is_system_type(event_type: str) -> bool:
    """Whether ``event_type`` is in a namespace of :data:`SYSTEM_TYPE_PREFIXES` (any case)."""
    return event_type.partition(".")[0].lower() in SYSTEM_TYPE_PREFIXES


class Event(msgspec.Struct, kw_only=True, frozen=True):
    #: Position in the event log: gap-free, increasing; 0 until the log assigns it.
    id: int = 0
    #: Dotted, e.g. ``task.completed``.
    type: str
    #: Epoch seconds.
    timestamp: float
    source: str = "gateway"
    tenant: str = DEFAULT_TENANT
    data: dict[str, Any] = {}


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a subscriber wants; every given field must match."""

    #: Glob patterns on the type (``task.*``, ``agent.registered``); any may match.
    patterns: tuple[str, ...] = ("*",)
    #: None: every tenant (internal consumers only; streams always set it).
    tenant: str | None = None
    task_id: str | None = None
    agent_id: str | None = None

    def matches(self, event: Event) -> bool:
        if self.tenant is not None and event.tenant != self.tenant:
            return False
        if self.task_id is not None and event.data.get("task_id") != self.task_id:
            return False
        if self.agent_id is not None and event.data.get("agent_id") != self.agent_id:
            return False
        return matches(event.type, self.patterns)


class Subscription(Protocol):
    dropped: int
    overflowed: bool

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def close(self) -> None: ...


class EventBus(Protocol):
    """The in-process hub: hands committed events to matching subscribers."""

    def publish(self, event: Event) -> None:
        """Offer ``event`` to every matching subscriber; never blocks."""

    def subscribe(
        self,
        *,
        patterns: tuple[str, ...] = ("*",),
        maxsize: int | None = None,
        policy: OverflowPolicy = "drop_oldest",
        filter: EventFilter | None = None,
    ) -> Subscription: ...

    async def close(self) -> None:
        """End every subscription."""


class Publisher(Protocol):
    """What producers (registry, tasks, the integration API) call."""

    async def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        source: str = "gateway",
    ) -> Event:
        """Append to the log; returns once the event is durable, with its id."""


class Fanout(Protocol):
    """Carries committed events between worker processes and gateway instances."""

    async def publish(self, events: Sequence[Event]) -> None: ...

    async def run(self, deliver: Callable[[Event], None]) -> None:
        """Receive events published by other processes and ``deliver`` them until cancelled."""

    async def close(self) -> None: ...
