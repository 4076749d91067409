"""The durable event log: changes with their events, gap-free ids, replay, retention, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import msgspec
import pytest

from agentcore.clock import ManualClock
from agentcore.config import EventsConfig
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event, EventFilter
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus
from agentcore.repositories import Repositories, open_repositories
from tests.support import collect, make_task


class Running:
    def __init__(self, repos: Repositories, clock: ManualClock, **config: float) -> None:
        self.hub = MemoryEventBus()
        self.log = EventLog(repos, self.hub, EventsConfig(**config), clock)  # type: ignore[arg-type]
        self.writer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        self.log.open()
        self.writer = asyncio.create_task(self.log.run())
        return self.log

    async def __aexit__(self, *exc: object) -> None:
        await self.log.close()
        assert self.writer is not None
        await asyncio.wait_for(self.writer, 5)


async def test_concurrent_publishes_get_gap_free_increasing_ids(repos: Repositories) -> None:
    clock = ManualClock()
    async with Running(repos, clock) as log:
        events = await asyncio.gather(*(log.publish("task.created", {"n": i}) for i in range(200)))

    assert sorted(e.id for e in events) == list(range(1, 201))
    stored = await repos.events.read(0, 1000)
    assert [e.id for e in stored] == list(range(1, 201))
    assert {e.data["n"] for e in stored} == set(range(200))


async def test_a_change_commits_its_rows_and_events_together(repos: Repositories) -> None:
    runner = Running(repos, ManualClock())
    sub = runner.hub.subscribe()
    async with runner as log, log.change() as change:
        assert await change.repos.tasks.insert(make_task("t1"))
        change.emit("task.created", {"task_id": "t1"})
        change.emit("task.assigned", {"task_id": "t1"})
        await asyncio.sleep(0)
        assert sub.pending() == 0  # nothing reaches subscribers before the commit

    assert await repos.tasks.get("default", "t1") is not None
    stored = await repos.events.read(0, 10)
    assert [(e.id, e.type) for e in stored] == [(1, "task.created"), (2, "task.assigned")]
    assert change.stored == stored
    assert await collect(sub) == stored


async def test_a_change_that_raises_leaves_neither_its_rows_nor_its_events(
    repos: Repositories,
) -> None:
    runner = Running(repos, ManualClock())
    sub = runner.hub.subscribe()
    async with runner as log:
        with pytest.raises(RuntimeError, match="midway"):
            async with log.change() as change:
                assert await change.repos.tasks.insert(make_task("t1"))
                change.emit("task.created", {"task_id": "t1"})
                raise RuntimeError("midway")
        kept = await log.publish("kept", {})

    assert await repos.tasks.get("default", "t1") is None
    assert [e.type for e in await repos.events.read(0, 10)] == ["kept"]
    assert kept.id == 1  # the rolled-back event took no id
    assert await collect(sub) == [kept]


async def test_subscribers_see_committed_events_with_their_ids(repos: Repositories) -> None:
    runner = Running(repos, ManualClock())
    sub = runner.hub.subscribe(patterns=("task.*",))
    async with runner as log:
        first = await log.publish("task.created", {"task_id": "t"}, tenant="acme", source="x")
        await log.publish("agent.registered", {})

    received = await collect(sub)
    assert received == [first]
    assert (first.tenant, first.source, first.timestamp) == ("acme", "x", 1_700_000_000.0)


async def test_events_survive_a_reopen_and_ids_continue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first = open_repositories(url)
    await first.open()
    async with Running(first, ManualClock()) as log:
        await log.publish("a", {})
        await log.publish("b", {})
    await first.close()

    second = open_repositories(url)
    await second.open()
    async with Running(second, ManualClock()) as log:
        third = await log.publish("c", {})
        replayed = await log.replay(0, EventFilter(), 10)
    await second.close()

    assert third.id == 3
    assert [e.type for e in replayed] == ["a", "b", "c"]


async def test_replay_filters_and_pages(repos: Repositories) -> None:
    async with Running(repos, ManualClock()) as log:
        for i in range(2500):
            tenant = "acme" if i % 2 else "default"
            await log.publish(
                "task.progress" if i % 3 else "agent.x", {"task_id": f"t{i % 5}"}, tenant=tenant
            )
        wanted = EventFilter(patterns=("task.*",), tenant="acme", task_id="t1")
        replayed = await log.replay(0, wanted, 10_000)
        after = await log.replay(replayed[3].id, wanted, 2)

    assert replayed and all(wanted.matches(e) for e in replayed)
    expected = [i + 1 for i in range(2500) if i % 2 and i % 3 and i % 5 == 1]
    assert [e.id for e in replayed] == expected
    assert after == replayed[4:6]


async def test_trim_keeps_the_newest_and_drops_the_old(repos: Repositories) -> None:
    clock = ManualClock()
    async with Running(repos, clock, retention_count=5, retention_s=100.0) as log:
        for _ in range(10):
            await log.publish("e", {})
        assert await log.trim() == 5
        clock.advance(500)
        await log.publish("late", {})
        assert await log.trim() == 5  # the rest are now too old
        remaining = await repos.events.read(0, 100)
        last = await log.last_id()

    assert [e.type for e in remaining] == ["late"]
    assert last == 11


async def test_close_commits_what_is_queued_then_refuses(repos: Repositories) -> None:
    runner = Running(repos, ManualClock())
    async with runner as log:
        pending = [asyncio.create_task(log.publish("e", {"n": i})) for i in range(50)]
        await asyncio.sleep(0)
    done = await asyncio.gather(*pending)

    assert len({e.id for e in done}) == 50
    with pytest.raises(StoreUnavailable):
        await runner.log.publish("after", {})


async def test_a_failed_append_fails_its_publishers_only(
    repos: Repositories, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: object, events: Sequence[Event]) -> list[Event]:
        raise StoreUnavailable("disk gone")

    async with Running(repos, ManualClock()) as log:
        with monkeypatch.context() as patch:
            patch.setattr(type(repos.events), "append", broken)
            with pytest.raises(StoreUnavailable):
                await log.publish("lost", {})
        kept = await log.publish("kept", {})

    assert kept.id == 1


class SlowFanout:
    """A fan-out whose sends wait until released (Redis slow or reconnecting)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[int] = []

    async def publish(self, events: Sequence[Event]) -> None:
        await self.release.wait()
        self.sent.extend(e.id for e in events)

    async def run(self, deliver: object) -> None:  # pragma: no cover - not used here
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - not used here
        pass


async def test_publishers_do_not_wait_for_the_fan_out(repos: Repositories) -> None:
    fanout = SlowFanout()
    log = EventLog(repos, MemoryEventBus(), EventsConfig(), ManualClock(), fanout)
    log.open()
    writer = asyncio.create_task(log.run())
    first = await asyncio.wait_for(log.publish("a", {}), 5)  # the fan-out has sent nothing yet
    rest = [await asyncio.wait_for(log.publish("b", {"n": i}), 5) for i in range(20)]
    assert fanout.sent == []
    fanout.release.set()
    await log.close()
    await asyncio.wait_for(writer, 5)  # closing lets the fan-out send what is queued

    assert fanout.sent == [first.id, *(e.id for e in rest)]  # in commit order


class AnsweredLater:
    """Repositories whose appends take their ids at once and answer when the test
    says: as PostgreSQL's one-statement changes, whose answers can arrive in any order."""

    def __init__(self) -> None:
        self.events = self  # the unit's event repository
        self.last = 0
        self.answers: list[asyncio.Event] = []
        self.sent: asyncio.Queue[int] = asyncio.Queue()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AnsweredLater]:
        yield self

    async def append(self, events: Sequence[Event]) -> list[Event]:
        first = self.last + 1
        self.last += len(events)
        gate = asyncio.Event()
        self.answers.append(gate)
        self.sent.put_nowait(first)
        await gate.wait()
        return [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]


async def test_changes_are_handed_off_in_id_order_whichever_commit_answers_first() -> None:
    """A change whose commit has answered waits for the changes sent before it ended
    (they may hold smaller ids), then all go out in id order."""
    repos = AnsweredLater()
    runner = Running(cast(Repositories, repos), ManualClock())
    sub = runner.hub.subscribe()
    async with runner as log:
        first = asyncio.create_task(log.publish("a", {}))
        second = asyncio.create_task(log.publish("b", {}))
        assert [await repos.sent.get(), await repos.sent.get()] == [1, 2]
        repos.answers[1].set()  # "b" answers first
        assert (await second).id == 2
        assert sub.pending() == 0  # "a" is in flight and holds a smaller id
        third = asyncio.create_task(log.publish("c", {}))  # sent after "b" ended
        assert await repos.sent.get() == 3
        repos.answers[2].set()
        assert (await third).id == 3
        assert sub.pending() == 0
        repos.answers[0].set()
        assert (await first).id == 1
    assert [(e.id, e.type) for e in await collect(sub)] == [(1, "a"), (2, "b"), (3, "c")]
