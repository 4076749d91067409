"""The in-process event bus: ids, pattern filtering, bounded queues and their policies."""

from __future__ import annotations

import asyncio

from agentcore.events.base import Event
from agentcore.events.memory import MemoryEventBus
from tests.support import collect


def event(event_type: str, **data: object) -> Event:
    return Event(type=event_type, timestamp=1.0, data=dict(data))


async def test_publish_assigns_increasing_ids() -> None:
    bus = MemoryEventBus()

    published = [bus.publish(event("a.x")) for _ in range(3)]

    assert [e.id for e in published] == [1, 2, 3]


async def test_subscribers_get_only_matching_events() -> None:
    bus = MemoryEventBus()
    agents = bus.subscribe(patterns=("agent.*",))
    several = bus.subscribe(patterns=("task.completed", "task.failed"))
    everything = bus.subscribe()
    for event_type in ("agent.registered", "task.created", "task.failed", "agentx"):
        bus.publish(event(event_type))

    assert [e.type for e in await collect(agents)] == ["agent.registered"]
    assert [e.type for e in await collect(several)] == ["task.failed"]
    assert [e.id for e in await collect(everything)] == [1, 2, 3, 4]


async def test_on_publish_sees_every_event_with_its_id() -> None:
    bus = MemoryEventBus()
    seen: list[Event] = []
    bus.on_publish = seen.append

    bus.publish(event("a"))
    bus.publish(event("b"))

    assert [(e.type, e.id) for e in seen] == [("a", 1), ("b", 2)]


async def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    bus = MemoryEventBus()
    sub = bus.subscribe(maxsize=3, policy="drop_oldest")

    for i in range(5):
        bus.publish(event("e", n=i))

    assert sub.dropped == 2
    assert not sub.overflowed
    assert sub.pending() == 3
    assert [e.data["n"] for e in await collect(sub)] == [2, 3, 4]


async def test_close_policy_marks_overflow_and_ends_the_stream() -> None:
    bus = MemoryEventBus()
    sub = bus.subscribe(maxsize=2, policy="close")
    other = bus.subscribe(maxsize=10)

    for i in range(4):
        bus.publish(event("e", n=i))

    assert sub.overflowed
    assert sub.closed
    assert sub.dropped == 0
    assert bus.subscriber_count == 1
    # What was queued before the overflow is still delivered, then the stream ends.
    assert [e.data["n"] async for e in sub] == [0, 1]
    assert [e.data["n"] for e in await collect(other)] == [0, 1, 2, 3]


async def test_default_queue_size_comes_from_the_bus() -> None:
    bus = MemoryEventBus(default_maxsize=2)
    sub = bus.subscribe()

    for _ in range(3):
        bus.publish(event("e"))

    assert sub.dropped == 1


async def test_waiting_consumer_is_woken_and_ended() -> None:
    bus = MemoryEventBus()
    sub = bus.subscribe()
    received: list[str] = []

    async def consume() -> None:
        async for e in sub:
            received.append(e.type)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let it block on the empty queue
    bus.publish(event("first"))
    await asyncio.sleep(0)
    assert received == ["first"]
    bus.publish(event("second"))
    await bus.close()

    await asyncio.wait_for(consumer, 1)
    assert received == ["first", "second"]
    assert bus.subscriber_count == 0


async def test_closed_subscription_gets_nothing_more() -> None:
    bus = MemoryEventBus()
    sub = bus.subscribe()
    bus.publish(event("kept"))
    sub.close()
    sub.close()  # idempotent

    bus.publish(event("lost"))

    assert [e.type async for e in sub] == ["kept"]
    assert bus.subscriber_count == 0
