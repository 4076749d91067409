"""The agent registry: TTL expiry, reactivation, batched heartbeats, events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.errors import AgentNotFound, StoreUnavailable
from agentcore.events.log import Change
from agentcore.models import AgentCard, AgentQuery, AgentStatus, TaskDefinition, TaskStatus
from agentcore.registry.service import EXPIRE_BATCH
from tests.support import collect, make_config

A = AgentStatus


async def add_agent(gateway: Gateway, agent_id: str, *caps: str, tenant: str = "default") -> None:
    card = AgentCard(name=agent_id, agent_id=agent_id, capabilities=list(caps))
    await gateway.registry.register(card, tenant=tenant)


async def stored_status(gateway: Gateway, agent_id: str) -> AgentStatus:
    agent = await gateway.repos.agents.get("default", agent_id)
    assert agent is not None
    return agent.status


async def discover(gateway: Gateway, *caps: str) -> list[str]:
    agents = await gateway.registry.discover(AgentQuery(capabilities=list(caps)))
    return [a.agent_id for a in agents]


def ttl(gateway: Gateway) -> float:
    return gateway.config.registry.heartbeat_ttl_s


# -- TTL expiry ----------------------------------------------------------------------


async def test_silent_agent_is_swept_inactive(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "x")
    await add_agent(gateway, "b", "x")
    clock.advance(ttl(gateway) / 2)
    await gateway.registry.ping("b")
    subscription = gateway.bus.subscribe(patterns=("agent.*",))

    clock.advance(ttl(gateway) / 2 + 1)
    swept = await gateway.registry.sweep()

    assert swept == ["a"]
    assert await stored_status(gateway, "a") is A.INACTIVE
    assert await stored_status(gateway, "b") is A.ACTIVE
    assert (await gateway.registry.get("a")).status is A.INACTIVE
    events = await collect(subscription)
    assert [(e.type, e.data["agent_id"]) for e in events] == [("agent.inactive", "a")]
    assert events[0].timestamp == clock.now
    assert await discover(gateway, "x") == ["b"]
    assert await gateway.registry.sweep() == []  # already inactive: no second event


async def test_ttl_boundary(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a")

    clock.advance(ttl(gateway))
    assert await gateway.registry.sweep() == []
    clock.advance(0.5)
    assert await gateway.registry.sweep() == ["a"]


async def test_a_mass_expiry_runs_in_small_changes_and_releases_every_task(
    gateway: Gateway, clock: ManualClock
) -> None:
    """Forty agents expire at once, each holding tasks: every agent goes inactive and
    every task is released (then re-offered to the one live agent), in changes of
    EXPIRE_BATCH agents, so the loop is not held by one giant transaction."""
    for n in range(40):
        await add_agent(gateway, f"w{n:02}", "x")
    tasks = [
        await gateway.tasks.create(TaskDefinition(required_capabilities=["x"])) for _ in range(80)
    ]
    assert all(t.status is TaskStatus.ASSIGNED for t in tasks)
    clock.advance(ttl(gateway) + 1)
    await add_agent(gateway, "survivor", "x")
    changes = 0
    original = gateway.events.change

    def counted() -> AbstractAsyncContextManager[Change]:
        nonlocal changes
        changes += 1
        return original()

    gateway.events.change = counted  # type: ignore[method-assign,assignment]
    try:
        swept = await gateway.registry.sweep()
    finally:
        gateway.events.change = original  # type: ignore[method-assign]

    # The gateway's own periodic sweep may take a batch meanwhile: every agent is
    # expired once, by one of them.
    assert set(swept) <= {f"w{n:02}" for n in range(40)}
    for n in range(40):
        assert await stored_status(gateway, f"w{n:02}") is A.INACTIVE
    assert changes >= len(swept) // EXPIRE_BATCH + 1
    for task in tasks:
        stored = await gateway.tasks.get(task.task_id)
        assert (stored.status, stored.agent_id) == (TaskStatus.ASSIGNED, "survivor")


async def test_sweep_counts_unflushed_heartbeats(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a")
    clock.advance(ttl(gateway) - 1)
    await gateway.registry.ping("a")  # only in memory

    clock.advance(2)

    assert await gateway.registry.sweep() == []
    assert await stored_status(gateway, "a") is A.ACTIVE


async def test_ping_brings_an_inactive_agent_back(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "x")
    clock.advance(ttl(gateway) + 1)
    await gateway.registry.sweep()
    pending = await gateway.tasks.create(TaskDefinition(required_capabilities=["x"]))
    assert pending.status is TaskStatus.PENDING
    subscription = gateway.bus.subscribe(patterns=("*",))

    result = await gateway.registry.ping("a")

    assert (result.status, result.last_seen) == (A.ACTIVE, clock.now)
    # Reactivation is written at once, not batched.
    stored = await gateway.repos.agents.get("default", "a")
    assert stored is not None
    assert (stored.status, stored.last_seen) == (A.ACTIVE, clock.now)
    assert await discover(gateway, "x") == ["a"]
    task = await gateway.tasks.get(pending.task_id)
    assert (task.status, task.agent_id) == (TaskStatus.ASSIGNED, "a")
    events = [(e.type, e.data.get("agent_id")) for e in await collect(subscription)]
    assert events == [("agent.active", "a"), ("task.assigned", "a")]


async def test_going_inactive_releases_assigned_tasks(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "old", "x")
    task = await gateway.tasks.create(TaskDefinition(required_capabilities=["x"]))
    assert task.agent_id == "old"
    clock.advance(ttl(gateway) + 1)
    await add_agent(gateway, "new", "x")

    assert await gateway.registry.sweep() == ["old"]

    moved = await gateway.tasks.get(task.task_id)
    assert (moved.status, moved.agent_id) == (TaskStatus.ASSIGNED, "new")


async def test_ping_of_unknown_or_unregistered_agent_is_not_found(gateway: Gateway) -> None:
    await add_agent(gateway, "a")
    await gateway.registry.ping("a")
    await gateway.registry.unregister("a")

    for agent_id in ("a", "never"):
        with pytest.raises(AgentNotFound):
            await gateway.registry.ping(agent_id)
    assert await gateway.registry.flush() == 0  # the dropped agent's beat is gone too


# -- batched heartbeats ----------------------------------------------------------------


async def test_heartbeats_are_written_in_one_batch_on_flush(
    gateway: Gateway, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_agent(gateway, "a")
    await add_agent(gateway, "b")
    registered_at = clock.now
    touch = gateway.repos.agents.touch
    batches: list[list[tuple[str, str, float]]] = []

    async def counting_touch(beats: Sequence[tuple[str, str, float]]) -> None:
        batches.append(list(beats))
        await touch(beats)

    monkeypatch.setattr(gateway.repos.agents, "touch", counting_touch)

    for _ in range(5):
        clock.advance(1)
        await gateway.registry.ping("a")
    await gateway.registry.ping("b")
    last_ping = clock.now

    stored = await gateway.repos.agents.get("default", "a")
    assert stored is not None and stored.last_seen == registered_at
    assert batches == []
    # Reads see the heartbeat before it is written.
    assert (await gateway.registry.get("a")).last_seen == last_ping

    assert await gateway.registry.flush() == 2

    assert batches == [[("default", "a", last_ping), ("default", "b", last_ping)]]
    for agent_id in ("a", "b"):
        stored = await gateway.repos.agents.get("default", agent_id)
        assert stored is not None and stored.last_seen == last_ping
    assert await gateway.registry.flush() == 0
    assert len(batches) == 1


async def test_failed_flush_keeps_the_heartbeats(
    gateway: Gateway, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_agent(gateway, "a")
    await add_agent(gateway, "b")
    clock.advance(1)
    await gateway.registry.ping("a")
    await gateway.registry.ping("b")
    touch = gateway.repos.agents.touch

    async def down(beats: Sequence[tuple[str, float]]) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(gateway.repos.agents, "touch", down)
    with pytest.raises(StoreUnavailable):
        await gateway.registry.flush()
    monkeypatch.setattr(gateway.repos.agents, "touch", touch)
    clock.advance(1)
    await gateway.registry.ping("b")  # newer than the kept one

    assert await gateway.registry.flush() == 2

    a, b = (
        await gateway.repos.agents.get("default", "a"),
        await gateway.repos.agents.get("default", "b"),
    )
    assert a is not None and a.last_seen == clock.now - 1
    assert b is not None and b.last_seen == clock.now


# -- registration ----------------------------------------------------------------------


async def test_register_writes_before_acknowledging(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a", "y", "x")

    stored = await gateway.repos.agents.get("default", "a")

    assert stored is not None
    assert stored.status is A.ACTIVE
    assert stored.capabilities == ["x", "y"]
    assert stored.last_seen == clock.now


async def test_override_reactivates_an_inactive_agent(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a")
    clock.advance(ttl(gateway) + 1)
    await gateway.registry.sweep()

    card = AgentCard(name="renamed", agent_id="a")
    agent = await gateway.registry.register(card, override=True)

    assert agent.status is A.ACTIVE
    assert await stored_status(gateway, "a") is A.ACTIVE
    assert (await gateway.registry.get("a")).name == "renamed"


# -- events ----------------------------------------------------------------------------


async def test_registration_events_are_published_in_order(gateway: Gateway) -> None:
    subscription = gateway.bus.subscribe(patterns=("agent.*",))

    await add_agent(gateway, "a", "x")
    await add_agent(gateway, "b")
    await gateway.tasks.create(TaskDefinition(required_capabilities=["x"]))  # task.*: not ours
    await gateway.registry.unregister("a")

    events = await collect(subscription)
    assert [(e.type, e.data["agent_id"]) for e in events] == [
        ("agent.registered", "a"),
        ("agent.registered", "b"),
        ("agent.unregistered", "a"),
    ]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] > 0
    assert events[0].data["capabilities"] == ["x"]
    assert all(e.source == "registry" and e.tenant == "default" for e in events)
    assert msgspec.json.decode(msgspec.json.encode(events[0]))["type"] == "agent.registered"


async def test_failed_registration_publishes_nothing(gateway: Gateway) -> None:
    await add_agent(gateway, "a")
    subscription = gateway.bus.subscribe(patterns=("agent.*",))

    with pytest.raises(Exception, match="already registered"):
        await add_agent(gateway, "a")
    with pytest.raises(AgentNotFound):
        await gateway.registry.unregister("ghost")

    assert await collect(subscription) == []


async def test_inactive_event_carries_the_agents_tenant(
    gateway: Gateway, clock: ManualClock
) -> None:
    await add_agent(gateway, "a", tenant="acme")
    subscription = gateway.bus.subscribe(patterns=("agent.*",))
    clock.advance(ttl(gateway) + 1)

    await gateway.registry.sweep()

    [event] = await collect(subscription)
    assert (event.type, event.tenant) == ("agent.inactive", "acme")


# -- kept answers ------------------------------------------------------------------------


async def test_every_change_through_this_worker_shows_in_the_next_answer(
    gateway: Gateway, clock: ManualClock
) -> None:
    await add_agent(gateway, "a", "x")
    assert await discover(gateway, "x") == ["a"]  # kept from here on

    await add_agent(gateway, "b", "x")
    assert await discover(gateway, "x") == ["a", "b"]
    await gateway.registry.unregister("a")
    assert await discover(gateway, "x") == ["b"]

    clock.advance(ttl(gateway) + 1)
    await gateway.registry.sweep()
    assert await discover(gateway, "x") == []
    await gateway.registry.ping("b")  # back from inactive: written at once
    assert await discover(gateway, "x") == ["b"]

    clock.advance(1)
    await gateway.registry.ping("b")
    await gateway.registry.flush()
    listed = await gateway.registry.query(AgentQuery(capabilities=["x"]))
    assert [a.last_seen for a in listed] == [clock.now]


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, clock: ManualClock, **sections: dict[str, Any]
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateways on one SQLite file, as two workers of one deployment."""
    config = make_config(database={"url": f"sqlite:///{tmp_path / 'shared.db'}"}, **sections)
    first, second = create_app(config, clock=clock), create_app(config, clock=clock)
    await first.startup()
    await second.startup()
    try:
        yield first, second
    finally:
        await second.shutdown()
        await first.shutdown()


async def test_another_workers_change_shows_within_the_query_cache_time(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with two_workers(tmp_path, clock) as (first, second):
        kept_for = second.config.registry.query_cache_s
        await add_agent(first, "a", "x")
        assert await discover(second, "x") == ["a"]

        await add_agent(first, "b", "x")  # not through the second worker
        clock.advance(kept_for * 0.5)
        assert await discover(second, "x") == ["a"]  # its kept answer, still young
        clock.advance(kept_for * 0.5 + 0.001)
        assert await discover(second, "x") == ["a", "b"]


async def test_answers_are_not_kept_when_the_query_cache_is_off(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with two_workers(tmp_path, clock, registry={"query_cache_s": 0}) as (first, second):
        await add_agent(first, "a", "x")
        assert await discover(second, "x") == ["a"]
        await add_agent(first, "b", "x")
        assert await discover(second, "x") == ["a", "b"]
