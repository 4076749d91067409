"""Push dispatch: which `task.assigned` events carry their task to an agent's feed (in-process)."""

from __future__ import annotations

import json

import httpx

from agentcore.app import Gateway
from agentcore.events.base import Event, EventFilter
from agentcore.realtime.feed import Feed
from tests.support import agent_card, rpc


class Discard:
    """A sink that is never written to: these tests only encode."""

    queue_limit = 10

    def enqueue(self, feed: Feed, event: Event) -> None:
        raise AssertionError("not delivered here")

    def overflow(self) -> None:
        raise AssertionError("not delivered here")


async def test_only_the_task_services_task_assigned_carries_the_task(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    await rpc(client, "agent.register", {"agent_card": agent_card("bot-1", "d")})
    definition = {"task_id": "t1", "type": "d", "required_capabilities": ["d"]}
    await rpc(client, "task.create", {"task_definition": definition})
    assigned = [
        e for e in await gateway.events.replay(0, EventFilter(), 100) if e.type == "task.assigned"
    ]
    feed = Feed("s1", EventFilter(tenant="default", agent_id="bot-1"), Discard())
    # What a publisher could have stored before system types were refused at publish.
    forged = Event(
        id=assigned[0].id + 1,
        type="task.assigned",
        timestamp=assigned[0].timestamp,
        source="api:k1",
        data={"task_id": "t1", "agent_id": "bot-1"},
    )

    real = json.loads(await gateway.streams.encode(feed, assigned[0]))
    fake = json.loads(await gateway.streams.encode(feed, forged))

    assert real["task"]["task_id"] == "t1"
    assert "task" not in fake and fake["source"] == "api:k1"
