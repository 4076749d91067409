"""The SQL databases under the repositories: migrations, opening and closing them, and
the driver's transactions, on SQLite (in memory and on disk) and PostgreSQL.

What every backend does, memory included, is in the repository contracts
(``tests/*/test_repository.py``, ``tests/test_repositories.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcore.config import parse_url
from agentcore.errors import ConfigError, StoreUnavailable
from agentcore.models import TaskStatus
from agentcore.repositories import SqlRepositories, open_repositories
from agentcore.store.database import Database
from agentcore.store.postgres import PostgresDatabase
from agentcore.store.schema import MIGRATIONS, migrate, migration_statements
from agentcore.store.sqlite import SqliteDatabase
from tests import databases
from tests.support import make_agent, make_task, stored_loads


def database_for(url: str) -> Database:
    """The driver for a SQL URL, not yet open."""
    backend, target = parse_url(url)
    if backend == "postgresql":
        return PostgresDatabase(target, max_size=2)
    assert backend == "sqlite"
    return SqliteDatabase(target)


async def schema_versions(db: Database) -> list[int]:
    rows = await db.fetch("SELECT version FROM schema_version ORDER BY version")
    return [int(row[0]) for row in rows]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database with no schema at all, of each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    name, url = await databases.create_pg_database()
    try:
        yield url
    finally:
        await databases.drop_pg_database(name)


@pytest.fixture
async def db(fresh_url: str) -> AsyncIterator[Database]:
    """An open database with no schema at all, of each dialect."""
    database = database_for(fresh_url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


# -- migrations -----------------------------------------------------------------------


async def test_migrations_record_the_schema_version_once(db: Database) -> None:
    assert await migrate(db) == len(MIGRATIONS)
    assert await migrate(db) == len(MIGRATIONS)
    assert await schema_versions(db) == list(range(1, len(MIGRATIONS) + 1))


async def test_a_schema_newer_than_the_code_is_refused(db: Database) -> None:
    await migrate(db)
    await db.execute("INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS) + 1)
    with pytest.raises(ConfigError, match="newer"):
        await migrate(db)


async def test_opening_a_newer_schema_fails_and_leaves_the_database_closed(
    fresh_url: str,
) -> None:
    db = database_for(fresh_url)
    await db.open()
    try:
        await migrate(db)
        await db.execute("INSERT INTO schema_version (version) VALUES ($1)", 999)
    finally:
        await db.close()

    repos = open_repositories(fresh_url)
    with pytest.raises(ConfigError):
        await repos.open()
    with pytest.raises(StoreUnavailable):
        await repos.check()
    await repos.close()


async def test_open_is_idempotent_over_an_existing_schema(database_url: str) -> None:
    first = open_repositories(database_url)
    await first.open()
    second = open_repositories(database_url)
    await second.open()
    try:
        await second.check()
        assert isinstance(second, SqlRepositories)
        assert await schema_versions(second.database) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await second.close()
        await first.close()


async def migrate_to(db: Database, version: int) -> None:
    """Bring a database with no schema to ``version``, as a gateway of then left it."""
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
        for applied in range(1, version + 1):
            for statement in migration_statements(applied, tx.dialect):
                await tx.execute(statement)
            await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", applied)


async def test_migration_backfills_agent_loads(db: Database) -> None:
    """A database from before the load counter gets it counted from its tasks."""
    await migrate_to(db, 5)
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
            str(n),
            status,
            agent_id,
        )

    assert await migrate(db) == len(MIGRATIONS)

    rows = await db.fetch("SELECT id, active_tasks FROM agents ORDER BY id")
    assert [(str(r[0]), int(r[1])) for r in rows] == [("a", 2), ("b", 0)]
    # The triggers are in place from then on.
    await db.execute("UPDATE tasks SET status = 'completed' WHERE id = '0'")
    rows = await db.fetch("SELECT active_tasks FROM agents WHERE id = 'a'")
    assert int(rows[0][0]) == 1


async def test_concurrent_opens_migrate_once(fresh_url: str) -> None:
    """Several workers starting at once on a new database: each opens, one migrates."""
    opened = [open_repositories(fresh_url) for _ in range(4)]
    await asyncio.gather(*(repos.open() for repos in opened))
    try:
        await asyncio.gather(*(repos.check() for repos in opened))
        assert await opened[0].agents.put(make_agent("a"), replace=False)
        assert await opened[3].agents.get("default", "a") == make_agent("a")
        first = opened[1]
        assert isinstance(first, SqlRepositories)
        assert await schema_versions(first.database) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await asyncio.gather(*(repos.close() for repos in opened))


# -- the driver ---------------------------------------------------------------------


async def test_transaction_commits_or_rolls_back(database_url: str) -> None:
    db = database_for(database_url)
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
        assert [tuple(row) for row in await db.fetch("SELECT n FROM probe")] == [(2,)]
        with pytest.raises(Exception) as bad_sql:
            await db.execute("SELEC 1")
        assert not isinstance(bad_sql.value, StoreUnavailable)
        await db.execute("DROP TABLE probe")
    finally:
        await db.close()


async def test_a_closed_database_is_unavailable(database_url: str) -> None:
    db = database_for(database_url)
    with pytest.raises(StoreUnavailable):
        await db.fetch("SELECT 1")  # never opened
    await db.open()
    assert [tuple(row) for row in await db.fetch("SELECT 1")] == [(1,)]
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await db.fetch("SELECT 1")
    with pytest.raises(StoreUnavailable):
        await db.execute("SELECT 1")
    with pytest.raises(StoreUnavailable):
        async with db.transaction():
            pass


# -- databases that cannot be opened ----------------------------------------------------


async def test_unreachable_postgres_raises_store_unavailable() -> None:
    repos = open_repositories("postgres://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailable):
        await repos.open()


@pytest.mark.postgres
async def test_unknown_postgres_database_raises_store_unavailable(postgres_url: str) -> None:
    repos = open_repositories(postgres_url.rpartition("/")[0] + "/agentcore_test_missing")
    with pytest.raises(StoreUnavailable):
        await repos.open()


async def test_unopenable_sqlite_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    repos = open_repositories(f"sqlite:///{tmp_path}/file/agentcore.db")
    with pytest.raises(StoreUnavailable):
        await repos.open()
    (tmp_path / "dir.db").mkdir()
    repos = open_repositories(f"sqlite:///{tmp_path}/dir.db")
    with pytest.raises(StoreUnavailable):
        await repos.open()


async def test_migration_scopes_ids_by_tenant_and_keeps_every_row(fresh_url: str) -> None:
    """A database at version 7 (ids one namespace) keeps its agents, labels and tasks, and
    from then on the same id in another tenant is another row; loads and labels follow."""
    db = database_for(fresh_url)
    await db.open()
    try:
        await migrate_to(db, 7)
        # Rows as the gateway of version 7 wrote them (its key was the id alone).
        for agent_id, tenant in (("a", "default"), ("b", "other")):
            await db.execute(
                "INSERT INTO agents (id, tenant, name, version, status, card, capabilities, "
                "tags, registered_at, updated_at, last_seen) "
                "VALUES ($1, $2, $1, '1', 'active', '{}', '[]', '[]', 1, 1, 1)",
                agent_id,
                tenant,
            )
        for agent_id, tenant, name in (
            ("a", "default", "x"),
            ("a", "default", "y"),
            ("b", "other", "x"),
        ):
            await db.execute(
                "INSERT INTO agent_capabilities (agent_id, name, tenant, status, agent_name) "
                "VALUES ($1, $2, $3, 'active', $1)",
                agent_id,
                name,
                tenant,
            )
        await db.execute(
            "INSERT INTO agent_tags (agent_id, tag, tenant, status, agent_name) "
            "VALUES ('a', 't', 'default', 'active', 'a')"
        )
        tasks: list[tuple[str, str, str, str | None]] = [
            ("t1", "default", "assigned", "a"),
            ("t2", "default", "running", "a"),
            ("t3", "other", "pending", None),
        ]
        for task_id, tenant, status, holder in tasks:
            await db.execute(
                "INSERT INTO tasks (id, tenant, type, status, priority, agent_id, created_at, "
                "updated_at, deadline, version, body) "
                "VALUES ($1, $2, 't', $3, 5, $4, 1, 1, NULL, 1, '{}')",
                task_id,
                tenant,
                status,
                holder,
            )
        snapshot = {
            table: sorted(map(tuple, await db.fetch(f"SELECT * FROM {table}")))
            for table in ("agents", "agent_capabilities", "agent_tags", "tasks")
        }

        assert await migrate(db) == len(MIGRATIONS)

        for table, rows in snapshot.items():
            after = await db.fetch(f"SELECT * FROM {table}")
            assert sorted(map(tuple, after)) == rows, table
        repos = SqlRepositories(db)
        assert await stored_loads(repos) == {"a": 2}
        assert await repos.agents.least_loaded(["y"], "default") == "a"
        # Another tenant takes the same ids, each keyed and loaded on its own.
        assert await repos.agents.put(
            make_agent("a", capabilities=("y",), tenant="other"), replace=False
        )
        assert await repos.tasks.insert(
            make_task("t1", status=TaskStatus.ASSIGNED, agent_id="a", tenant="other")
        )
        assert await stored_loads(repos, "other") == {"a": 1, "b": 0}
        assert await stored_loads(repos) == {"a": 2}
        await db.execute("UPDATE tasks SET status = 'completed' WHERE tenant = 'default'")
        assert await stored_loads(repos) == {"a": 0}
        assert await stored_loads(repos, "other") == {"a": 1, "b": 0}
        assert await repos.agents.count() == {"active": 3}
        assert await repos.tasks.count() == {"completed": 2, "assigned": 1, "pending": 1}
        assert await repos.agents.least_loaded(["x"], "other") == "b"
        assert await repos.agents.delete("default", "a")
        assert await repos.agents.least_loaded(["y"], "other") == "a"
    finally:
        await db.close()
