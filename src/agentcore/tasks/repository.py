"""Tasks as stored: one row per task, changed by compare-and-set on its version.

:class:`SqlTasks` keeps the whole task as JSON in ``tasks.body`` and repeats
the columns it is filtered and sorted on; with a tenant, each ``task.query``
filter has an index ``(tenant, column, created_at, id)`` that serves it in
order up to its limit. :class:`MemoryTasks` keeps tasks in a dict and the
agents' loads (assigned plus running tasks) in the agents' table, where the
least-loaded pick reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from agentcore import cursor
from agentcore.models import ACTIVE_TASK, Task, TaskQuery, TaskStatus, priority_value
from agentcore.registry.repository import AgentTable, status_counts
from agentcore.store.database import Driver
from agentcore.store.memory import AUTOCOMMIT, Journal, MemoryDatabase
from agentcore.store.sql import CHUNK, Args, counts, json_text, page, where


class TaskRepository(Protocol):
    """Tasks keyed by (tenant, id): the same id in two tenants is two tasks."""

    async def insert(self, task: Task) -> bool:
        """False when its tenant holds a task with this id."""

    async def get(self, tenant: str, task_id: str) -> Task | None: ...

    async def update(self, task: Task) -> bool:
        """Store ``task`` if the stored version is ``task.version - 1`` (compare-and-set)."""

    async def query(self, query: TaskQuery) -> list[Task]:
        """Tasks matching every filter, ordered by created_at then id."""

    async def pending(self, limit: int) -> list[Task]:
        """Pending tasks, highest priority first, then oldest."""

    async def due(self, now: float, limit: int) -> list[Task]:
        """Assigned or running tasks whose deadline has passed."""

    async def loads(self, tenant: str, agent_ids: Sequence[str]) -> dict[str, int]:
        """Assigned plus running tasks per agent of ``tenant`` (agents with none are
        omitted)."""

    async def count(self) -> dict[str, int]:
        """Number of tasks by status."""


# -- SQL ----------------------------------------------------------------------

_ACTIVE_TASK = sorted(str(status) for status in ACTIVE_TASK)
COLUMNS = (
    "id, tenant, type, status, priority, agent_id, created_at, updated_at, deadline, version, body"
)
_INSERT = (
    f"INSERT INTO tasks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
    "ON CONFLICT (tenant, id) DO NOTHING"
)
_UPDATE = (
    "UPDATE tasks SET type = $3, status = $4, priority = $5, agent_id = $6, "
    "created_at = $7, updated_at = $8, deadline = $9, version = $10, body = $11 "
    "WHERE tenant = $2 AND id = $1 AND version = $12"
)
_decoder = msgspec.json.Decoder(Task)


def _row(task: Task) -> tuple[Any, ...]:
    return (
        task.task_id,
        task.tenant,
        task.type,
        str(task.status),
        task.priority,
        task.agent_id,
        float(task.created_at),
        float(task.updated_at),
        None if task.deadline is None else float(task.deadline),
        task.version,
        json_text(task),
    )


def _tasks(rows: list[Sequence[Any]]) -> list[Task]:
    return [_decoder.decode(row[0]) for row in rows]


def query_sql(query: TaskQuery) -> tuple[str, list[Any]]:
    """The SQL of ``task.query``: with a tenant, one of the ``tasks_tenant_*`` indexes
    (tenant, filter column, created_at, id) serves it in order and it stops at
    the limit; other filters are checked on the rows walked."""
    args = Args()
    conditions = []
    if query.tenant is not None:
        conditions.append(f"tenant = {args(query.tenant)}")
    if query.status is not None:
        conditions.append(f"status = {args(str(query.status))}")
    if query.agent_id is not None:
        conditions.append(f"agent_id = {args(query.agent_id)}")
    if query.type is not None:
        conditions.append(f"type = {args(query.type)}")
    if query.priority is not None:
        conditions.append(f"priority = {args(priority_value(query.priority))}")
    if query.created_after is not None:
        conditions.append(f"created_at >= {args(float(query.created_after))}")
    if query.created_before is not None:
        conditions.append(f"created_at < {args(float(query.created_before))}")
    if query.after is not None:
        created, last_id = _after(query.after)
        conditions.append(f"(created_at, id) > ({args(created)}, {args(last_id)})")
    sql = (
        f"SELECT body FROM tasks{where(conditions)} "
        f"ORDER BY created_at, id {page(query.limit, query.offset)}"
    )
    return sql, args


def _after(after: str) -> tuple[float, str]:
    created, last_id = cursor.decode(after)
    if not isinstance(created, float | int):
        raise cursor.invalid()
    return float(created), last_id


class SqlTasks:
    def __init__(self, db: Driver) -> None:
        self._db = db

    async def insert(self, task: Task) -> bool:
        return await self._db.execute(_INSERT, *_row(task)) > 0

    async def get(self, tenant: str, task_id: str) -> Task | None:
        rows = await self._db.fetch(
            "SELECT body FROM tasks WHERE tenant = $1 AND id = $2", tenant, task_id
        )
        return _tasks(rows)[0] if rows else None

    async def update(self, task: Task) -> bool:
        return await self._db.execute(_UPDATE, *_row(task), task.version - 1) > 0

    async def query(self, query: TaskQuery) -> list[Task]:
        sql, args = query_sql(query)
        return _tasks(await self._db.fetch(sql, *args))

    async def pending(self, limit: int) -> list[Task]:
        # Walks tasks_pending (status, priority DESC, created_at, id).
        rows = await self._db.fetch(
            "SELECT body FROM tasks WHERE status = $1 "
            f"ORDER BY priority DESC, created_at, id {page(limit)}",
            str(TaskStatus.PENDING),
        )
        return _tasks(rows)

    async def due(self, now: float, limit: int) -> list[Task]:
        # Walks the partial index tasks_deadline (SQLite would rather take the status
        # index and sort every active task: told which index to use).
        indexed = " INDEXED BY tasks_deadline" if self._db.dialect == "sqlite" else ""
        args = Args()
        sql = (
            f"SELECT body FROM tasks{indexed} WHERE deadline IS NOT NULL "
            f"AND deadline < {args(float(now))} AND status IN ({args.many(_ACTIVE_TASK)}) "
            f"ORDER BY deadline, id {page(limit)}"
        )
        return _tasks(await self._db.fetch(sql, *args))

    async def loads(self, tenant: str, agent_ids: Sequence[str]) -> dict[str, int]:
        unique = list(dict.fromkeys(agent_ids))
        found: dict[str, int] = {}
        for start in range(0, len(unique), CHUNK):
            args = Args()
            sql = (
                f"SELECT agent_id, COUNT(*) FROM tasks WHERE tenant = {args(tenant)} "
                f"AND status IN ({args.many(_ACTIVE_TASK)}) "
                f"AND agent_id IN ({args.many(unique[start : start + CHUNK])}) "
                "GROUP BY agent_id"
            )
            found.update(counts(await self._db.fetch(sql, *args)))
        return found

    async def count(self) -> dict[str, int]:
        return await status_counts(self._db, "task")


# -- memory -------------------------------------------------------------------


class TaskTable:
    def __init__(self) -> None:
        #: By (tenant, id).
        self.tasks: dict[tuple[str, str], Task] = {}


def _matches(task: Task, query: TaskQuery) -> bool:
    return (
        (query.tenant is None or task.tenant == query.tenant)
        and (query.status is None or task.status == query.status)
        and (query.agent_id is None or task.agent_id == query.agent_id)
        and (query.type is None or task.type == query.type)
        and (query.priority is None or task.priority == priority_value(query.priority))
        and (query.created_after is None or task.created_at >= query.created_after)
        and (query.created_before is None or task.created_at < query.created_before)
    )


class MemoryTasks:
    def __init__(self, db: MemoryDatabase, journal: Journal = AUTOCOMMIT) -> None:
        self._db = db
        self._journal = journal
        self._table = db.table(TaskTable)
        self._agents = db.table(AgentTable)

    def _store(self, task: Task) -> None:
        """Store ``task`` and move its agent's load, journalling both."""
        previous = self._table.tasks.get((task.tenant, task.task_id))
        self._put(previous, task)
        self._journal.record(lambda: self._put(task, previous))

    def _put(self, old: Task | None, new: Task | None) -> None:
        loads = self._agents.loads
        if old is not None and old.agent_id is not None and old.status in ACTIVE_TASK:
            agent = (old.tenant, old.agent_id)
            loads[agent] -= 1
            if not loads[agent]:
                del loads[agent]
        if new is None:
            assert old is not None
            del self._table.tasks[(old.tenant, old.task_id)]
            return
        if new.agent_id is not None and new.status in ACTIVE_TASK:
            agent = (new.tenant, new.agent_id)
            loads[agent] = loads.get(agent, 0) + 1
        self._table.tasks[(new.tenant, new.task_id)] = new

    async def insert(self, task: Task) -> bool:
        self._db.check()
        if (task.tenant, task.task_id) in self._table.tasks:
            return False
        self._store(task)
        return True

    async def get(self, tenant: str, task_id: str) -> Task | None:
        self._db.check()
        return self._table.tasks.get((tenant, task_id))

    async def update(self, task: Task) -> bool:
        self._db.check()
        stored = self._table.tasks.get((task.tenant, task.task_id))
        if stored is None or stored.version != task.version - 1:
            return False
        self._store(task)
        return True

    async def query(self, query: TaskQuery) -> list[Task]:
        self._db.check()
        after = None if query.after is None else _after(query.after)
        found = sorted(
            (
                task
                for task in self._table.tasks.values()
                if _matches(task, query)
                and (after is None or (task.created_at, task.task_id) > after)
            ),
            key=lambda task: (task.created_at, task.task_id),
        )
        return found[query.offset : query.offset + query.limit]

    async def pending(self, limit: int) -> list[Task]:
        self._db.check()
        pending = (t for t in self._table.tasks.values() if t.status == TaskStatus.PENDING)
        return sorted(pending, key=lambda t: (-t.priority, t.created_at, t.task_id))[:limit]

    async def due(self, now: float, limit: int) -> list[Task]:
        self._db.check()
        due = [
            t
            for t in self._table.tasks.values()
            if t.deadline is not None and t.deadline < now and t.status in ACTIVE_TASK
        ]
        return sorted(due, key=lambda t: (t.deadline or 0.0, t.task_id))[:limit]

    async def loads(self, tenant: str, agent_ids: Sequence[str]) -> dict[str, int]:
        self._db.check()
        loads = self._agents.loads
        return {
            agent_id: loads[(tenant, agent_id)]
            for agent_id in agent_ids
            if (tenant, agent_id) in loads
        }

    async def count(self) -> dict[str, int]:
        self._db.check()
        found: dict[str, int] = {}
        for task in self._table.tasks.values():
            found[str(task.status)] = found.get(str(task.status), 0) + 1
        return found
