"""The in-process hub: filtering, bounded queues and their policies (ids come from the log)."""

from __future__ import annotations

import asyncio

from agentcore.events.base import Event, EventFilter
from agentcore.events.memory import MemoryEventBus
from tests.support import collect


def event(event_type: str, **data: object) -> Event:
    return Event(type=event_type, timestamp=1.0, data=dict(data))


async def test_events_are_delivered_as_committed_in_order() -> None:
    bus = MemoryEventBus()
    sub = bus.subscribe()
    committed = [Event(id=i, type="a.x", timestamp=1.0) for i in (7, 8, 9)]

    for e in committed:
        bus.publish(e)

    assert await collect(sub) == committed


async def test_filters_by_tenant_task_and_agent() -> None:
    bus = MemoryEventBus()
    tenant = bus.subscribe(filter=EventFilter(tenant="acme"))
    task = bus.subscribe(filter=EventFilter(task_id="t1", patterns=("task.*",)))
    agent = bus.subscribe(filter=EventFilter(agent_id="a1"))
    events = [
        Event(id=1, type="task.created", timestamp=1.0, tenant="acme", data={"task_id": "t1"}),
        Event(id=2, type="task.created", timestamp=1.0, data={"task_id": "t2", "agent_id": "a1"}),
        Event(id=3, type="agent.ping", timestamp=1.0, data={"task_id": "t1", "agent_id": "a2"}),
    ]

    for e in events:
        bus.publish(e)

    assert [e.id for e in await collect(tenant)] == [1]
    assert [e.id for e in await collect(task)] == [1]
    assert [e.id for e in await collect(agent)] == [2]


async def test_subscribers_get_only_matching_events() -> None:
    bus = MemoryEventBus()
    agents = bus.subscribe(patterns=("agent.*",))
    several = bus.subscribe(patterns=("task.completed", "task.failed"))
    everything = bus.subscribe()
    for i, event_type in enumerate(("agent.registered", "task.created", "task.failed", "agentx")):
        bus.publish(Event(id=i + 1, type=event_type, timestamp=1.0))

    assert [e.type for e in await collect(agents)] == ["agent.registered"]
    assert [e.type for e in await collect(several)] == ["task.failed"]
    assert [e.id for e in await collect(everything)] == [1, 2, 3, 4]


async def test_on_publish_sees_every_event_with_its_id() -> None:
    bus = MemoryEventBus()
    seen: list[Event] = []
    bus.on_publish = seen.append

    bus.publish(Event(id=1, type="a", timestamp=1.0))
    bus.publish(Event(id=2, type="b", timestamp=1.0))

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
