"""Every list and discover query walks an index in its own order and stops at its limit.

For each query shape the plan must not sort (SQLite: no ``USE TEMP B-TREE``;
PostgreSQL: no ``Sort`` node even with sorting priced out, which shows that an
index in the query's order exists) and must read through an index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentcore import cursor
from agentcore.models import AgentQuery, AgentStatus, TaskQuery, TaskStatus
from agentcore.registry.repository import query_sql as agents_sql
from agentcore.repositories import SqlRepositories, open_repositories
from agentcore.tasks.repository import query_sql as tasks_sql

ACTIVE = AgentStatus.ACTIVE
AGENT_SHAPES = {
    "discover by capability": AgentQuery(capabilities=["x"], status=ACTIVE, tenant="t"),
    "discover by capabilities": AgentQuery(capabilities=["x", "y"], status=ACTIVE, tenant="t"),
    "discover by tag": AgentQuery(tags=["x"], status=ACTIVE, tenant="t"),
    "discover by capability, tag and name": AgentQuery(
        capabilities=["x"], tags=["q"], name_pattern="sum*", status=ACTIVE, tenant="t"
    ),
    "discover by status": AgentQuery(status=ACTIVE, tenant="t"),
    "discover by name": AgentQuery(name_pattern="*bot", status=ACTIVE, tenant="t"),
    "list": AgentQuery(tenant="t"),
    "discover after a cursor": AgentQuery(
        capabilities=["x"], status=ACTIVE, tenant="t", after=cursor.encode("n", "a1")
    ),
    "list after a cursor": AgentQuery(tenant="t", after=cursor.encode("n", "a1")),
}
ASSIGNED = TaskStatus.ASSIGNED
TASK_SHAPES = {
    "by status": TaskQuery(status=ASSIGNED, tenant="t"),
    "by agent": TaskQuery(agent_id="a", tenant="t"),
    "by type": TaskQuery(type="x", tenant="t"),
    "by priority": TaskQuery(priority=5, tenant="t"),
    "by time range": TaskQuery(created_after=1.0, created_before=5.0, tenant="t"),
    "all": TaskQuery(tenant="t"),
    "by status and agent": TaskQuery(status=ASSIGNED, agent_id="a", tenant="t"),
    "by status and time": TaskQuery(status=ASSIGNED, created_after=1.0, tenant="t"),
    "an agent's assigned tasks (release)": TaskQuery(
        status=ASSIGNED, agent_id="a", tenant="t", limit=1000
    ),
    "by status after a cursor": TaskQuery(
        status=ASSIGNED, tenant="t", after=cursor.encode(1.0, "t1")
    ),
}
INTERNAL_SHAPES: dict[str, tuple[str, list[Any]]] = {
    "pending pass": (
        "SELECT body FROM tasks WHERE status = $1 ORDER BY priority DESC, created_at, id "
        "LIMIT 200 OFFSET 0",
        ["pending"],
    ),
    "expiry sweep": (
        "SELECT tenant, id FROM agents WHERE status = $1 AND last_seen < $2 ORDER BY last_seen "
        "LIMIT 16 OFFSET 0",
        ["active", 5.0],
    ),
    "deadline sweep": (
        "SELECT body FROM tasks WHERE deadline IS NOT NULL AND deadline < $1 "
        "AND status IN ($2, $3) ORDER BY deadline, id LIMIT 200 OFFSET 0",
        [5.0, "assigned", "running"],
    ),
}


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlRepositories]:
    """Open repositories on each SQL backend (plans are SQL's)."""
    repos = open_repositories(database_url)
    assert isinstance(repos, SqlRepositories)
    await repos.open()
    yield repos
    await repos.close()


async def plan(store: SqlRepositories, sql: str, args: list[Any]) -> str:
    if store.database.dialect == "sqlite":
        rows = await store.database.fetch(f"EXPLAIN QUERY PLAN {sql}", *args)
        return "\n".join(str(row[3]) for row in rows)
    async with store.database.transaction() as tx:
        await tx.execute("SET LOCAL enable_sort = off")
        await tx.execute("SET LOCAL enable_seqscan = off")
        rows = await tx.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(str(row[0]) for row in rows)


def assert_walks_an_index(store: SqlRepositories, text: str) -> None:
    if store.database.dialect == "sqlite":
        assert "TEMP B-TREE" not in text, text
        assert "USING INDEX" in text or "USING COVERING INDEX" in text, text
        assert "SCAN" not in text, text  # every table is searched by key, none read whole
    else:
        assert "Sort" not in text, text
        assert "Index" in text, text
        assert text.lstrip().startswith("Limit"), text


@pytest.mark.parametrize("shape", AGENT_SHAPES)
async def test_agent_queries_walk_an_index_in_order(store: SqlRepositories, shape: str) -> None:
    sql, args = agents_sql(AGENT_SHAPES[shape])
    assert_walks_an_index(store, await plan(store, sql, args))


@pytest.mark.parametrize("shape", TASK_SHAPES)
async def test_task_queries_walk_an_index_in_order(store: SqlRepositories, shape: str) -> None:
    sql, args = tasks_sql(TASK_SHAPES[shape])
    assert_walks_an_index(store, await plan(store, sql, args))


@pytest.mark.parametrize("shape", INTERNAL_SHAPES)
async def test_internal_queries_walk_an_index_in_order(store: SqlRepositories, shape: str) -> None:
    sql, args = INTERNAL_SHAPES[shape]
    if store.database.dialect == "sqlite" and "deadline" in sql:
        sql = sql.replace("FROM tasks", "FROM tasks INDEXED BY tasks_deadline")  # as the store
    assert_walks_an_index(store, await plan(store, sql, args))


@pytest.mark.parametrize("capabilities", [[], ["x"], ["x", "y"]])
async def test_the_least_loaded_agent_is_the_first_entry_of_one_index(
    store: SqlRepositories, capabilities: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[Any]]] = []
    fetch = store.database.fetch

    async def recording(sql: str, *args: Any) -> list[Any]:
        seen.append((sql, list(args)))
        return await fetch(sql, *args)

    monkeypatch.setattr(store.database, "fetch", recording)
    await store.agents.least_loaded(capabilities, "t")
    monkeypatch.setattr(store.database, "fetch", fetch)
    [(sql, args)] = seen
    assert_walks_an_index(store, await plan(store, sql, args))
