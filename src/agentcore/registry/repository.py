"""Agents as stored: cards, labels, liveness, and the load each carries.

:class:`SqlAgents` keeps an agent in ``agents`` with one row per capability
(``agent_capabilities``) and tag (``agent_tags``); the label rows repeat
their agent's tenant, status, name and load, so that a discover walks one
index in ``(name, id)`` order and stops at its limit, and the least-loaded
pick is the first entry of one index. The database keeps the load
(``active_tasks``) itself, by triggers on ``tasks``. :class:`MemoryAgents`
keeps the same in dicts and answers the same queries by scanning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import msgspec

from agentcore import cursor
from agentcore.models import (
    ACTIVE_TASK,
    Agent,
    AgentCard,
    AgentQuery,
    AgentStatus,
)
from agentcore.store.database import Driver
from agentcore.store.memory import AUTOCOMMIT, Journal, MemoryDatabase, put
from agentcore.store.sql import GLOB_TO_LIKE, Args, atomic, counts, json_text, page, where


class AgentRepository(Protocol):
    """Agents keyed by (tenant, id): the same id in two tenants is two agents."""

    async def put(self, agent: Agent, *, replace: bool) -> bool:
        """Insert ``agent``; with ``replace`` overwrite its tenant's agent of that id.

        Returns False (and writes nothing) when it exists and ``replace`` is False.
        """

    async def get(self, tenant: str, agent_id: str) -> Agent | None: ...

    async def delete(self, tenant: str, agent_id: str) -> bool: ...

    async def query(self, query: AgentQuery) -> list[Agent]:
        """Agents matching every filter, ordered by name then id."""

    async def touch(self, beats: Sequence[tuple[str, str, float]]) -> None:
        """Batch heartbeat of (tenant, agent id, epoch s): set ``last_seen`` and
        reactivate inactive agents."""

    async def expire(self, cutoff: float, now: float, limit: int) -> list[tuple[str, str]]:
        """Mark up to ``limit`` active agents last seen before ``cutoff`` inactive (the
        longest silent first); return (id, tenant) of each, in no particular order."""

    async def count(self) -> dict[str, int]:
        """Number of agents by status."""

    async def least_loaded(self, capabilities: Sequence[str], tenant: str) -> str | None:
        """The active agent of ``tenant`` with every capability and the fewest assigned
        plus running tasks (ties: name, then id); one query, whatever the number of agents."""


# -- SQL ----------------------------------------------------------------------

_ACTIVE_TASK = sorted(str(status) for status in ACTIVE_TASK)
_ACTIVE = ", ".join(f"'{status}'" for status in _ACTIVE_TASK)
COLUMNS = (
    "id, tenant, name, version, status, card, capabilities, tags, "
    "registered_at, updated_at, last_seen"
)
#: A new row starts from the active tasks already held by its id in its tenant
#: (tasks outlive an unregistered agent); a replacing upsert keeps the stored count.
_INSERT = (
    f"INSERT INTO agents ({COLUMNS}, active_tasks) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
    "(SELECT COUNT(*) FROM tasks WHERE tenant = $2 AND agent_id = $1 "
    f"AND status IN ({_ACTIVE})))"
)
_UPSERT = (
    f"{_INSERT} ON CONFLICT (tenant, id) DO UPDATE SET "
    "name = excluded.name, version = excluded.version, status = excluded.status, "
    "card = excluded.card, capabilities = excluded.capabilities, tags = excluded.tags, "
    "registered_at = excluded.registered_at, updated_at = excluded.updated_at, "
    "last_seen = excluded.last_seen"
)
_AGENT_STATUS = {str(status): status for status in AgentStatus}
#: Entries kept by each :class:`AgentRows` cache; emptied when full.
_CARDS_CACHED = 4096
_card_decoder = msgspec.json.Decoder(AgentCard)
_labels_decoder = msgspec.json.Decoder(list[str])


def _row(agent: Agent) -> tuple[Any, ...]:
    return (
        agent.agent_id,
        agent.tenant,
        agent.name,
        agent.version,
        str(agent.status),
        json_text(agent.card),
        json_text(agent.capabilities),
        json_text(agent.tags),
        float(agent.registered_at),
        float(agent.updated_at),
        float(agent.last_seen),
    )


class AgentRows:
    """Decodes agent rows, remembering decoded cards by their stored JSON text.

    A card changes only when its agent registers again, while discover reads
    the same few agents over and over, and decoding a card (with validation)
    was most of a discover call's cost. The cached cards are shared between the
    agents returned; nothing mutates a stored card.
    """

    def __init__(self) -> None:
        self._cards: dict[str, AgentCard] = {}
        self._labels: dict[str, tuple[str, ...]] = {}

    def _card(self, text: str) -> AgentCard:
        card = self._cards.get(text)
        if card is None:
            if len(self._cards) >= _CARDS_CACHED:
                self._cards.clear()
            card = self._cards[text] = _card_decoder.decode(text)
        return card

    def _label_list(self, text: str) -> list[str]:
        labels = self._labels.get(text)
        if labels is None:
            if len(self._labels) >= _CARDS_CACHED:
                self._labels.clear()
            labels = self._labels[text] = tuple(_labels_decoder.decode(text))
        return list(labels)

    def agent(self, row: Sequence[Any]) -> Agent:
        return Agent(
            agent_id=row[0],
            tenant=row[1],
            name=row[2],
            version=row[3],
            status=_AGENT_STATUS[row[4]],
            card=self._card(row[5]),
            capabilities=self._label_list(row[6]),
            tags=self._label_list(row[7]),
            registered_at=row[8],
            updated_at=row[9],
            last_seen=row[10],
        )


def _has_all(
    table: str,
    column: str,
    values: Iterable[str],
    args: Args,
    agents: str = "agents",
    agent_id: str = "id",
) -> str:
    """Every value present for the agent: one primary-key probe per value and agent,
    so a query walks agents in its ORDER BY index and stops at its LIMIT (a grouped
    subquery would first list every agent that has them, per query)."""
    return " AND ".join(
        f"EXISTS (SELECT 1 FROM {table} l WHERE l.tenant = {agents}.tenant "
        f"AND l.agent_id = {agents}.{agent_id} AND l.{column} = {args(value)})"
        for value in sorted(set(values))
    )


def query_sql(query: AgentQuery) -> tuple[str, list[Any]]:
    """The SQL of a list or discover query, shaped so that one index serves it in order.

    With a tenant and a status, a capability (or else a tag) drives the query
    through ``agent_capabilities_discover`` / ``agent_tags_discover`` (label,
    tenant, status, agent name, agent id); other labels are probed per row.
    Without labels, ``agents_tenant_status_name`` or ``agents_tenant_name``
    does. A name pattern filters the rows the walk meets. Either way the walk
    is in ``(name, id)`` order and stops at the limit.
    """
    args = Args()
    capabilities = sorted(set(query.capabilities))
    tags = sorted(set(query.tags))
    conditions: list[str] = []
    driver: tuple[str, str, str] | None = None  # (table, column, value)
    if query.tenant is not None and query.status is not None:
        if capabilities:
            driver = ("agent_capabilities", "name", capabilities.pop(0))
        elif tags:
            driver = ("agent_tags", "tag", tags.pop(0))
    if driver is not None:
        table, column, value = driver
        source = f"{table} d CROSS JOIN agents a"
        conditions += [
            f"d.{column} = {args(value)}",
            f"d.tenant = {args(query.tenant)}",
            f"d.status = {args(str(query.status))}",
            "a.tenant = d.tenant",
            "a.id = d.agent_id",
        ]
        order = ("d.agent_name", "d.agent_id")
    else:
        source = "agents a"
        if query.tenant is not None:
            conditions.append(f"a.tenant = {args(query.tenant)}")
        if query.status is not None:
            conditions.append(f"a.status = {args(str(query.status))}")
        order = ("a.name", "a.id")
    if capabilities:
        conditions.append(_has_all("agent_capabilities", "name", capabilities, args, "a"))
    if tags:
        conditions.append(_has_all("agent_tags", "tag", tags, args, "a"))
    if query.name_pattern is not None:
        pattern = query.name_pattern.translate(GLOB_TO_LIKE)
        conditions.append(f"lower(a.name) LIKE lower({args(pattern)}) ESCAPE '\\'")
    if query.after is not None:
        name, last_id = cursor.decode(query.after)
        conditions.append(f"({order[0]}, {order[1]}) > ({args(str(name))}, {args(last_id)})")
    columns = ", ".join(f"a.{column}" for column in COLUMNS.split(", "))
    sql = (
        f"SELECT {columns} FROM {source}{where(conditions)} "
        f"ORDER BY {order[0]}, {order[1]} {page(query.limit, query.offset)}"
    )
    return sql, args


async def status_counts(db: Driver, kind: str) -> dict[str, int]:
    """Rows of ``agents`` or ``tasks`` (``kind``: agent, task) by status: on SQLite
    from the counter rows its triggers keep, on PostgreSQL counted."""
    if db.dialect == "postgresql":
        return counts(await db.fetch(f"SELECT status, COUNT(*) FROM {kind}s GROUP BY status"))
    return counts(
        await db.fetch("SELECT status, n FROM status_counts WHERE kind = $1 AND n > 0", kind)
    )


class SqlAgents:
    def __init__(
        self, db: Driver, rows: AgentRows | None = None, *, in_transaction: bool = False
    ) -> None:
        self._db = db
        self._rows = rows or AgentRows()
        self._in_transaction = in_transaction

    async def put(self, agent: Agent, *, replace: bool) -> bool:
        row = _row(agent)
        key = (agent.tenant, agent.agent_id)
        async with atomic(self._db, self._in_transaction) as tx:
            if replace:
                await tx.execute(_UPSERT, *row)
                await tx.execute(
                    "DELETE FROM agent_capabilities WHERE tenant = $1 AND agent_id = $2", *key
                )
                await tx.execute("DELETE FROM agent_tags WHERE tenant = $1 AND agent_id = $2", *key)
            elif not await tx.execute(f"{_INSERT} ON CONFLICT (tenant, id) DO NOTHING", *row):
                return False
            labelled = (agent.agent_id, agent.tenant, str(agent.status), agent.name)
            await tx.executemany(
                "INSERT INTO agent_capabilities "
                "(agent_id, tenant, status, agent_name, name, active_tasks) "
                "VALUES ($1, $2, $3, $4, $5, "
                "(SELECT active_tasks FROM agents WHERE tenant = $2 AND id = $1))",
                [(*labelled, name) for name in sorted(set(agent.capabilities))],
            )
            await tx.executemany(
                "INSERT INTO agent_tags (agent_id, tenant, status, agent_name, tag) "
                "VALUES ($1, $2, $3, $4, $5)",
                [(*labelled, tag) for tag in sorted(set(agent.tags))],
            )
        return True

    async def get(self, tenant: str, agent_id: str) -> Agent | None:
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM agents WHERE tenant = $1 AND id = $2", tenant, agent_id
        )
        return self._rows.agent(rows[0]) if rows else None

    async def delete(self, tenant: str, agent_id: str) -> bool:
        async with atomic(self._db, self._in_transaction) as tx:
            for table in ("agent_capabilities", "agent_tags"):
                await tx.execute(
                    f"DELETE FROM {table} WHERE tenant = $1 AND agent_id = $2", tenant, agent_id
                )
            deleted = await tx.execute(
                "DELETE FROM agents WHERE tenant = $1 AND id = $2", tenant, agent_id
            )
            return deleted > 0

    async def query(self, query: AgentQuery) -> list[Agent]:
        sql, args = query_sql(query)
        agent = self._rows.agent
        return [agent(row) for row in await self._db.fetch(sql, *args)]

    async def touch(self, beats: Sequence[tuple[str, str, float]]) -> None:
        if not beats:
            return
        active, inactive = str(AgentStatus.ACTIVE), str(AgentStatus.INACTIVE)
        async with atomic(self._db, self._in_transaction) as tx:
            await tx.executemany(
                "UPDATE agents SET last_seen = $2, "
                "updated_at = CASE WHEN status = $3 THEN $2 ELSE updated_at END, "
                "status = CASE WHEN status = $3 THEN $4 ELSE status END "
                "WHERE tenant = $5 AND id = $1",
                [(agent_id, float(ts), inactive, active, tenant) for tenant, agent_id, ts in beats],
            )

    async def expire(self, cutoff: float, now: float, limit: int) -> list[tuple[str, str]]:
        # The candidates walk agents_status_last_seen and stop at the limit.
        rows = await self._db.fetch(
            "UPDATE agents SET status = $3, updated_at = $2 WHERE (tenant, id) IN "
            "(SELECT tenant, id FROM agents WHERE status = $4 AND last_seen < $1 "
            f"ORDER BY last_seen {page(limit)}) RETURNING id, tenant",
            float(cutoff),
            float(now),
            str(AgentStatus.INACTIVE),
            str(AgentStatus.ACTIVE),
        )
        return [(row[0], row[1]) for row in rows]

    async def count(self) -> dict[str, int]:
        return await status_counts(self._db, "agent")

    async def least_loaded(self, capabilities: Sequence[str], tenant: str) -> str | None:
        args = Args()
        active = str(AgentStatus.ACTIVE)
        wanted = sorted(set(capabilities))
        if not wanted:  # walks agents_load (tenant, status, active_tasks, name, id)
            sql = (
                f"SELECT id FROM agents WHERE tenant = {args(tenant)} AND status = {args(active)} "
                "ORDER BY active_tasks, name, id LIMIT 1"
            )
        else:  # walks agent_capabilities_load from the least-loaded agent with the first
            conditions = [
                f"d.name = {args(wanted[0])}",
                f"d.tenant = {args(tenant)}",
                f"d.status = {args(active)}",
            ]
            if wanted[1:]:
                conditions.append(
                    _has_all("agent_capabilities", "name", wanted[1:], args, "d", "agent_id")
                )
            sql = (
                f"SELECT d.agent_id FROM agent_capabilities d{where(conditions)} "
                "ORDER BY d.active_tasks, d.agent_name, d.agent_id LIMIT 1"
            )
        rows = await self._db.fetch(sql, *args)
        return str(rows[0][0]) if rows else None


# -- memory -------------------------------------------------------------------


class AgentTable:
    """In-memory agents by (tenant, id), and the load of every such key (kept by the
    task repository: tasks outlive an unregistered agent, as in SQL)."""

    def __init__(self) -> None:
        self.agents: dict[tuple[str, str], Agent] = {}
        #: Assigned plus running tasks per (tenant, agent id) (absent: none).
        self.loads: dict[tuple[str, str], int] = {}


def _glob(pattern: str) -> re.Pattern[str]:
    """A name pattern (``*``, ``?``) as a case-insensitive regular expression."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _matches(agent: Agent, query: AgentQuery) -> bool:
    return (
        (query.tenant is None or agent.tenant == query.tenant)
        and (query.status is None or agent.status == query.status)
        and set(query.capabilities) <= set(agent.capabilities)
        and set(query.tags) <= set(agent.tags)
    )


class MemoryAgents:
    def __init__(self, db: MemoryDatabase, journal: Journal = AUTOCOMMIT) -> None:
        self._db = db
        self._journal = journal
        self._table = db.table(AgentTable)

    def _set(self, key: tuple[str, str], agent: Agent | None) -> None:
        """Store (None: remove) the agent of ``key`` (tenant, id), journalling the
        previous value."""
        put(self._journal, self._table.agents, key, agent)

    async def put(self, agent: Agent, *, replace: bool) -> bool:
        self._db.check()
        key = (agent.tenant, agent.agent_id)
        if not replace and key in self._table.agents:
            return False
        self._set(key, agent)
        return True

    async def get(self, tenant: str, agent_id: str) -> Agent | None:
        self._db.check()
        return self._table.agents.get((tenant, agent_id))

    async def delete(self, tenant: str, agent_id: str) -> bool:
        self._db.check()
        if (tenant, agent_id) not in self._table.agents:
            return False
        self._set((tenant, agent_id), None)
        return True

    async def query(self, query: AgentQuery) -> list[Agent]:
        self._db.check()
        pattern = None if query.name_pattern is None else _glob(query.name_pattern)
        after = None if query.after is None else cursor.decode(query.after)
        found = sorted(
            (
                agent
                for agent in self._table.agents.values()
                if _matches(agent, query)
                and (pattern is None or pattern.fullmatch(agent.name))
                and (after is None or (agent.name, agent.agent_id) > (str(after[0]), after[1]))
            ),
            key=lambda agent: (agent.name, agent.agent_id),
        )
        return found[query.offset : query.offset + query.limit]

    async def touch(self, beats: Sequence[tuple[str, str, float]]) -> None:
        self._db.check()
        for tenant, agent_id, ts in beats:
            key = (tenant, agent_id)
            agent = self._table.agents.get(key)
            if agent is None:
                continue
            if agent.status == AgentStatus.INACTIVE:
                agent = msgspec.structs.replace(
                    agent, status=AgentStatus.ACTIVE, updated_at=float(ts)
                )
            self._set(key, msgspec.structs.replace(agent, last_seen=float(ts)))

    async def expire(self, cutoff: float, now: float, limit: int) -> list[tuple[str, str]]:
        self._db.check()
        expired = sorted(
            (
                agent
                for agent in self._table.agents.values()
                if agent.status == AgentStatus.ACTIVE and agent.last_seen < cutoff
            ),
            key=lambda agent: agent.last_seen,
        )[:limit]
        for agent in expired:
            self._set(
                (agent.tenant, agent.agent_id),
                msgspec.structs.replace(agent, status=AgentStatus.INACTIVE, updated_at=float(now)),
            )
        return [(agent.agent_id, agent.tenant) for agent in expired]

    async def count(self) -> dict[str, int]:
        self._db.check()
        found: dict[str, int] = {}
        for agent in self._table.agents.values():
            found[str(agent.status)] = found.get(str(agent.status), 0) + 1
        return found

    async def least_loaded(self, capabilities: Sequence[str], tenant: str) -> str | None:
        self._db.check()
        wanted = set(capabilities)
        loads = self._table.loads
        candidates = [
            agent
            for agent in self._table.agents.values()
            if agent.tenant == tenant
            and agent.status == AgentStatus.ACTIVE
            and wanted <= set(agent.capabilities)
        ]
        if not candidates:
            return None
        best = min(
            candidates, key=lambda a: (loads.get((tenant, a.agent_id), 0), a.name, a.agent_id)
        )
        return best.agent_id
