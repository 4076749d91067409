"""The Store contract, written once and run over every backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentcore import apikeys
from agentcore.apikeys import ApiKey
from agentcore.errors import ConfigError, StoreUnavailable
from agentcore.models import (
    Agent,
    AgentCard,
    AgentQuery,
    AgentStatus,
    Capability,
    Task,
    TaskQuery,
    TaskStatus,
)
from agentcore.store import Store, open_store
from agentcore.store.postgres import PostgresDatabase
from agentcore.store.sql import MIGRATIONS, Database, migrate, migration_statements
from agentcore.store.sqlite import SqliteDatabase

from .conftest import create_pg_database, drop_pg_database


def make_agent(
    agent_id: str,
    *,
    name: str | None = None,
    capabilities: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    status: AgentStatus = AgentStatus.ACTIVE,
    tenant: str = "default",
    last_seen: float = 100.0,
) -> Agent:
    card = AgentCard(
        name=name or agent_id,
        agent_id=agent_id,
        capabilities=[*capabilities[:1], *(Capability(name=c) for c in capabilities[1:])],
        tags=list(tags),
        metadata={"nested": {"list": [1, 2.5, None]}},
    )
    return Agent(
        agent_id=agent_id,
        name=name or agent_id,
        version="1.0.0",
        status=status,
        capabilities=list(capabilities),
        tags=list(tags),
        card=card,
        tenant=tenant,
        registered_at=10.0,
        updated_at=20.0,
        last_seen=last_seen,
    )


def make_task(
    task_id: str,
    *,
    status: TaskStatus = TaskStatus.PENDING,
    priority: int = 5,
    created_at: float = 1000.0,
    agent_id: str | None = None,
    deadline: float | None = None,
    type: str = "generic",
    tenant: str = "default",
) -> Task:
    return Task(
        task_id=task_id,
        type=type,
        title=f"title {task_id}",
        description="",
        required_capabilities=["x"],
        parameters={"k": [1, "two", {"three": 3.0}]},
        input={"text": "hi"},
        priority=priority,
        status=status,
        agent_id=agent_id,
        deadline=deadline,
        tenant=tenant,
        created_at=created_at,
        updated_at=created_at,
    )


def ids(items: list[Agent] | list[Task]) -> list[str]:
    return [i.agent_id if isinstance(i, Agent) else i.task_id for i in items]


async def find(store: Store, **filters: Any) -> list[str]:
    return ids(await store.query_agents(AgentQuery(**filters)))


async def find_tasks(store: Store, **filters: Any) -> list[str]:
    return ids(await store.query_tasks(TaskQuery(**filters)))


# -- lifecycle ----------------------------------------------------------------


async def test_check_passes_when_open(store: Store) -> None:
    await store.check()


async def test_check_after_close_raises_store_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.check()
    await store.close()  # idempotent


async def test_open_is_idempotent_over_an_existing_schema(store_url: str) -> None:
    first = open_store(store_url)
    await first.open()
    second = open_store(store_url)
    await second.open()
    try:
        await second.check()
    finally:
        await second.close()
        await first.close()


# -- agents -------------------------------------------------------------------


async def test_put_agent_round_trips(store: Store) -> None:
    agent = make_agent("a1", capabilities=("search", "code"), tags=("b", "a"))
    assert await store.put_agent(agent, replace=False)
    assert await store.get_agent("a1") == agent


async def test_get_unknown_agent_is_none(store: Store) -> None:
    assert await store.get_agent("nope") is None


async def test_put_agent_without_replace_writes_nothing_when_it_exists(store: Store) -> None:
    original = make_agent("a1", name="first", capabilities=("x",), tags=("t1",))
    assert await store.put_agent(original, replace=False)
    other = make_agent("a1", name="second", capabilities=("y",), tags=("t2",))
    assert not await store.put_agent(other, replace=False)
    assert await store.get_agent("a1") == original
    assert await find(store, capabilities=["x"]) == ["a1"]
    assert await find(store, capabilities=["y"]) == []
    assert await find(store, tags=["t2"]) == []


async def test_put_agent_with_replace_overwrites_row_and_labels(store: Store) -> None:
    await store.put_agent(make_agent("a1", capabilities=("x", "y"), tags=("t1",)), replace=False)
    replacement = make_agent("a1", name="renamed", capabilities=("z",), tags=("t2",))
    assert await store.put_agent(replacement, replace=True)
    assert await store.get_agent("a1") == replacement
    assert await find(store, capabilities=["x"]) == []
    assert await find(store, capabilities=["z"]) == ["a1"]
    assert await find(store, tags=["t1"]) == []
    assert await find(store, tags=["t2"]) == ["a1"]


async def test_put_agent_with_replace_inserts_a_new_agent(store: Store) -> None:
    assert await store.put_agent(make_agent("a1", capabilities=("x",)), replace=True)
    assert await find(store, capabilities=["x"]) == ["a1"]


async def test_duplicate_labels_are_stored_once(store: Store) -> None:
    agent = make_agent("a1", capabilities=("x", "x"), tags=("t", "t"))
    assert await store.put_agent(agent, replace=False)
    assert await store.get_agent("a1") == agent
    assert await find(store, capabilities=["x"], tags=["t"]) == ["a1"]


async def test_delete_agent_removes_it_and_its_labels(store: Store) -> None:
    await store.put_agent(make_agent("a1", capabilities=("x",), tags=("t",)), replace=False)
    assert await store.delete_agent("a1")
    assert await store.get_agent("a1") is None
    assert not await store.delete_agent("a1")
    # A new agent with the same id does not inherit the old labels.
    await store.put_agent(make_agent("a1"), replace=False)
    assert await find(store, capabilities=["x"]) == []
    assert await find(store, tags=["t"]) == []


async def test_query_agents_needs_all_capabilities(store: Store) -> None:
    await store.put_agent(make_agent("a", capabilities=("x", "y")), replace=False)
    await store.put_agent(make_agent("b", capabilities=("x",)), replace=False)
    await store.put_agent(make_agent("c", capabilities=("y", "z")), replace=False)
    assert await find(store, capabilities=["x"]) == ["a", "b"]
    assert await find(store, capabilities=["y", "x"]) == ["a"]
    assert await find(store, capabilities=["x", "y", "x"]) == ["a"]
    assert await find(store, capabilities=["x", "z"]) == []
    assert await find(store, capabilities=["unknown"]) == []
    assert await find(store) == ["a", "b", "c"]


async def test_query_agents_needs_all_tags(store: Store) -> None:
    await store.put_agent(make_agent("a", tags=("prod", "eu")), replace=False)
    await store.put_agent(make_agent("b", tags=("prod",)), replace=False)
    await store.put_agent(make_agent("c", tags=("eu",), capabilities=("x",)), replace=False)
    assert await find(store, tags=["prod"]) == ["a", "b"]
    assert await find(store, tags=["eu", "prod"]) == ["a"]
    assert await find(store, tags=["eu"], capabilities=["x"]) == ["c"]


async def test_query_agents_by_status_and_tenant(store: Store) -> None:
    await store.put_agent(make_agent("a", tenant="t1"), replace=False)
    await store.put_agent(make_agent("b", tenant="t2"), replace=False)
    await store.put_agent(make_agent("c", tenant="t1", status=AgentStatus.INACTIVE), replace=False)
    assert await find(store, status=AgentStatus.ACTIVE) == ["a", "b"]
    assert await find(store, status=AgentStatus.INACTIVE) == ["c"]
    assert await find(store, tenant="t1") == ["a", "c"]
    assert await find(store, tenant="t1", status=AgentStatus.ACTIVE) == ["a"]
    assert await find(store, tenant="nobody") == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["a1", "a2", "a3", "a4", "a5", "a6"]),
        ("ALPHA-?", ["a1"]),
        ("alpha*", ["a1", "a2"]),
        ("*-22", ["a2"]),
        ("?eta", ["a3"]),
        ("100%_*", ["a4"]),
        ("100*", ["a4", "a5"]),
        ("a_pha*", []),
        ("%", []),
        ("back\\slash", ["a6"]),
        ("beta", ["a3"]),
        ("bet", []),
    ],
)
async def test_query_agents_by_name_glob(store: Store, pattern: str, expected: list[str]) -> None:
    names = {
        "a1": "Alpha-1",
        "a2": "alpha-22",
        "a3": "BETA",
        "a4": "100%_done",
        "a5": "100abdone",
        "a6": "back\\slash",
    }
    for agent_id, name in names.items():
        await store.put_agent(make_agent(agent_id, name=name), replace=False)
    assert sorted(await find(store, name_pattern=pattern)) == expected


async def test_query_agents_orders_by_name_then_id_and_paginates(store: Store) -> None:
    for agent_id, name in [("z", "b"), ("y", "a"), ("x", "b"), ("w", "c"), ("v", "a")]:
        await store.put_agent(make_agent(agent_id, name=name), replace=False)
    assert await find(store) == ["v", "y", "x", "z", "w"]
    assert await find(store, limit=2) == ["v", "y"]
    assert await find(store, limit=2, offset=2) == ["x", "z"]
    assert await find(store, limit=2, offset=4) == ["w"]
    assert await find(store, offset=5) == []


async def test_touch_agents_sets_last_seen_and_reactivates(store: Store) -> None:
    await store.put_agent(make_agent("on", last_seen=1.0), replace=False)
    await store.put_agent(
        make_agent("off", last_seen=1.0, status=AgentStatus.INACTIVE), replace=False
    )
    await store.touch_agents([("on", 50.0), ("off", 60.0), ("unknown", 70.0)])
    on, off = await store.get_agent("on"), await store.get_agent("off")
    assert on is not None and off is not None
    assert (on.last_seen, on.status, on.updated_at) == (50.0, AgentStatus.ACTIVE, 20.0)
    assert (off.last_seen, off.status, off.updated_at) == (60.0, AgentStatus.ACTIVE, 60.0)
    assert await store.get_agent("unknown") is None
    await store.touch_agents([])


async def test_touch_agents_accepts_integer_timestamps(store: Store) -> None:
    await store.put_agent(make_agent("a"), replace=False)
    await store.touch_agents([("a", 123)])
    agent = await store.get_agent("a")
    assert agent is not None and agent.last_seen == 123.0


async def test_expire_agents_marks_stale_active_agents_inactive(store: Store) -> None:
    await store.put_agent(make_agent("stale", last_seen=10.0), replace=False)
    await store.put_agent(make_agent("edge", last_seen=50.0), replace=False)
    await store.put_agent(make_agent("fresh", last_seen=90.0), replace=False)
    await store.put_agent(
        make_agent("gone", last_seen=1.0, status=AgentStatus.INACTIVE), replace=False
    )
    assert await store.expire_agents(cutoff=50.0, now=100.0) == [("stale", "default")]
    stale = await store.get_agent("stale")
    assert stale is not None
    assert (stale.status, stale.updated_at, stale.last_seen) == (
        AgentStatus.INACTIVE,
        100.0,
        10.0,
    )
    gone = await store.get_agent("gone")
    assert gone is not None and gone.updated_at == 20.0
    assert sorted(await store.expire_agents(cutoff=95.0, now=101.0)) == [
        ("edge", "default"),
        ("fresh", "default"),
    ]
    assert await store.expire_agents(cutoff=1000.0, now=102.0) == []


async def test_count_agents_by_status(store: Store) -> None:
    assert await store.count_agents() == {}
    await store.put_agent(make_agent("a"), replace=False)
    await store.put_agent(make_agent("b"), replace=False)
    await store.put_agent(make_agent("c", status=AgentStatus.INACTIVE), replace=False)
    assert await store.count_agents() == {"active": 2, "inactive": 1}


# -- tasks --------------------------------------------------------------------


async def test_insert_task_round_trips_and_rejects_a_duplicate_id(store: Store) -> None:
    task = make_task("t1", deadline=5000.0, agent_id="a")
    task.result = {"answer": [42]}
    task.metadata = {"trace": "abc"}
    assert await store.insert_task(task)
    assert await store.get_task("t1") == task
    assert not await store.insert_task(make_task("t1", priority=9))
    assert await store.get_task("t1") == task


async def test_get_unknown_task_is_none(store: Store) -> None:
    assert await store.get_task("nope") is None


async def test_update_task_is_compare_and_set(store: Store) -> None:
    await store.insert_task(make_task("t1"))
    first = make_task("t1", status=TaskStatus.ASSIGNED, agent_id="a", deadline=2000.0)
    first.version = 1
    assert await store.update_task(first)
    assert await store.get_task("t1") == first

    stale = make_task("t1", status=TaskStatus.CANCELLED)
    stale.version = 1  # read version 0, which is gone
    assert not await store.update_task(stale)
    skipping = make_task("t1", status=TaskStatus.CANCELLED)
    skipping.version = 3
    assert not await store.update_task(skipping)
    assert await store.get_task("t1") == first

    second = make_task("t1", status=TaskStatus.RUNNING, agent_id="a", deadline=2000.0)
    second.version = 2
    assert await store.update_task(second)
    assert await find_tasks(store, status=TaskStatus.RUNNING, agent_id="a") == ["t1"]

    unknown = make_task("nope")
    unknown.version = 1
    assert not await store.update_task(unknown)


async def test_concurrent_compare_and_set_has_one_winner(store: Store) -> None:
    await store.insert_task(make_task("t1"))
    contenders = []
    for n in range(5):
        task = make_task("t1", status=TaskStatus.ASSIGNED, agent_id=f"a{n}")
        task.version = 1
        contenders.append(store.update_task(task))
    assert sorted(await asyncio.gather(*contenders)) == [False] * 4 + [True]


async def test_query_tasks_filters(store: Store) -> None:
    await store.insert_task(make_task("t1", created_at=10.0, type="a", priority=8))
    await store.insert_task(
        make_task("t2", created_at=20.0, status=TaskStatus.ASSIGNED, agent_id="x")
    )
    await store.insert_task(make_task("t3", created_at=30.0, tenant="other", type="a"))
    await store.insert_task(
        make_task("t4", created_at=40.0, status=TaskStatus.RUNNING, agent_id="x", priority=10)
    )
    assert await find_tasks(store) == ["t1", "t2", "t3", "t4"]
    assert await find_tasks(store, status=TaskStatus.PENDING) == ["t1", "t3"]
    assert await find_tasks(store, agent_id="x") == ["t2", "t4"]
    assert await find_tasks(store, type="a") == ["t1", "t3"]
    assert await find_tasks(store, priority=8) == ["t1"]
    assert await find_tasks(store, priority="high") == ["t1"]
    assert await find_tasks(store, priority="critical") == ["t4"]
    assert await find_tasks(store, priority="normal") == ["t2", "t3"]
    assert await find_tasks(store, created_after=20.0) == ["t2", "t3", "t4"]
    assert await find_tasks(store, created_before=30.0) == ["t1", "t2"]
    assert await find_tasks(store, created_after=20.0, created_before=40.0) == ["t2", "t3"]
    assert await find_tasks(store, tenant="other") == ["t3"]
    assert await find_tasks(store, tenant="default", type="a") == ["t1"]


async def test_query_tasks_orders_by_created_at_then_id_and_paginates(store: Store) -> None:
    for task_id, created_at in [("c", 2.0), ("b", 1.0), ("a", 2.0), ("d", 3.0)]:
        await store.insert_task(make_task(task_id, created_at=created_at))
    assert await find_tasks(store) == ["b", "a", "c", "d"]
    assert await find_tasks(store, limit=2) == ["b", "a"]
    assert await find_tasks(store, limit=2, offset=2) == ["c", "d"]
    assert await find_tasks(store, offset=4) == []


async def test_pending_tasks_highest_priority_then_oldest_first(store: Store) -> None:
    await store.insert_task(make_task("low-old", priority=3, created_at=1.0))
    await store.insert_task(make_task("high-new", priority=8, created_at=5.0))
    await store.insert_task(make_task("high-old", priority=8, created_at=2.0))
    await store.insert_task(make_task("high-old-b", priority=8, created_at=2.0))
    await store.insert_task(make_task("critical", priority=10, created_at=9.0))
    await store.insert_task(
        make_task("assigned", priority=10, created_at=0.0, status=TaskStatus.ASSIGNED)
    )
    assert ids(await store.pending_tasks(10)) == [
        "critical",
        "high-old",
        "high-old-b",
        "high-new",
        "low-old",
    ]
    assert ids(await store.pending_tasks(2)) == ["critical", "high-old"]


async def test_due_tasks_are_active_with_a_passed_deadline(store: Store) -> None:
    await store.insert_task(make_task("assigned", status=TaskStatus.ASSIGNED, deadline=10.0))
    await store.insert_task(make_task("running", status=TaskStatus.RUNNING, deadline=20.0))
    await store.insert_task(make_task("later", status=TaskStatus.RUNNING, deadline=100.0))
    await store.insert_task(make_task("no-deadline", status=TaskStatus.RUNNING))
    await store.insert_task(make_task("pending", deadline=1.0))
    await store.insert_task(make_task("done", status=TaskStatus.COMPLETED, deadline=1.0))
    assert sorted(ids(await store.due_tasks(now=50.0, limit=10))) == ["assigned", "running"]
    assert ids(await store.due_tasks(now=20.0, limit=10)) == ["assigned"]
    assert len(await store.due_tasks(now=1000.0, limit=2)) == 2


async def test_agent_loads_counts_assigned_and_running(store: Store) -> None:
    await store.insert_task(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    await store.insert_task(make_task("2", status=TaskStatus.RUNNING, agent_id="a"))
    await store.insert_task(make_task("3", status=TaskStatus.COMPLETED, agent_id="a"))
    await store.insert_task(make_task("4", status=TaskStatus.RUNNING, agent_id="b"))
    await store.insert_task(make_task("5", status=TaskStatus.RUNNING, agent_id="c"))
    await store.insert_task(make_task("6", status=TaskStatus.FAILED, agent_id="d"))
    assert await store.agent_loads(["a", "b", "d", "e", "a"]) == {"a": 2, "b": 1}
    assert await store.agent_loads([]) == {}
    many = [f"agent-{n}" for n in range(1200)] + ["c"]
    assert await store.agent_loads(many) == {"c": 1}


async def test_least_loaded_agent_picks_fewest_active_tasks_then_name(store: Store) -> None:
    await store.put_agent(make_agent("a1", name="zed", capabilities=("x", "y")), replace=False)
    await store.put_agent(make_agent("a2", name="amy", capabilities=("x", "y")), replace=False)
    await store.put_agent(make_agent("a3", name="bob", capabilities=("x",)), replace=False)
    await store.put_agent(
        make_agent("a4", name="al", capabilities=("x", "y"), status=AgentStatus.INACTIVE),
        replace=False,
    )
    await store.put_agent(
        make_agent("a5", name="aa", capabilities=("x", "y"), tenant="other"), replace=False
    )
    # Ties go by name: amy before zed.
    assert await store.least_loaded_agent(["x", "y"], "default") == "a2"
    await store.insert_task(make_task("1", status=TaskStatus.RUNNING, agent_id="a2"))
    await store.insert_task(make_task("2", status=TaskStatus.COMPLETED, agent_id="a1"))
    # amy is busy, zed's completed task does not count; bob lacks y, al is inactive.
    assert await store.least_loaded_agent(["x", "y"], "default") == "a1"
    assert await store.least_loaded_agent(["x"], "default") == "a3"
    assert await store.least_loaded_agent([], "other") == "a5"
    assert await store.least_loaded_agent(["nope"], "default") is None


async def loads_by_column(store: Store) -> dict[str, int]:
    """The stored per-agent counter, read the way least_loaded_agent orders by it."""
    rows = await store._db.fetch("SELECT id, active_tasks FROM agents ORDER BY id")  # type: ignore[attr-defined]
    return {str(row[0]): int(row[1]) for row in rows}


async def test_agent_load_counter_follows_every_task_write(store: Store) -> None:
    """The counter least_loaded_agent orders by equals the count of active tasks
    after inserts, transitions, reassignment, deletion of the agent and re-registration."""
    for agent_id in ("a", "b"):
        await store.put_agent(make_agent(agent_id, capabilities=("x",)), replace=False)
    await store.insert_task(make_task("1", status=TaskStatus.ASSIGNED, agent_id="a"))
    await store.insert_task(make_task("2", status=TaskStatus.ASSIGNED, agent_id="a"))
    await store.insert_task(make_task("3", status=TaskStatus.PENDING))
    await store.insert_task(make_task("4", status=TaskStatus.COMPLETED, agent_id="b"))
    assert await loads_by_column(store) == {"a": 2, "b": 0}

    async def move(task_id: str, **changes: Any) -> None:
        task = await store.get_task(task_id)
        assert task is not None
        assert await store.update_task(
            msgspec.structs.replace(task, version=task.version + 1, **changes)
        )

    await move("1", status=TaskStatus.RUNNING)  # still active: no change
    await move("1", progress=50.0)  # neither status nor agent: no change
    assert await loads_by_column(store) == {"a": 2, "b": 0}
    await move("2", agent_id="b")  # reassigned
    assert await loads_by_column(store) == {"a": 1, "b": 1}
    await move("3", status=TaskStatus.ASSIGNED, agent_id="b")  # pending -> assigned
    await move("1", status=TaskStatus.COMPLETED)  # active -> done
    assert await loads_by_column(store) == {"a": 0, "b": 2}
    assert await store.least_loaded_agent(["x"], "default") == "a"

    # b's tasks outlive b; registering b again starts from them, replacing keeps them.
    assert await store.delete_agent("b")
    await store.put_agent(make_agent("b", capabilities=("x",)), replace=False)
    assert await loads_by_column(store) == {"a": 0, "b": 2}
    await store.put_agent(make_agent("b", capabilities=("x", "y")), replace=True)
    assert await loads_by_column(store) == {"a": 0, "b": 2}
    assert await store.agent_loads(["a", "b"]) == {"b": 2}


async def test_count_tasks_by_status(store: Store) -> None:
    assert await store.count_tasks() == {}
    await store.insert_task(make_task("1"))
    await store.insert_task(make_task("2"))
    await store.insert_task(make_task("3", status=TaskStatus.COMPLETED))
    assert await store.count_tasks() == {"pending": 2, "completed": 1}


async def test_concurrent_calls_share_the_store_safely(store: Store) -> None:
    agents = [make_agent(f"a{n:02}", capabilities=("x",)) for n in range(30)]
    await asyncio.gather(
        *(store.put_agent(agent, replace=n % 2 == 0) for n, agent in enumerate(agents)),
        *(store.insert_task(make_task(f"t{n:02}")) for n in range(30)),
        *(store.touch_agents([(f"a{n:02}", 500.0)]) for n in range(30)),
        *(store.query_agents(AgentQuery(capabilities=["x"])) for _ in range(10)),
    )
    assert len(await find(store, capabilities=["x"])) == 30
    assert await store.count_tasks() == {"pending": 30}


# -- drivers ------------------------------------------------------------------


def database_for(url: str) -> Database:
    if url.startswith("postgresql"):
        return PostgresDatabase(url, max_size=2)
    return SqliteDatabase(url.removeprefix("sqlite://").removeprefix("/"))


async def test_transaction_commits_or_rolls_back(store_url: str) -> None:
    db = database_for(store_url)
    await db.open()
    try:
        await db.execute("DROP TABLE IF EXISTS probe")
        await db.execute("CREATE TABLE probe (n INTEGER NOT NULL)")
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (n) VALUES ($1)", 1)
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.executemany("INSERT INTO probe (n) VALUES ($1)", [(2,), (3,)])
                raise RuntimeError("abort")
        assert [tuple(row) for row in await db.fetch("SELECT n FROM probe")] == [(1,)]
        assert await db.execute("UPDATE probe SET n = n + 1") == 1
        with pytest.raises(Exception) as bad_sql:
            await db.execute("SELEC 1")
        assert not isinstance(bad_sql.value, StoreUnavailable)
        await db.execute("DROP TABLE probe")
    finally:
        await db.close()


# -- backend specifics --------------------------------------------------------


async def test_sqlite_file_store_keeps_data_across_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/agentcore.db"
    agent = make_agent("durable", capabilities=("x",), tags=("t",))
    task = make_task("t1")
    first = open_store(url)
    await first.open()
    assert await first.put_agent(agent, replace=False)
    assert await first.insert_task(task)
    await first.close()

    second = open_store(url)
    await second.open()
    try:
        assert await second.get_agent("durable") == agent
        assert await find(second, capabilities=["x"], tags=["t"]) == ["durable"]
        assert await second.get_task("t1") == task
    finally:
        await second.close()


async def test_sqlite_relative_path_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///var/agentcore.db")
    await store.open()
    await store.close()
    assert (tmp_path / "var" / "agentcore.db").is_file()


async def test_migrations_record_the_schema_version(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "m.db"))
    await db.open()
    try:
        assert await migrate(db) == len(MIGRATIONS)
        assert await migrate(db) == len(MIGRATIONS)
        rows = await db.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [row[0] for row in rows] == list(range(1, len(MIGRATIONS) + 1))
        await db.execute("INSERT INTO schema_version (version) VALUES ($1)", 999)
        with pytest.raises(ConfigError):
            await migrate(db)
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An open database with no schema at all, of each dialect."""
    if request.param == "sqlite":
        database: Database = SqliteDatabase(str(tmp_path / "fresh.db"))
        await database.open()
        yield database
        await database.close()
        return
    name, url = await create_pg_database()
    database = PostgresDatabase(url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()
        await drop_pg_database(name)


async def test_migration_backfills_agent_loads(db: Database) -> None:
    """A database from before the load counter gets it counted from its tasks."""
    previous = len(MIGRATIONS) - 1
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        for version in range(1, previous + 1):
            for statement in migration_statements(version, tx.dialect):
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    for agent_id in ("a", "b"):
        await db.execute(
            "INSERT INTO agents (id, tenant, name, version, status, card, capabilities, tags, "
            "registered_at, updated_at, last_seen) "
            "VALUES ($1, 'default', $1, '1', 'active', '{}', '[]', '[]', 1, 1, 1)",
            agent_id,
        )
    for n, (agent_id, status) in enumerate(
        [("a", "assigned"), ("a", "running"), ("a", "completed"), ("b", "failed")]
    ):
        await db.execute(
            "INSERT INTO tasks (id, tenant, type, status, priority, agent_id, created_at, "
            "updated_at, deadline, version, body) "
            "VALUES ($1, 'default', 't', $2, 5, $3, 1, 1, NULL, 1, '{}')",
            str(n), status, agent_id,
        )

    assert await migrate(db) == len(MIGRATIONS)

    rows = await db.fetch("SELECT id, active_tasks FROM agents ORDER BY id")
    assert [(str(r[0]), int(r[1])) for r in rows] == [("a", 2), ("b", 0)]
    # The triggers are in place from then on.
    await db.execute("UPDATE tasks SET status = 'completed' WHERE id = '0'")
    rows = await db.fetch("SELECT active_tasks FROM agents WHERE id = 'a'")
    assert int(rows[0][0]) == 1


async def test_sqlite_file_stores_migrate_concurrently(tmp_path: Path) -> None:
    stores = [open_store(f"sqlite:///{tmp_path}/race.db") for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await asyncio.gather(*(store.check() for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))


@pytest.mark.postgres
async def test_postgres_stores_migrate_concurrently() -> None:
    name, url = await create_pg_database()
    try:
        stores = [open_store(url) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        await stores[0].put_agent(make_agent("a"), replace=False)
        assert await stores[3].get_agent("a") is not None
        await asyncio.gather(*(store.close() for store in stores))
    finally:
        await drop_pg_database(name)


async def test_unreachable_postgres_raises_store_unavailable() -> None:
    store = open_store("postgres://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable):
        await store.open()


@pytest.mark.postgres
async def test_unknown_postgres_database_raises_store_unavailable(postgres_url: str) -> None:
    store = open_store(postgres_url.rpartition("/")[0] + "/agentcore_test_missing")
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_unopenable_sqlite_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path}/file/agentcore.db")
    with pytest.raises(StoreUnavailable):
        await store.open()
    (tmp_path / "dir.db").mkdir()
    store = open_store(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(StoreUnavailable):
        await store.open()


async def test_a_closed_sqlite_store_is_unavailable() -> None:
    store = open_store("sqlite://:memory:")
    with pytest.raises(StoreUnavailable):
        await store.check()  # never opened
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_agent("a")


@pytest.mark.parametrize(
    "url", ["mysql://x", "sqlite://", "sqlite:///", "agentcore.db", "redis://localhost"]
)
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


@pytest.mark.parametrize(
    "url", ["sqlite://:memory:", "sqlite:///:memory:", "postgresql://h/db", "postgres://h/db"]
)
def test_open_store_does_not_connect(url: str) -> None:
    open_store(url)


# -- API keys -------------------------------------------------------------------
#
# The PostgreSQL leg shares one database across tests and the store fixture does
# not empty ``api_keys``, so every test uses tenants and ids of its own.


def make_key(tenant: str, *, name: str = "", created_at: float = 100.0) -> ApiKey:
    _, key = apikeys.generate(
        tenant=tenant,
        scopes=["tasks:read", "agents:write"],
        now=created_at,
        name=name,
        agent_id="agent-1",
    )
    return key


def unique_tenant() -> str:
    return f"tenant-{secrets.token_hex(4)}"


async def test_api_key_round_trips(store: Store) -> None:
    key = make_key(unique_tenant(), name="ci")

    assert await store.put_api_key(key)
    assert await store.get_api_key(key.id) == key
    assert await store.get_api_key("000000000000") is None


async def test_put_api_key_refuses_a_taken_id(store: Store) -> None:
    key = make_key(unique_tenant())
    assert await store.put_api_key(key)

    other = msgspec.structs.replace(make_key(unique_tenant()), id=key.id)
    assert not await store.put_api_key(other)
    assert await store.get_api_key(key.id) == key


async def test_list_api_keys_by_tenant_oldest_first(store: Store) -> None:
    a, b = unique_tenant(), unique_tenant()
    newer = make_key(a, created_at=300.0)
    older = make_key(a, created_at=200.0)
    theirs = make_key(b, created_at=100.0)
    for key in (newer, older, theirs):
        assert await store.put_api_key(key)

    assert await store.list_api_keys(a) == [older, newer]
    assert await store.list_api_keys(b) == [theirs]
    everyone = [k.id for k in await store.list_api_keys(None)]
    assert {older.id, newer.id, theirs.id} <= set(everyone)
    assert everyone.index(theirs.id) < everyone.index(older.id) < everyone.index(newer.id)


async def test_revoke_api_key_once(store: Store) -> None:
    key = make_key(unique_tenant())
    assert await store.put_api_key(key)

    assert await store.revoke_api_key(key.id, 500.0)
    assert not await store.revoke_api_key(key.id, 600.0)  # already revoked: time kept
    assert not await store.revoke_api_key("000000000000", 600.0)
    stored = await store.get_api_key(key.id)
    assert stored == msgspec.structs.replace(key, revoked_at=500.0)
