"""The schema every repository shares, as numbered migrations, and :func:`migrate`.

Columns duplicate the fields that are filtered or sorted on; JSON columns
(``agents.card``, ``agents.capabilities``, ``agents.tags``, ``tasks.body``,
``api_keys.scopes``) hold the rest, so a row decodes back into exactly the
struct that was stored. Each migration is applied once, in order, in one
transaction; a statement that the dialects spell differently is given per
dialect.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentcore.errors import ConfigError
from agentcore.models import ACTIVE_TASK, AgentStatus, TaskStatus
from agentcore.store.database import Database

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
_STATUS_COUNTERS_SQLITE = (
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
    *_STATUS_COUNTERS_SQLITE,
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

#: From migration 8 agent and task ids are scoped by tenant: every key, join and
#: trigger carries the tenant, so two tenants can hold the same id and neither
#: learns that the other does. The tables as migrations 1 to 7 left them, with
#: the new keys (SQLite rebuilds them; old migrations are never edited).
_TENANT_KEYED_TABLES = {
    "agents": """(
        id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        status TEXT NOT NULL,
        card TEXT NOT NULL,
        capabilities TEXT NOT NULL,
        tags TEXT NOT NULL,
        registered_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        active_tasks INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, id)
    )""",
    "agent_capabilities": """(
        agent_id TEXT NOT NULL,
        name TEXT NOT NULL,
        tenant TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT '',
        agent_name TEXT NOT NULL DEFAULT '',
        active_tasks INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, agent_id, name)
    )""",
    "agent_tags": """(
        agent_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        tenant TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT '',
        agent_name TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (tenant, agent_id, tag)
    )""",
    "tasks": """(
        id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        agent_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION,
        version INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (tenant, id)
    )""",
}
_TENANT_KEYED_COLUMNS = {
    "agents": "id, tenant, name, version, status, card, capabilities, tags, "
    "registered_at, updated_at, last_seen, active_tasks",
    "agent_capabilities": "agent_id, name, tenant, status, agent_name, active_tasks",
    "agent_tags": "agent_id, tag, tenant, status, agent_name",
    "tasks": "id, tenant, type, status, priority, agent_id, created_at, updated_at, "
    "deadline, version, body",
}
#: Every index of the rebuilt tables as migration 7 left them, except
#: ``tasks_agent_status``, which leads with the tenant now.
_TENANT_KEYED_INDEXES = (
    "CREATE INDEX agents_status_last_seen ON agents (status, last_seen)",
    "CREATE INDEX agents_load ON agents (tenant, status, active_tasks, name, id)",
    "CREATE INDEX agents_tenant_status_name ON agents (tenant, status, name, id)",
    "CREATE INDEX agents_tenant_name ON agents (tenant, name, id)",
    "CREATE INDEX agent_capabilities_load "
    "ON agent_capabilities (name, tenant, status, active_tasks, agent_name, agent_id)",
    "CREATE INDEX agent_capabilities_discover "
    "ON agent_capabilities (name, tenant, status, agent_name, agent_id)",
    "CREATE INDEX agent_tags_discover ON agent_tags (tag, tenant, status, agent_name, agent_id)",
    *(
        f"CREATE INDEX tasks_tenant_{column} ON tasks (tenant, {column}, created_at, id)"
        for column in ("status", "agent_id", "type", "priority")
    ),
    "CREATE INDEX tasks_tenant_created ON tasks (tenant, created_at, id)",
    "CREATE INDEX tasks_pending ON tasks (status, priority DESC, created_at, id)",
    "CREATE INDEX tasks_deadline ON tasks (deadline, id) WHERE deadline IS NOT NULL",
)
_TENANT_TASK_LOAD_SQLITE = (
    f"""CREATE TRIGGER tasks_load_insert AFTER INSERT ON tasks
    WHEN NEW.agent_id IS NOT NULL AND NEW.status IN ({_ACTIVE})
    BEGIN
        UPDATE agents SET active_tasks = active_tasks + 1
            WHERE tenant = NEW.tenant AND id = NEW.agent_id;
    END""",
    f"""CREATE TRIGGER tasks_load_update AFTER UPDATE OF status, agent_id ON tasks
    WHEN OLD.status IS NOT NEW.status OR OLD.agent_id IS NOT NEW.agent_id
    BEGIN
        UPDATE agents SET active_tasks = active_tasks - 1
            WHERE tenant = OLD.tenant AND id = OLD.agent_id AND OLD.status IN ({_ACTIVE});
        UPDATE agents SET active_tasks = active_tasks + 1
            WHERE tenant = NEW.tenant AND id = NEW.agent_id AND NEW.status IN ({_ACTIVE});
    END""",
    f"""CREATE TRIGGER tasks_load_delete AFTER DELETE ON tasks
    WHEN OLD.agent_id IS NOT NULL AND OLD.status IN ({_ACTIVE})
    BEGIN
        UPDATE agents SET active_tasks = active_tasks - 1
            WHERE tenant = OLD.tenant AND id = OLD.agent_id;
    END""",
    """CREATE TRIGGER agents_labels_status AFTER UPDATE OF status ON agents
    WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE agent_capabilities SET status = NEW.status
            WHERE tenant = NEW.tenant AND agent_id = NEW.id;
        UPDATE agent_tags SET status = NEW.status WHERE tenant = NEW.tenant AND agent_id = NEW.id;
    END""",
    """CREATE TRIGGER agents_labels_load AFTER UPDATE OF active_tasks ON agents
    WHEN OLD.active_tasks IS NOT NEW.active_tasks
    BEGIN
        UPDATE agent_capabilities SET active_tasks = NEW.active_tasks
            WHERE tenant = NEW.tenant AND agent_id = NEW.id;
    END""",
    *_STATUS_COUNTERS_SQLITE,
)
#: SQLite cannot change a primary key: each table is rebuilt (its triggers and
#: indexes go with it), the triggers that name the others first.
_TENANT_KEYS_SQLITE = (
    *(
        f"DROP TRIGGER {name}"
        for name in (
            "tasks_load_insert",
            "tasks_load_update",
            "tasks_load_delete",
            "agents_labels_status",
            "agents_labels_load",
        )
    ),
    *(
        statement
        for table, definition in _TENANT_KEYED_TABLES.items()
        for statement in (
            f"CREATE TABLE {table}_tenant_keyed {definition}",
            f"INSERT INTO {table}_tenant_keyed ({_TENANT_KEYED_COLUMNS[table]}) "
            f"SELECT {_TENANT_KEYED_COLUMNS[table]} FROM {table}",
            f"DROP TABLE {table}",
            f"ALTER TABLE {table}_tenant_keyed RENAME TO {table}",
        )
    ),
    *_TENANT_KEYED_INDEXES,
    "CREATE INDEX tasks_agent_status ON tasks (tenant, agent_id, status)",
    *_TENANT_TASK_LOAD_SQLITE,
)
_TENANT_KEYS_POSTGRESQL = (
    "ALTER TABLE agents DROP CONSTRAINT agents_pkey, ADD PRIMARY KEY (tenant, id)",
    "ALTER TABLE agent_capabilities DROP CONSTRAINT agent_capabilities_pkey, "
    "ADD PRIMARY KEY (tenant, agent_id, name)",
    "ALTER TABLE agent_tags DROP CONSTRAINT agent_tags_pkey, "
    "ADD PRIMARY KEY (tenant, agent_id, tag)",
    "ALTER TABLE tasks DROP CONSTRAINT tasks_pkey, ADD PRIMARY KEY (tenant, id)",
    "DROP INDEX tasks_agent_status",
    "CREATE INDEX tasks_agent_status ON tasks (tenant, agent_id, status)",
    f"""CREATE OR REPLACE FUNCTION agentcore_task_load() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        IF TG_OP <> 'INSERT' AND OLD.agent_id IS NOT NULL AND OLD.status IN ({_ACTIVE}) THEN
            UPDATE agents SET active_tasks = active_tasks - 1
                WHERE tenant = OLD.tenant AND id = OLD.agent_id;
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.agent_id IS NOT NULL AND NEW.status IN ({_ACTIVE}) THEN
            UPDATE agents SET active_tasks = active_tasks + 1
                WHERE tenant = NEW.tenant AND id = NEW.agent_id;
        END IF;
        RETURN NULL;
    END
    $body$""",
    """CREATE OR REPLACE FUNCTION agentcore_labels_status() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        UPDATE agent_capabilities SET status = NEW.status
            WHERE tenant = NEW.tenant AND agent_id = NEW.id;
        UPDATE agent_tags SET status = NEW.status WHERE tenant = NEW.tenant AND agent_id = NEW.id;
        RETURN NULL;
    END
    $body$""",
    """CREATE OR REPLACE FUNCTION agentcore_labels_load() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        UPDATE agent_capabilities SET active_tasks = NEW.active_tasks
            WHERE tenant = NEW.tenant AND agent_id = NEW.id;
        RETURN NULL;
    END
    $body$""",
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
    (
        {"sqlite": _TENANT_KEYS_SQLITE, "postgresql": _TENANT_KEYS_POSTGRESQL},
        # A load counts only the tasks of the agent's own tenant (before, an id
        # reused by another tenant also counted the first one's tasks). The
        # trigger copies each changed count to the capability rows.
        "UPDATE agents SET active_tasks = (SELECT COUNT(*) FROM tasks "
        "WHERE tasks.tenant = agents.tenant AND tasks.agent_id = agents.id "
        f"AND tasks.status IN ({_ACTIVE}))",
    ),
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
