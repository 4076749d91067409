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

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import msgspec

from agentcore import cursor
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
        statement or at its end)."""

    def transaction(self) -> AbstractAsyncContextManager[Driver]:
        """One connection from BEGIN to COMMIT; rolled back when the block raises.

        The yielded driver is the only one to use inside the block: the outer
        one may wait for the transaction to end (SQLite) and so deadlock.
        """


@runtime_checkable
class Database(Driver, Protocol):
    async def open(self) -> None:
        """Connect; :class:`~agentcore.errors.StoreUnavailable` when that fails."""

    def serve(self) -> None:
        """Migrated and about to serve: statement time limits apply from now on."""

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

_AGENT_STATUSES = sorted(str(status) for status in AgentStatus)
_TASK_STATUSES = sorted(str(status) for status in TaskStatus)

_STATUS_COUNTS_SQLITE = (
    """CREATE TABLE status_counts (
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (kind, status)
    )""",
    *(
        f"INSERT INTO status_counts (kind, status, n) VALUES ('{kind}', '{status}', "
        f"(SELECT COUNT(*) FROM {kind}s WHERE status = '{status}'))"
        for kind, statuses in (("agent", _AGENT_STATUSES), ("task", _TASK_STATUSES))
        for status in statuses
    ),
)

#: Label rows follow their agent's status and load; on SQLite the status counts
#: follow every row.
_FOLLOW_SQLITE = (
    """CREATE TRIGGER agents_labels_status AFTER UPDATE OF status ON agents
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE agent_capabilities SET status = NEW.status WHERE agent_id = NEW.id;
        UPDATE agent_tags SET status = NEW.status WHERE agent_id = NEW.id;
    END""",
    """CREATE TRIGGER agents_labels_load AFTER UPDATE OF active_tasks ON agents
    WHEN OLD.active_tasks IS NOT NEW.active_tasks
    BEGIN
        UPDATE agent_capabilities SET active_tasks = NEW.active_tasks WHERE agent_id = NEW.id;
    END""",
    *(
        f"""CREATE TRIGGER {kind}s_count_insert AFTER INSERT ON {kind}s
        BEGIN
            UPDATE status_counts SET n = n + 1 WHERE kind = '{kind}' AND status = NEW.status;
        END"""
        for kind in ("agent", "task")
    ),
    *(
        f"""CREATE TRIGGER {kind}s_count_update AFTER UPDATE OF status ON {kind}s
        WHEN OLD.status IS NOT NEW.status
        BEGIN
            UPDATE status_counts SET n = n - 1 WHERE kind = '{kind}' AND status = OLD.status;
            UPDATE status_counts SET n = n + 1 WHERE kind = '{kind}' AND status = NEW.status;
        END"""
        for kind in ("agent", "task")
    ),
    *(
        f"""CREATE TRIGGER {kind}s_count_delete AFTER DELETE ON {kind}s
        BEGIN
            UPDATE status_counts SET n = n - 1 WHERE kind = '{kind}' AND status = OLD.status;
        END"""
        for kind in ("agent", "task")
    ),
)
_FOLLOW_POSTGRESQL = (
    """CREATE FUNCTION agentcore_labels_status() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        UPDATE agent_capabilities SET status = NEW.status WHERE agent_id = NEW.id;
        UPDATE agent_tags SET status = NEW.status WHERE agent_id = NEW.id;
        RETURN NULL;
    END
    $body$""",
    """CREATE TRIGGER agents_labels_status AFTER UPDATE OF status ON agents
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION agentcore_labels_status()""",
    """CREATE FUNCTION agentcore_labels_load() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        UPDATE agent_capabilities SET active_tasks = NEW.active_tasks WHERE agent_id = NEW.id;
        RETURN NULL;
    END
    $body$""",
    """CREATE TRIGGER agents_labels_load AFTER UPDATE OF active_tasks ON agents
    FOR EACH ROW WHEN (OLD.active_tasks IS DISTINCT FROM NEW.active_tasks)
    EXECUTE FUNCTION agentcore_labels_load()""",
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
    (
        # Every list and discover query walks an index in its own order and stops
        # at its limit. Label rows carry their agent's tenant, status and name, so
        # discover by one capability (or tag) is one index range in name order;
        # capability rows carry the agent's load too, so picking the least-loaded
        # capable agent is the first entry of one range.
        *(
            f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
            for table in ("agent_capabilities", "agent_tags")
            for column in ("tenant", "status", "agent_name")
        ),
        "ALTER TABLE agent_capabilities ADD COLUMN active_tasks INTEGER NOT NULL DEFAULT 0",
        *(
            f"UPDATE {table} SET tenant = a.tenant, status = a.status, agent_name = a.name "
            f"FROM agents a WHERE a.id = {table}.agent_id"
            for table in ("agent_capabilities", "agent_tags")
        ),
        "UPDATE agent_capabilities SET active_tasks = a.active_tasks "
        "FROM agents a WHERE a.id = agent_capabilities.agent_id",
        "CREATE INDEX agent_capabilities_load "
        "ON agent_capabilities (name, tenant, status, active_tasks, agent_name, agent_id)",
        "DROP INDEX agent_capabilities_name",
        "DROP INDEX agent_tags_tag",
        "CREATE INDEX agent_capabilities_discover "
        "ON agent_capabilities (name, tenant, status, agent_name, agent_id)",
        "CREATE INDEX agent_tags_discover "
        "ON agent_tags (tag, tenant, status, agent_name, agent_id)",
        "DROP INDEX agents_name_id",
        "CREATE INDEX agents_tenant_status_name ON agents (tenant, status, name, id)",
        "CREATE INDEX agents_tenant_name ON agents (tenant, name, id)",
        "DROP INDEX tasks_status_priority_created",
        "DROP INDEX tasks_created_id",
        "DROP INDEX tasks_status_created_id",
        *(
            f"CREATE INDEX tasks_tenant_{column} ON tasks (tenant, {column}, created_at, id)"
            for column in ("status", "agent_id", "type", "priority")
        ),
        "CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at, id)",
        # The pending pass (highest priority, then oldest) and the deadline sweep.
        "CREATE INDEX tasks_pending ON tasks (status, priority DESC, created_at, id)",
        "CREATE INDEX tasks_deadline ON tasks (deadline, id) WHERE deadline IS NOT NULL",
        # SQLite: rows per status, kept by triggers, so metrics do not count a table on
        # the event loop. PostgreSQL counts (off the loop): there one counter row that
        # every task write updates would serialise the writers and bloat.
        {"sqlite": _STATUS_COUNTS_SQLITE, "postgresql": ()},
        {"sqlite": _FOLLOW_SQLITE, "postgresql": _FOLLOW_POSTGRESQL},
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
            await tx.execute("SET LOCAL statement_timeout = 0")  # an index on a big table
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


_AGENT_STATUS = {str(status): status for status in AgentStatus}
#: Entries kept by each :class:`_AgentRows` cache; emptied when full.
_CARDS_CACHED = 4096


class _AgentRows:
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


def _has_all(
    table: str,
    column: str,
    values: Iterable[str],
    args: _Args,
    agents: str = "agents",
    agent_id: str = "id",
) -> str:
    """Every value present for the agent: one primary-key probe per value and agent,
    so a query walks agents in its ORDER BY index and stops at its LIMIT (a grouped
    subquery would first list every agent that has them, per query)."""
    return " AND ".join(
        f"EXISTS (SELECT 1 FROM {table} l WHERE l.agent_id = {agents}.{agent_id} "
        f"AND l.{column} = {args(value)})"
        for value in sorted(set(values))
    )


#: Event ids deleted per transaction by :meth:`SqlStore.trim_events`.
TRIM_STEP = 5_000


def _page(limit: int, offset: int) -> str:
    """``LIMIT`` and ``OFFSET`` as literals (validated integers): with parameters there,
    PostgreSQL's generic plan assumes a tenth of the table is wanted and chose a
    parallel scan that took 6 ms instead of an index walk of 0.4 ms."""
    return f"LIMIT {int(limit)} OFFSET {int(offset)}"


def agents_sql(query: AgentQuery) -> tuple[str, list[Any]]:
    """The SQL of a list or discover query, shaped so that one index serves it in order.

    With a tenant and a status, a capability (or else a tag) drives the query
    through ``agent_capabilities_discover`` / ``agent_tags_discover`` (label,
    tenant, status, agent name, agent id); other labels are probed per row.
    Without labels, ``agents_tenant_status_name`` or ``agents_tenant_name``
    does. A name pattern filters the rows the walk meets. Either way the walk
    is in ``(name, id)`` order and stops at the limit.
    """
    args = _Args()
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
        pattern = query.name_pattern.translate(_GLOB_TO_LIKE)
        conditions.append(f"lower(a.name) LIKE lower({args(pattern)}) ESCAPE '\\'")
    if query.after is not None:
        name, last_id = cursor.decode(query.after)
        conditions.append(f"({order[0]}, {order[1]}) > ({args(str(name))}, {args(last_id)})")
    columns = ", ".join(f"a.{column}" for column in _AGENT_COLUMNS.split(", "))
    sql = (
        f"SELECT {columns} FROM {source}{_where(conditions)} "
        f"ORDER BY {order[0]}, {order[1]} {_page(query.limit, query.offset)}"
    )
    return sql, args


def tasks_sql(query: TaskQuery) -> tuple[str, list[Any]]:
    """The SQL of ``task.query``: with a tenant, one of the ``tasks_tenant_*`` indexes
    (tenant, filter column, created_at, id) serves it in order and it stops at
    the limit; other filters are checked on the rows walked."""
    args = _Args()
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
        created, last_id = cursor.decode(query.after)
        if not isinstance(created, float | int):
            raise cursor.invalid()
        conditions.append(f"(created_at, id) > ({args(float(created))}, {args(last_id)})")
    sql = (
        f"SELECT body FROM tasks{_where(conditions)} "
        f"ORDER BY created_at, id {_page(query.limit, query.offset)}"
    )
    return sql, args


def _counts(rows: list[Sequence[Any]]) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in rows}


# -- the store ----------------------------------------------------------------


_EVENT_COLUMNS = "id, type, timestamp, source, tenant, data"
_APPEND_EVENTS_POSTGRESQL = (
    "WITH s AS (UPDATE event_seq SET n = n + $1 RETURNING n), "
    f"i AS (INSERT INTO events ({_EVENT_COLUMNS}) "
    "SELECT s.n - $1 + x.ord, x.type, x.ts, x.source, x.tenant, x.data FROM s, "
    "unnest($2::text[], $3::float8[], $4::text[], $5::text[], $6::text[]) "
    "WITH ORDINALITY AS x(type, ts, source, tenant, data, ord)) "
    "SELECT n - $1 + 1 FROM s"
)


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
    """The store on one :class:`Driver`: the database, or one transaction of it
    (:meth:`transaction` yields a store bound to the transaction)."""

    def __init__(
        self, db: Driver, *, in_transaction: bool = False, rows: _AgentRows | None = None
    ) -> None:
        self._db = db
        self._in_transaction = in_transaction
        self._rows = rows or _AgentRows()

    @property
    def db(self) -> Database:
        """The driver, for stores of other concepts sharing this database (webhooks)."""
        db = self._db
        assert isinstance(db, Database)
        return db

    async def open(self) -> None:
        db = self.db
        await db.open()
        try:
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        db.serve()

    async def close(self) -> None:
        await self.db.close()

    async def check(self) -> None:
        await self._db.fetch("SELECT 1")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlStore]:
        async with self._db.transaction() as tx:
            yield SqlStore(tx, in_transaction=True, rows=self._rows)

    @asynccontextmanager
    async def _atomic(self) -> AsyncIterator[Driver]:
        """A transaction for statements that must commit together; inside one already,
        that one (a nested block would cost a savepoint, and on PostgreSQL round trips)."""
        if self._in_transaction:
            yield self._db
        else:
            async with self._db.transaction() as tx:
                yield tx

    # -- agents ---------------------------------------------------------------

    async def put_agent(self, agent: Agent, *, replace: bool) -> bool:
        row = _agent_row(agent)
        agent_id = agent.agent_id
        async with self._atomic() as tx:
            if replace:
                await tx.execute(_UPSERT_AGENT, *row)
                await tx.execute("DELETE FROM agent_capabilities WHERE agent_id = $1", agent_id)
                await tx.execute("DELETE FROM agent_tags WHERE agent_id = $1", agent_id)
            elif not await tx.execute(f"{_INSERT_AGENT} ON CONFLICT (id) DO NOTHING", *row):
                return False
            labelled = (agent_id, agent.tenant, str(agent.status), agent.name)
            await tx.executemany(
                "INSERT INTO agent_capabilities "
                "(agent_id, tenant, status, agent_name, name, active_tasks) "
                "VALUES ($1, $2, $3, $4, $5, (SELECT active_tasks FROM agents WHERE id = $1))",
                [(*labelled, name) for name in sorted(set(agent.capabilities))],
            )
            await tx.executemany(
                "INSERT INTO agent_tags (agent_id, tenant, status, agent_name, tag) "
                "VALUES ($1, $2, $3, $4, $5)",
                [(*labelled, tag) for tag in sorted(set(agent.tags))],
            )
        return True

    async def get_agent(self, agent_id: str) -> Agent | None:
        rows = await self._db.fetch(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1", agent_id)
        return self._rows.agent(rows[0]) if rows else None

    async def delete_agent(self, agent_id: str) -> bool:
        async with self._atomic() as tx:
            await tx.execute("DELETE FROM agent_capabilities WHERE agent_id = $1", agent_id)
            await tx.execute("DELETE FROM agent_tags WHERE agent_id = $1", agent_id)
            return await tx.execute("DELETE FROM agents WHERE id = $1", agent_id) > 0

    async def query_agents(self, query: AgentQuery) -> list[Agent]:
        sql, args = agents_sql(query)
        agent = self._rows.agent
        return [agent(row) for row in await self._db.fetch(sql, *args)]

    async def touch_agents(self, beats: Sequence[tuple[str, float]]) -> None:
        if not beats:
            return
        active, inactive = str(AgentStatus.ACTIVE), str(AgentStatus.INACTIVE)
        async with self._atomic() as tx:
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
        return await self._counts("agent")

    async def _counts(self, kind: str) -> dict[str, int]:
        if self._db.dialect == "postgresql":
            rows = await self._db.fetch(f"SELECT status, COUNT(*) FROM {kind}s GROUP BY status")
        else:
            rows = await self._db.fetch(
                "SELECT status, n FROM status_counts WHERE kind = $1 AND n > 0", kind
            )
        return {row[0]: int(row[1]) for row in rows}

    # -- tasks ----------------------------------------------------------------

    async def insert_task(self, task: Task) -> bool:
        return await self._db.execute(_INSERT_TASK, *_task_row(task)) > 0

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._db.fetch("SELECT body FROM tasks WHERE id = $1", task_id)
        return _tasks(rows)[0] if rows else None

    async def update_task(self, task: Task) -> bool:
        return await self._db.execute(_UPDATE_TASK, *_task_row(task), task.version - 1) > 0

    async def query_tasks(self, query: TaskQuery) -> list[Task]:
        sql, args = tasks_sql(query)
        return _tasks(await self._db.fetch(sql, *args))

    async def pending_tasks(self, limit: int) -> list[Task]:
        # Walks tasks_pending (status, priority DESC, created_at, id).
        rows = await self._db.fetch(
            "SELECT body FROM tasks WHERE status = $1 "
            f"ORDER BY priority DESC, created_at, id {_page(limit, 0)}",
            str(TaskStatus.PENDING),
        )
        return _tasks(rows)

    async def due_tasks(self, now: float, limit: int) -> list[Task]:
        # Walks the partial index tasks_deadline (SQLite would rather take the status
        # index and sort every active task: told which index to use).
        indexed = " INDEXED BY tasks_deadline" if self._db.dialect == "sqlite" else ""
        args = _Args()
        sql = (
            f"SELECT body FROM tasks{indexed} WHERE deadline IS NOT NULL "
            f"AND deadline < {args(float(now))} AND status IN ({args.many(_ACTIVE_TASK)}) "
            f"ORDER BY deadline, id {_page(limit, 0)}"
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
                f"SELECT d.agent_id FROM agent_capabilities d{_where(conditions)} "
                "ORDER BY d.active_tasks, d.agent_name, d.agent_id LIMIT 1"
            )
        rows = await self._db.fetch(sql, *args)
        return str(rows[0][0]) if rows else None

    async def count_tasks(self) -> dict[str, int]:
        return await self._counts("task")

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
        if self._db.dialect == "postgresql":
            # One round trip: the counter and every row in one statement.
            rows = await self._db.fetch(
                _APPEND_EVENTS_POSTGRESQL,
                count,
                [e.type for e in events],
                [float(e.timestamp) for e in events],
                [e.source for e in events],
                [e.tenant for e in events],
                [_json(e.data) for e in events],
            )
            first = int(rows[0][0])
            return [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
        async with self._atomic() as tx:
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
            f"ORDER BY id {_page(limit, 0)}",
            *args,
        )
        return [_event(row) for row in rows]

    async def last_event_id(self) -> int:
        rows = await self._db.fetch("SELECT n FROM event_seq")
        return int(rows[0][0])

    async def trim_events(self, keep: int, older_than: float) -> int:
        """In steps of :data:`TRIM_STEP` ids, a transaction each, so that no single
        statement holds the database (or, on SQLite, the event loop) for long."""
        last = await self.last_event_id()
        cutoff = last - keep
        young = await self._db.fetch(
            "SELECT id FROM events WHERE timestamp >= $1 ORDER BY timestamp LIMIT 1",
            float(older_than),
        )
        cutoff = max(cutoff, (int(young[0][0]) if young else last + 1) - 1)
        oldest = await self._db.fetch("SELECT id FROM events ORDER BY id LIMIT 1")
        if not oldest:
            return 0
        deleted = 0
        start = int(oldest[0][0])
        while start <= cutoff:
            end = min(cutoff, start + TRIM_STEP - 1)
            deleted += await self._db.execute(
                "DELETE FROM events WHERE id >= $1 AND id <= $2", start, end
            )
            start = end + 1
            await asyncio.sleep(0)
        return deleted

    # -- LLM usage ----------------------------------------------------------------

    async def add_llm_usage(self, rows: Sequence[LlmUsage]) -> None:
        async with self._atomic() as tx:
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
