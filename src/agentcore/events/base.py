"""The internal event interface: every agent and task state change is an event.

Producers call :meth:`EventBus.publish` and never wait: publishing is a
non-blocking hand-off so the request path is never slowed by a consumer.
Each subscriber owns a bounded queue with an explicit overflow policy:

- ``drop_oldest``: the oldest queued event is discarded and ``dropped`` counts it
  (for consumers that can re-read history, e.g. from the event log);
- ``close``: the subscription is closed and marked ``overflowed``; the consumer
  sees the end of the stream and decides (a WebSocket closes with 1013).

The real-time streams and webhooks subscribe here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import msgspec

from agentcore.models import DEFAULT_TENANT

OverflowPolicy = Literal["drop_oldest", "close"]


class Event(msgspec.Struct, kw_only=True, frozen=True):
    #: Monotonic per bus; 0 until the bus assigns it.
    id: int = 0
    type: str
    timestamp: float
    source: str = "gateway"
    tenant: str = DEFAULT_TENANT
    data: dict[str, Any] = {}


class Subscription(Protocol):
    dropped: int
    overflowed: bool

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def close(self) -> None: ...


class EventBus(Protocol):
    def publish(self, event: Event) -> Event:
        """Assign the id and hand the event to every subscriber; never blocks."""

    def subscribe(
        self,
        *,
        patterns: tuple[str, ...] = ("*",),
        maxsize: int | None = None,
        policy: OverflowPolicy = "drop_oldest",
    ) -> Subscription: ...

    async def close(self) -> None:
        """End every subscription."""
