"""Databases for the tests: throwaway PostgreSQL databases and the backend list.

The PostgreSQL leg uses a throwaway database on ``AGENTCORE_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), created once per
session and dropped at the end. Unreachable means skipped, unless
``AGENTCORE_REQUIRE_SERVICES=1`` makes it a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

T = TypeVar("T")

PG_ADMIN_URL = os.environ.get(
    "AGENTCORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

#: The SQL backends: SQLite in memory, SQLite on disk, PostgreSQL.
SQL_BACKENDS = [
    "sqlite-memory",
    "sqlite-file",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]
#: Every backend a repository has: the SQL ones and the in-memory one.
BACKENDS = ["memory", *SQL_BACKENDS]

#: Tables emptied between tests on the shared PostgreSQL database.
TABLES = (
    "agents, agent_capabilities, agent_tags, tasks, api_keys, llm_usage, "
    "webhooks, webhook_deliveries, webhook_attempts, events"
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run outside the test's event loop (a sync fixture may not use it)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database_url(name: str) -> str:
    return urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))


async def create_pg_database() -> tuple[str, str]:
    """Create a fresh database; return its name and URL, or skip/fail when unreachable."""
    name = f"agentcore_test_{secrets.token_hex(6)}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc!r}"
        if os.environ.get("AGENTCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return name, _database_url(name)


async def drop_pg_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
