"""The one SQL implementation of :class:`~agentcore.store.base.Store`.

The SQL text is written once, with ``$1, $2 ...`` placeholders, in the subset
that SQLite (3.40+) and PostgreSQL share: ``ON CONFLICT``, ``RETURNING``,
``excluded``. A :class:`Database` driver runs it; drivers translate their
library's connection errors into :class:`~agentcore.errors.StoreUnavailable`.

Columns duplicate the fields that are filtered or sorted on; the JSON columns
(``agents.card``, ``agents.capabilities``, ``agents.tags``, ``tasks.body``,
``api_keys.scopes``) hold the rest, so a row decodes back into exactly the
struct that was stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec

from agentcore.apikeys import ApiKey
from agentcore.errors import ConfigError
from agentcore.events.base import Event
from agentcore.llm.accounting import LlmUsage
from agentcore.models import (
    ACTIVE_TASK,
    Agent,
    AgentCard,
    AgentQuery,
    AgentStatus,
    Task,
    TaskQuery,
    TaskStatus,
    priority_value,
)


class Driver(Protocol):
    """Runs SQL with ``$N`` placeholders; the whole seam between SQL and a database."""

    dialect: str  # "sqlite" or "postgresql"

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once per row. Nothing comes back, so inside a transaction a
        driver may pipeline it (SQLite does: an error surfaces at the block's next
        statement or at its end). Statements whose row count is not needed use it
        inside transactions, even for one row, so the block does not wait for them."""

    async def fetch_pipelined(self, sql: str, *args: Any) -> Awaitable[list[Sequence[Any]]]:
        """Send a query and return its result to await later. Inside a SQLite
        transaction it is queued without waiting, so the statements after it and
        the commit reach the one writer together and it never waits for the event
        loop; elsewhere it runs now."""

    def transaction(self) -> AbstractAsyncContextManager[Driver]:
        """One connection from BEGIN to COMMIT; rolled back when the block raises.

        The yielded driver is the only one to use inside the block: the outer
        one may wait for the transaction to end (SQLite) and so deadlock.
        """


async def ready(rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows already fetched, as :meth:`Driver.fetch_pipelined` returns them when it ran at once."""
    return rows


class Database(Driver, Protocol):
    async def open(self) -> None:
        """Connect; :class:`~agentcore.errors.StoreUnavailable` when that fails."""

    async def close(self) -> None:
        """Idempotent; afterwards every call raises ``StoreUnavailable``."""


# -- schema -------------------------------------------------------------------

#: Statements the two dialects spell differently: each dialect's own, by its name.
Dialects = Mapping[str, tuple[str, ...]]

#: The task statuses that count towards an agent's load, as stored: as parameters,
#: and as SQL literals for triggers (which take none).
_ACTIVE_TASK = sorted(str(status) for status in ACTIVE_TASK)
_ACTIVE = ", ".join(f"'{status}'" for status in _ACTIVE_TASK)

#: Each agent's count of assigned and running tasks, kept by the database itself
#: on every write to ``tasks`` (no extra round trip): the least-loaded agent is
#: then one index walk instead of a count over every active task per assignment.
_TASK_LOAD_SQLITE = (
    f"""CREATE TRIGGER tasks_load_insert AFTER INSERT ON tasks
    WHEN NEW.agent_id IS NOT NULL AND NEW.status IN ({_ACTIVE})
    BEGIN
        UPDATE agents SET active_tasks = active_tasks + 1 WHERE id = NEW.agent_id;
    END""",
    f"""CREATE TRIGGER tasks_load_update AFTER UPDATE OF status, agent_id ON tasks
    WHEN OLD.status IS NOT NEW.status OR OLD.agent_id IS NOT NEW.agent_id
    BEGIN
        UPDATE agents SET active_tasks = active_tasks - 1
            WHERE id = OLD.agent_id AND OLD.status IN ({_ACTIVE});
        UPDATE agents SET active_tasks = active_tasks + 1
            WHERE id = NEW.agent_id AND NEW.status IN ({_ACTIVE});
    END""",
    f"""CREATE TRIGGER tasks_load_delete AFTER DELETE ON tasks
    WHEN OLD.agent_id IS NOT NULL AND OLD.status IN ({_ACTIVE})
    BEGIN
        UPDATE agents SET active_tasks = active_tasks - 1 WHERE id = OLD.agent_id;
    END""",
)
_TASK_LOAD_POSTGRESQL = (
    f"""CREATE FUNCTION agentcore_task_load() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        IF TG_OP <> 'INSERT' AND OLD.agent_id IS NOT NULL AND OLD.status IN ({_ACTIVE}) THEN
            UPDATE agents SET active_tasks = active_tasks - 1 WHERE id = OLD.agent_id;
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.agent_id IS NOT NULL AND NEW.status IN ({_ACTIVE}) THEN
            UPDATE agents SET active_tasks = active_tasks + 1 WHERE id = NEW.agent_id;
        END IF;
        RETURN NULL;
    END
    $body$""",
    """CREATE TRIGGER tasks_load_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION agentcore_task_load()""",
    """CREATE TRIGGER tasks_load_update AFTER UPDATE OF status, agent_id ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.agent_id IS DISTINCT FROM NEW.agent_id)
    EXECUTE FUNCTION agentcore_task_load()""",
    """CREATE TRIGGER tasks_load_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION agentcore_task_load()""",
)

#: Migration N (1-based) is ``MIGRATIONS[N - 1]``; append, never edit.
MIGRATIONS: tuple[tuple[str | Dialects, ...], ...] = (
    (
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            card TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            tags TEXT NOT NULL,
            registered_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX agents_status_last_seen ON agents (status, last_seen)",
        "CREATE INDEX agents_name_id ON agents (name, id)",
        """CREATE TABLE agent_capabilities (
            agent_id TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (agent_id, name)
        )""",
        "CREATE INDEX agent_capabilities_name ON agent_capabilities (name, agent_id)",
        """CREATE TABLE agent_tags (
            agent_id TEXT NOT NULL,
            tag TEXT NOT NULL,
            PRIMARY KEY (agent_id, tag)
        )""",
        "CREATE INDEX agent_tags_tag ON agent_tags (tag, agent_id)",
        """CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL,
            agent_id TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            deadline DOUBLE PRECISION,
            version INTEGER NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX tasks_status_priority_created ON tasks (status, priority, created_at)",
        "CREATE INDEX tasks_agent_status ON tasks (agent_id, status)",
        "CREATE INDEX tasks_created_id ON tasks (created_at, id)",
    ),
    (
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            tenant TEXT NOT NULL,
            scopes TEXT NOT NULL,
            agent_id TEXT,
            hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )""",
        "CREATE INDEX api_keys_tenant_created ON api_keys (tenant, created_at)",
    ),
    (
        # The event log. Ids come from event_seq, bumped in the appending
        # transaction: that row lock serialises appenders, so ids are gap-free
        # and commit in order (a reader never sees id N+1 before id N).
        """CREATE TABLE events (
            id BIGINT PRIMARY KEY,
            type TEXT NOT NULL,
            timestamp DOUBLE PRECISION NOT NULL,
            source TEXT NOT NULL,
            tenant TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_timestamp ON events (timestamp)",
        "CREATE TABLE event_seq (n BIGINT NOT NULL)",
        "INSERT INTO event_seq (n) VALUES (0)",
    ),
    (
        # Webhooks (webhooks/store.py). A webhook sees events with id >
        # after_event_id (the log's head when it was created).
        """CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            secrets TEXT NOT NULL,
            headers TEXT NOT NULL,
            max_attempts INTEGER,
            rate_limit_per_s DOUBLE PRECISION,
            status TEXT NOT NULL,
            disabled_reason TEXT,
            failing_since DOUBLE PRECISION,
            after_event_id BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX webhooks_tenant_created ON webhooks (tenant, created_at)",
        "CREATE INDEX webhooks_status ON webhooks (status)",
        # The outbox: one row per (webhook, event); its id is the webhook-id header.
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            webhook_id TEXT NOT NULL,
            tenant TEXT NOT NULL,
            event_id BIGINT,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            tries INTEGER NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION,
            lease_owner TEXT,
            last_status INTEGER,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            UNIQUE (webhook_id, event_id)
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
        "CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at)",
        """CREATE TABLE webhook_attempts (
            delivery_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            webhook_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            status_code INTEGER,
            ok INTEGER NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            error TEXT,
            PRIMARY KEY (delivery_id, attempt)
        )""",
        "CREATE INDEX webhook_attempts_webhook_at ON webhook_attempts (webhook_id, at)",
        "CREATE TABLE webhook_cursor (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        "INSERT INTO webhook_cursor (name, position) SELECT 'dispatcher', n FROM event_seq",
    ),
    (
        # LLM usage: one row per (UTC day, tenant, agent, provider, model),
        # added to by each worker's periodic flush (llm/accounting.py).
        """CREATE TABLE llm_usage (
            day TEXT NOT NULL,
            tenant TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            requests BIGINT NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (day, tenant, agent_id, provider, model)
        )""",
    ),
    (
        # task.query by status in its stable order without sorting every match.
        "CREATE INDEX tasks_status_created_id ON tasks (status, created_at, id)",
        "ALTER TABLE agents ADD COLUMN active_tasks INTEGER NOT NULL DEFAULT 0",
        "UPDATE agents SET active_tasks = (SELECT COUNT(*) FROM tasks "
        f"WHERE tasks.agent_id = agents.id AND tasks.status IN ({_ACTIVE}))",
        "CREATE INDEX agents_load ON agents (tenant, status, active_tasks, name, id)",
        {"sqlite": _TASK_LOAD_SQLITE, "postgresql": _TASK_LOAD_POSTGRESQL},
    ),
)

_LLM_USAGE_COLUMNS = (
    "day, tenant, agent_id, provider, model, requests, prompt_tokens, completion_tokens, cost"
)

#: Key of the PostgreSQL advisory lock that serialises migrations ("agentcor").
MIGRATION_LOCK = 0x6167656E74636F72


async def migrate(db: Database) -> int:
    """Apply pending migrations in one transaction; return the schema version.

    Concurrent callers (several workers starting at once) are serialised by
    ``BEGIN IMMEDIATE`` on SQLite and a transaction-scoped advisory lock on
    PostgreSQL; the losers find the work done.
    """
    async with db.transaction() as tx:
        if tx.dialect == "postgresql":
            await tx.fetch("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        rows = await tx.fetch("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        current = int(rows[0][0])
        if current > len(MIGRATIONS):
            raise ConfigError(
                f"database schema version {current} is newer than this gateway's "
                f"({len(MIGRATIONS)})"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in migration_statements(version, tx.dialect):
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return len(MIGRATIONS)


def migration_statements(version: int, dialect: str) -> list[str]:
    """The statements of migration ``version`` (1-based) as ``dialect`` runs them."""
    return [
        statement
        for entry in MIGRATIONS[version - 1]
        for statement in ((entry,) if isinstance(entry, str) else entry[dialect])
    ]


# -- rows ---------------------------------------------------------------------

_AGENT_COLUMNS = (
    "id, tenant, name, version, status, card, capabilities, tags, "
    "registered_at, updated_at, last_seen"
)
#: A new row starts from the active tasks already held by its id (tasks outlive
#: an unregistered agent); a replacing upsert keeps the stored count.
_INSERT_AGENT = (
    f"INSERT INTO agents ({_AGENT_COLUMNS}, active_tasks) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
    f"(SELECT COUNT(*) FROM tasks WHERE agent_id = $1 AND status IN ({_ACTIVE})))"
)
_UPSERT_AGENT = (
    f"{_INSERT_AGENT} ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, "
    "name = excluded.name, version = excluded.version, status = excluded.status, "
    "card = excluded.card, capabilities = excluded.capabilities, tags = excluded.tags, "
    "registered_at = excluded.registered_at, updated_at = excluded.updated_at, "
    "last_seen = excluded.last_seen"
)
_TASK_COLUMNS = (
    "id, tenant, type, status, priority, agent_id, created_at, updated_at, deadline, version, body"
)
_INSERT_TASK = (
    f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
    "ON CONFLICT (id) DO NOTHING"
)
_UPDATE_TASK = (
    "UPDATE tasks SET tenant = $2, type = $3, status = $4, priority = $5, agent_id = $6, "
    "created_at = $7, updated_at = $8, deadline = $9, version = $10, body = $11 "
    "WHERE id = $1 AND version = $12"
)

_API_KEY_COLUMNS = "id, name, tenant, scopes, agent_id, hash, created_at, revoked_at"

_card_decoder = msgspec.json.Decoder(AgentCard)
_labels_decoder = msgspec.json.Decoder(list[str])
_task_decoder = msgspec.json.Decoder(Task)

#: Glob (``*``, ``?``) to LIKE with ``\`` as the escape character.
_GLOB_TO_LIKE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_", "*": "%", "?": "_"})

#: Ids per ``IN (...)`` list, well below both databases' parameter limits.
_CHUNK = 500


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _agent_row(agent: Agent) -> tuple[Any, ...]:
    return (
        agent.agent_id,
        agent.tenant,
        agent.name,
        agent.version,
        str(agent.status),
        _json(agent.card),
        _json(agent.capabilities),
        _json(agent.tags),
        float(agent.registered_at),
        float(agent.updated_at),
        float(agent.last_seen),
    )


def _agent(row: Sequence[Any]) -> Agent:
    return Agent(
        agent_id=row[0],
        tenant=row[1],
        name=row[2],
        version=row[3],
        status=AgentStatus(row[4]),
        card=_card_decoder.decode(row[5]),
        capabilities=_labels_decoder.decode(row[6]),
        tags=_labels_decoder.decode(row[7]),
        registered_at=row[8],
        updated_at=row[9],
        last_seen=row[10],
    )


def _task_row(task: Task) -> tuple[Any, ...]:
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
        _json(task),
    )


def _tasks(rows: list[Sequence[Any]]) -> list[Task]:
    return [_task_decoder.decode(row[0]) for row in rows]


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        tenant=row[2],
        scopes=_labels_decoder.decode(row[3]),
        agent_id=row[4],
        hash=row[5],
        created_at=row[6],
        revoked_at=row[7],
    )


class _Args(list[Any]):
    """Collects parameters while a query is built; calling it returns the placeholder."""

    def __call__(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}"

    def many(self, values: Iterable[Any]) -> str:
        return ", ".join(self(value) for value in values)


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _has_all(table: str, column: str, values: Iterable[str], args: _Args) -> str:
    """Every value present for the agent: one primary-key probe per value and agent,
    so a query walks agents in its ORDER BY index and stops at its LIMIT (a grouped
    subquery would first list every agent that has them, per query)."""
    return " AND ".join(
        f"EXISTS (SELECT 1 FROM {table} l WHERE l.agent_id = agents.id "
        f"AND l.{column} = {args(value)})"
        for value in sorted(set(values))
    )


def _counts(rows: list[Sequence[Any]]) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in rows}


# -- the store ----------------------------------------------------------------


_EVENT_COLUMNS = "id, type, timestamp, source, tenant, data"


def _event(row: Sequence[Any]) -> Event:
    return Event(
        id=int(row[0]),
        type=row[1],
        timestamp=float(row[2]),
        source=row[3],
        tenant=row[4],
        data=msgspec.json.decode(row[5]),
    )


class SqlStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        """The driver, for stores of other concepts sharing this database (webhooks)."""
        return self._db

    async def open(self) -> None:
        await self._db.open()
        try:
            await migrate(self._db)
        except BaseException:
            await self._db.close()
            raise

    async def close(self) -> None:
        await self._db.close()

    async def check(self) -> None:
        await self._db.fetch("SELECT 1")

    # -- agents ---------------------------------------------------------------

    async def put_agent(self, agent: Agent, *, replace: bool) -> bool:
        row = _agent_row(agent)
        if not replace and self._db.dialect == "sqlite":
            return await self._insert_agent_sqlite(agent, row)
        async with self._db.transaction() as tx:
            if replace:
                await tx.executemany(_UPSERT_AGENT, [row])  # no need to wait: see Driver
                await _delete_labels(tx, agent.agent_id)
            elif not await tx.execute(f"{_INSERT_AGENT} ON CONFLICT (id) DO NOTHING", *row):
                return False
            await tx.executemany(
                "INSERT INTO agent_capabilities (agent_id, name) VALUES ($1, $2)",
                [(agent.agent_id, name) for name in sorted(set(agent.capabilities))],
            )
            await tx.executemany(
                "INSERT INTO agent_tags (agent_id, tag) VALUES ($1, $2)",
                [(agent.agent_id, tag) for tag in sorted(set(agent.tags))],
            )
        return True

    async def _insert_agent_sqlite(self, agent: Agent, row: tuple[Any, ...]) -> bool:
        """A new agent in one write block that never waits for the event loop.

        SQLite has one writer for every caller; a block that awaited a
        statement's result (the insert's row count, to decide on the labels)
        would hold it across an event-loop round trip, which under load is
        hundreds of milliseconds per registration for everyone. Here every
        statement is queued at once: the labels are written only if no agent
        of that id exists yet (the writer runs the block's statements in
        order, alone), then the agent row with ``ON CONFLICT DO NOTHING``.
        Whether this call created it is read afterwards, on a reader: an
        existing agent is refused up front; a registration of the same id
        committed in between is told apart by its content (an identical one
        is the same registration made twice, and both may report success).
        """
        agent_id = agent.agent_id
        if await self._db.fetch("SELECT 1 FROM agents WHERE id = $1", agent_id):
            return False
        absent = "WHERE NOT EXISTS (SELECT 1 FROM agents WHERE id = $1)"
        async with self._db.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO agent_capabilities (agent_id, name) SELECT $1, $2 {absent}",
                [(agent_id, name) for name in sorted(set(agent.capabilities))],
            )
            await tx.executemany(
                f"INSERT INTO agent_tags (agent_id, tag) SELECT $1, $2 {absent}",
                [(agent_id, tag) for tag in sorted(set(agent.tags))],
            )
            await tx.executemany(f"{_INSERT_AGENT} ON CONFLICT (id) DO NOTHING", [row])
        stored = await self._db.fetch(
            "SELECT tenant, name, version, card, registered_at FROM agents WHERE id = $1",
            agent_id,
        )
        mine = (row[1], row[2], row[3], row[5], row[8])
        return bool(stored) and tuple(stored[0]) == mine

    async def get_agent(self, agent_id: str) -> Agent | None:
        rows = await self._db.fetch(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1", agent_id)
        return _agent(rows[0]) if rows else None

    async def delete_agent(self, agent_id: str) -> bool:
        async with self._db.transaction() as tx:
            await _delete_labels(tx, agent_id)
            return await tx.execute("DELETE FROM agents WHERE id = $1", agent_id) > 0

    async def query_agents(self, query: AgentQuery) -> list[Agent]:
        args = _Args()
        conditions = []
        if query.capabilities:
            conditions.append(_has_all("agent_capabilities", "name", query.capabilities, args))
        if query.tags:
            conditions.append(_has_all("agent_tags", "tag", query.tags, args))
        if query.status is not None:
            conditions.append(f"status = {args(str(query.status))}")
        if query.tenant is not None:
            conditions.append(f"tenant = {args(query.tenant)}")
        if query.name_pattern is not None:
            pattern = query.name_pattern.translate(_GLOB_TO_LIKE)
            conditions.append(f"lower(name) LIKE lower({args(pattern)}) ESCAPE '\\'")
        sql = (
            f"SELECT {_AGENT_COLUMNS} FROM agents{_where(conditions)} "
            f"ORDER BY name, id LIMIT {args(query.limit)} OFFSET {args(query.offset)}"
        )
        return [_agent(row) for row in await self._db.fetch(sql, *args)]

    async def touch_agents(self, beats: Sequence[tuple[str, float]]) -> None:
        if not beats:
            return
        active, inactive = str(AgentStatus.ACTIVE), str(AgentStatus.INACTIVE)
        async with self._db.transaction() as tx:
            await tx.executemany(
                "UPDATE agents SET last_seen = $2, "
                "updated_at = CASE WHEN status = $3 THEN $2 ELSE updated_at END, "
                "status = CASE WHEN status = $3 THEN $4 ELSE status END "
                "WHERE id = $1",
                [(agent_id, float(ts), inactive, active) for agent_id, ts in beats],
            )

    async def expire_agents(self, cutoff: float, now: float) -> list[tuple[str, str]]:
        rows = await self._db.fetch(
            "UPDATE agents SET status = $3, updated_at = $2 "
            "WHERE status = $4 AND last_seen < $1 RETURNING id, tenant",
            float(cutoff),
            float(now),
            str(AgentStatus.INACTIVE),
            str(AgentStatus.ACTIVE),
        )
        return [(row[0], row[1]) for row in rows]

    async def count_agents(self) -> dict[str, int]:
        return _counts(await self._db.fetch("SELECT status, COUNT(*) FROM agents GROUP BY status"))

    # -- tasks ----------------------------------------------------------------

    async def insert_task(self, task: Task) -> bool:
        return await self._db.execute(_INSERT_TASK, *_task_row(task)) > 0

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._db.fetch("SELECT body FROM tasks WHERE id = $1", task_id)
        return _tasks(rows)[0] if rows else None

    async def update_task(self, task: Task) -> bool:
        return await self._db.execute(_UPDATE_TASK, *_task_row(task), task.version - 1) > 0

    async def query_tasks(self, query: TaskQuery) -> list[Task]:
        args = _Args()
        conditions = []
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
        if query.tenant is not None:
            conditions.append(f"tenant = {args(query.tenant)}")
        sql = (
            f"SELECT body FROM tasks{_where(conditions)} "
            f"ORDER BY created_at, id LIMIT {args(query.limit)} OFFSET {args(query.offset)}"
        )
        return _tasks(await self._db.fetch(sql, *args))

    async def pending_tasks(self, limit: int) -> list[Task]:
        rows = await self._db.fetch(
            "SELECT body FROM tasks WHERE status = $1 "
            "ORDER BY priority DESC, created_at, id LIMIT $2",
            str(TaskStatus.PENDING),
            limit,
        )
        return _tasks(rows)

    async def due_tasks(self, now: float, limit: int) -> list[Task]:
        args = _Args()
        sql = (
            f"SELECT body FROM tasks WHERE status IN ({args.many(_ACTIVE_TASK)}) "
            f"AND deadline IS NOT NULL AND deadline < {args(float(now))} "
            f"ORDER BY deadline, id LIMIT {args(limit)}"
        )
        return _tasks(await self._db.fetch(sql, *args))

    async def agent_loads(self, agent_ids: Sequence[str]) -> dict[str, int]:
        unique = list(dict.fromkeys(agent_ids))
        loads: dict[str, int] = {}
        for start in range(0, len(unique), _CHUNK):
            args = _Args()
            sql = (
                f"SELECT agent_id, COUNT(*) FROM tasks "
                f"WHERE status IN ({args.many(_ACTIVE_TASK)}) "
                f"AND agent_id IN ({args.many(unique[start : start + _CHUNK])}) "
                "GROUP BY agent_id"
            )
            loads.update(_counts(await self._db.fetch(sql, *args)))
        return loads

    async def least_loaded_agent(self, capabilities: Sequence[str], tenant: str) -> str | None:
        args = _Args()
        conditions = [f"status = {args(str(AgentStatus.ACTIVE))}", f"tenant = {args(tenant)}"]
        if capabilities:
            conditions.append(_has_all("agent_capabilities", "name", capabilities, args))
        # Walks agents_load (tenant, status, active_tasks, name, id) in order.
        rows = await self._db.fetch(
            f"SELECT id FROM agents{_where(conditions)} "
            "ORDER BY active_tasks, name, id LIMIT 1",
            *args,
        )
        return str(rows[0][0]) if rows else None

    async def count_tasks(self) -> dict[str, int]:
        return _counts(await self._db.fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status"))

    # -- API keys -------------------------------------------------------------

    async def put_api_key(self, key: ApiKey) -> bool:
        changed = await self._db.execute(
            f"INSERT INTO api_keys ({_API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (id) DO NOTHING",
            key.id,
            key.name,
            key.tenant,
            _json(key.scopes),
            key.agent_id,
            key.hash,
            float(key.created_at),
            None if key.revoked_at is None else float(key.revoked_at),
        )
        return changed > 0

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        rows = await self._db.fetch(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
        )
        return _api_key(rows[0]) if rows else None

    async def list_api_keys(self, tenant: str | None) -> list[ApiKey]:
        args = _Args()
        where = "" if tenant is None else f" WHERE tenant = {args(tenant)}"
        rows = await self._db.fetch(
            f"SELECT {_API_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, id", *args
        )
        return [_api_key(row) for row in rows]

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        changed = await self._db.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            key_id,
            float(now),
        )
        return changed > 0

    # -- events ---------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        count = len(events)
        if self._db.dialect == "sqlite":
            # Ids computed by the INSERT from the counter it follows: nothing in the
            # block waits for a result, so the single writer never waits for the loop.
            async with self._db.transaction() as tx:
                head = await tx.fetch_pipelined(
                    "UPDATE event_seq SET n = n + $1 RETURNING n", count
                )
                await tx.executemany(
                    f"INSERT INTO events ({_EVENT_COLUMNS}) "
                    "SELECT n - $7 + $1, $2, $3, $4, $5, $6 FROM event_seq",
                    [
                        (i, e.type, float(e.timestamp), e.source, e.tenant, _json(e.data), count)
                        for i, e in enumerate(events, 1)
                    ],
                )
            first = int((await head)[0][0]) - count + 1
            return [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
        async with self._db.transaction() as tx:
            rows = await tx.fetch("UPDATE event_seq SET n = n + $1 RETURNING n", count)
            first = int(rows[0][0]) - count + 1
            stored = [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
            await tx.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (e.id, e.type, float(e.timestamp), e.source, e.tenant, _json(e.data))
                    for e in stored
                ],
            )
        return stored

    async def read_events(
        self, after_id: int, limit: int, tenant: str | None = None
    ) -> list[Event]:
        args = _Args()
        conditions = [f"id > {args(int(after_id))}"]
        if tenant is not None:
            conditions.append(f"tenant = {args(tenant)}")
        rows = await self._db.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events{_where(conditions)} "
            f"ORDER BY id LIMIT {args(int(limit))}",
            *args,
        )
        return [_event(row) for row in rows]

    async def last_event_id(self) -> int:
        rows = await self._db.fetch("SELECT n FROM event_seq")
        return int(rows[0][0])

    async def trim_events(self, keep: int, older_than: float) -> int:
        last = await self.last_event_id()
        return await self._db.execute(
            "DELETE FROM events WHERE id <= $1 OR timestamp < $2", last - keep, float(older_than)
        )

    # -- LLM usage ----------------------------------------------------------------

    async def add_llm_usage(self, rows: Sequence[LlmUsage]) -> None:
        async with self._db.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO llm_usage ({_LLM_USAGE_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (day, tenant, agent_id, provider, model) DO UPDATE SET "
                "requests = llm_usage.requests + excluded.requests, "
                "prompt_tokens = llm_usage.prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = llm_usage.completion_tokens + excluded.completion_tokens, "
                "cost = llm_usage.cost + excluded.cost",
                [
                    (
                        r.day,
                        r.tenant,
                        r.agent_id,
                        r.provider,
                        r.model,
                        r.requests,
                        r.prompt_tokens,
                        r.completion_tokens,
                        float(r.cost),
                    )
                    for r in rows
                ],
            )

    async def llm_usage(self, day: str, tenant: str | None = None) -> list[LlmUsage]:
        args = _Args()
        conditions = [f"day = {args(day)}"]
        if tenant is not None:
            conditions.append(f"tenant = {args(tenant)}")
        rows = await self._db.fetch(
            f"SELECT {_LLM_USAGE_COLUMNS} FROM llm_usage{_where(conditions)} "
            "ORDER BY tenant, agent_id, provider, model",
            *args,
        )
        return [
            LlmUsage(
                day=r[0],
                tenant=r[1],
                agent_id=r[2],
                provider=r[3],
                model=r[4],
                requests=int(r[5]),
                prompt_tokens=int(r[6]),
                completion_tokens=int(r[7]),
                cost=float(r[8]),
            )
            for r in rows
        ]

    async def llm_tenant_totals(self, day: str) -> dict[str, tuple[int, int, float]]:
        rows = await self._db.fetch(
            "SELECT tenant, SUM(requests), SUM(prompt_tokens + completion_tokens), SUM(cost) "
            "FROM llm_usage WHERE day = $1 GROUP BY tenant",
            day,
        )
        return {r[0]: (int(r[1]), int(r[2]), float(r[3])) for r in rows}


async def _delete_labels(tx: Driver, agent_id: str) -> None:
    """Child rows go explicitly: SQLite runs with ``foreign_keys=OFF``. Their counts
    are not needed, so the statements are pipelined (see :meth:`Driver.executemany`)."""
    await tx.executemany("DELETE FROM agent_capabilities WHERE agent_id = $1", [(agent_id,)])
    await tx.executemany("DELETE FROM agent_tags WHERE agent_id = $1", [(agent_id,)])
