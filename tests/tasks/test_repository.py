"""The task repository contract, written once and run over every backend (``repos``)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agentcore import cursor
from agentcore.errors import InvalidParams
from agentcore.models import TaskQuery, TaskStatus
from agentcore.repositories import Repositories
from tests.support import ids, make_task


async def find(repos: Repositories, **filters: Any) -> list[str]:
    return ids(await repos.tasks.query(TaskQuery(**filters)))


# -- insert, get, update ----------------------------------------------------------


async def test_insert_round_trips_and_rejects_a_duplicate_id(repos: Repositories) -> None:
    task = make_task("t1", deadline=5000.0, agent_id="a")
    task.result = {"answer": [42]}
    task.metadata = {"trace": "abc"}
    assert await repos.tasks.insert(task)
    assert await repos.tasks.get("default", "t1") == task
    assert not await repos.tasks.insert(make_task("t1", priority=9))
    assert await repos.tasks.get("default", "t1") == task
    assert await repos.tasks.count() == {"pending": 1}


async def test_get_unknown_is_none(repos: Repositories) -> None:
    assert await repos.tasks.get("default", "nope") is None


async def test_update_is_compare_and_set(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("t1"))
    first = make_task("t1", status=TaskStatus.ASSIGNED, agent_id="a", deadline=2000.0)
    first.version = 1
    assert await repos.tasks.update(first)
    assert await repos.tasks.get("default", "t1") == first

    stale = make_task("t1", status=TaskStatus.CANCELLED)
    stale.version = 1  # read version 0, which is gone
    assert not await repos.tasks.update(stale)
    skipping = make_task("t1", status=TaskStatus.CANCELLED)
    skipping.version = 3
    assert not await repos.tasks.update(skipping)
    assert await repos.tasks.get("default", "t1") == first

    second = make_task("t1", status=TaskStatus.RUNNING, agent_id="a", deadline=2000.0)
    second.version = 2
    assert await repos.tasks.update(second)
    assert await find(repos, status=TaskStatus.RUNNING, agent_id="a") == ["t1"]
    assert await find(repos, status=TaskStatus.ASSIGNED) == []

    unknown = make_task("nope")
    unknown.version = 1
    assert not await repos.tasks.update(unknown)
    assert await repos.tasks.get("default", "nope") is None


async def test_concurrent_compare_and_set_has_one_winner(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("t1"))
    contenders = []
    for n in range(5):
        task = make_task("t1", status=TaskStatus.ASSIGNED, agent_id=f"a{n}")
        task.version = 1
        contenders.append(repos.tasks.update(task))
    assert sorted(await asyncio.gather(*contenders)) == [False] * 4 + [True]
    stored = await repos.tasks.get("default", "t1")
    assert stored is not None and stored.version == 1
    assert await repos.tasks.loads("default", [f"a{n}" for n in range(5)]) == {stored.agent_id: 1}


# -- query --------------------------------------------------------------------------


async def test_query_filters(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("t1", created_at=10.0, type="a", priority=8))
    await repos.tasks.insert(
        make_task("t2", created_at=20.0, status=TaskStatus.ASSIGNED, agent_id="x")
    )
    await repos.tasks.insert(make_task("t3", created_at=30.0, tenant="other", type="a"))
    await repos.tasks.insert(
        make_task("t4", created_at=40.0, status=TaskStatus.RUNNING, agent_id="x", priority=10)
    )
    assert await find(repos) == ["t1", "t2", "t3", "t4"]
    assert await find(repos, status=TaskStatus.PENDING) == ["t1", "t3"]
    assert await find(repos, agent_id="x") == ["t2", "t4"]
    assert await find(repos, type="a") == ["t1", "t3"]
    assert await find(repos, priority=8) == ["t1"]
    assert await find(repos, priority="high") == ["t1"]
    assert await find(repos, priority="critical") == ["t4"]
    assert await find(repos, priority="normal") == ["t2", "t3"]
    assert await find(repos, created_after=20.0) == ["t2", "t3", "t4"]
    assert await find(repos, created_before=30.0) == ["t1", "t2"]
    assert await find(repos, created_after=20.0, created_before=40.0) == ["t2", "t3"]
    assert await find(repos, tenant="other") == ["t3"]
    assert await find(repos, tenant="default", type="a") == ["t1"]
    assert await find(repos, tenant="default", status=TaskStatus.PENDING) == ["t1"]
    assert await find(repos, tenant="default", agent_id="x", priority=10) == ["t4"]
    assert await find(repos, tenant="nobody") == []


async def test_query_orders_by_created_at_then_id_and_paginates(repos: Repositories) -> None:
    for task_id, created_at in [("c", 2.0), ("b", 1.0), ("a", 2.0), ("d", 3.0)]:
        await repos.tasks.insert(make_task(task_id, created_at=created_at))
    assert await find(repos) == ["b", "a", "c", "d"]
    assert await find(repos, limit=2) == ["b", "a"]
    assert await find(repos, limit=2, offset=2) == ["c", "d"]
    assert await find(repos, offset=4) == []


async def test_query_continues_after_a_cursor(repos: Repositories) -> None:
    for task_id, created_at in [("c", 2.0), ("b", 1.0), ("a", 2.0), ("d", 3.0)]:
        await repos.tasks.insert(make_task(task_id, created_at=created_at))
    assert await find(repos, after=cursor.encode(1.0, "b")) == ["a", "c", "d"]
    assert await find(repos, after=cursor.encode(2.0, "a"), limit=1) == ["c"]
    assert await find(repos, after=cursor.encode(2, "c")) == ["d"]  # an integer time
    assert await find(repos, after=cursor.encode(3.0, "d")) == []
    assert await find(repos, after=cursor.encode(0.5, "zz"), tenant="default") == [
        "b",
        "a",
        "c",
        "d",
    ]
    for bad in ("not a cursor", cursor.encode("a name", "b")):
        with pytest.raises(InvalidParams):
            await find(repos, after=bad)


async def test_pending_highest_priority_then_oldest_first(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("low-old", priority=3, created_at=1.0))
    await repos.tasks.insert(make_task("high-new", priority=8, created_at=5.0))
    await repos.tasks.insert(make_task("high-old", priority=8, created_at=2.0))
    await repos.tasks.insert(make_task("high-old-b", priority=8, created_at=2.0))
    await repos.tasks.insert(make_task("critical", priority=10, created_at=9.0))
    await repos.tasks.insert(
        make_task("assigned", priority=10, created_at=0.0, status=TaskStatus.ASSIGNED)
    )
    assert ids(await repos.tasks.pending(10)) == [
        "critical",
        "high-old",
        "high-old-b",
        "high-new",
        "low-old",
    ]
    assert ids(await repos.tasks.pending(2)) == ["critical", "high-old"]


async def test_due_are_active_with_a_passed_deadline(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("assigned", status=TaskStatus.ASSIGNED, deadline=10.0))
    await repos.tasks.insert(make_task("running", status=TaskStatus.RUNNING, deadline=20.0))
    await repos.tasks.insert(make_task("later", status=TaskStatus.RUNNING, deadline=100.0))
    await repos.tasks.insert(make_task("no-deadline", status=TaskStatus.RUNNING))
    await repos.tasks.insert(make_task("pending", deadline=1.0))
    await repos.tasks.insert(make_task("done", status=TaskStatus.COMPLETED, deadline=1.0))
    assert ids(await repos.tasks.due(now=50.0, limit=10)) == ["assigned", "running"]
    assert ids(await repos.tasks.due(now=20.0, limit=10)) == ["assigned"]
    assert ids(await repos.tasks.due(now=10.0, limit=10)) == []
    assert ids(await repos.tasks.due(now=1000.0, limit=2)) == ["assigned", "running"]


# -- load and counts ------------------------------------------------------------------


async def test_loads_count_assigned_and_running(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    await repos.tasks.insert(make_task("2", status=TaskStatus.RUNNING, agent_id="a"))
    await repos.tasks.insert(make_task("3", status=TaskStatus.COMPLETED, agent_id="a"))
    await repos.tasks.insert(make_task("4", status=TaskStatus.RUNNING, agent_id="b"))
    await repos.tasks.insert(make_task("5", status=TaskStatus.RUNNING, agent_id="c"))
    await repos.tasks.insert(make_task("6", status=TaskStatus.FAILED, agent_id="d"))
    assert await repos.tasks.loads("default", ["a", "b", "d", "e", "a"]) == {"a": 2, "b": 1}
    assert await repos.tasks.loads("default", []) == {}
    many = [f"agent-{n}" for n in range(1200)] + ["c"]  # more ids than one IN list takes
    assert await repos.tasks.loads("default", many) == {"c": 1}


async def test_loads_follow_updates(repos: Repositories) -> None:
    await repos.tasks.insert(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    task = await repos.tasks.get("default", "1")
    assert task is not None
    moved = msgspec.structs.replace(task, agent_id="b", version=task.version + 1)
    assert await repos.tasks.update(moved)
    assert await repos.tasks.loads("default", ["a", "b"]) == {"b": 1}
    done = msgspec.structs.replace(moved, status=TaskStatus.COMPLETED, version=moved.version + 1)
    assert await repos.tasks.update(done)
    assert await repos.tasks.loads("default", ["a", "b"]) == {}


async def test_count_by_status(repos: Repositories) -> None:
    assert await repos.tasks.count() == {}
    await repos.tasks.insert(make_task("1"))
    await repos.tasks.insert(make_task("2"))
    await repos.tasks.insert(make_task("3", status=TaskStatus.COMPLETED))
    assert await repos.tasks.count() == {"pending": 2, "completed": 1}
    task = await repos.tasks.get("default", "1")
    assert task is not None
    assert await repos.tasks.update(
        msgspec.structs.replace(task, status=TaskStatus.COMPLETED, version=task.version + 1)
    )
    assert await repos.tasks.count() == {"pending": 1, "completed": 2}


# -- tenants --------------------------------------------------------------------------


async def test_the_same_id_in_two_tenants_is_two_tasks(repos: Repositories) -> None:
    """Ids are scoped by tenant: an insert, read or compare-and-set meets only its own."""
    mine = make_task("same", type="mine", tenant="a")
    theirs = make_task("same", type="theirs", tenant="b")
    assert await repos.tasks.insert(mine)
    assert await repos.tasks.insert(theirs)
    assert not await repos.tasks.insert(make_task("same", tenant="b"))
    assert await repos.tasks.get("a", "same") == mine
    assert await repos.tasks.get("b", "same") == theirs
    assert await repos.tasks.get("default", "same") is None
    assert [t.type for t in await repos.tasks.query(TaskQuery(tenant="b"))] == ["theirs"]

    changed = msgspec.structs.replace(mine, status=TaskStatus.CANCELLED, version=mine.version + 1)
    assert await repos.tasks.update(changed)
    assert await repos.tasks.get("a", "same") == changed
    assert await repos.tasks.get("b", "same") == theirs
    # The other tenant's task kept its version: a compare-and-set from the new one misses.
    assert not await repos.tasks.update(
        msgspec.structs.replace(theirs, version=changed.version + 1)
    )
    assert await repos.tasks.count() == {"pending": 1, "cancelled": 1}
