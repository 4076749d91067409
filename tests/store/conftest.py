"""Backends for the store contract: SQLite in memory, SQLite on disk, PostgreSQL.

The PostgreSQL leg uses a throwaway database on ``AGENTCORE_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), created once per
session and dropped at the end. Unreachable means skipped, unless
``AGENTCORE_REQUIRE_SERVICES=1`` makes it a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from agentcore.store import Store, open_store

T = TypeVar("T")

PG_ADMIN_URL = os.environ.get(
    "AGENTCORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

BACKENDS = [
    "sqlite-memory",
    "sqlite-file",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


def _run(coro: Coroutine[Any, Any, T]) -> T:
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name, url = _run(create_pg_database())
    yield url
    _run(drop_pg_database(name))


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend: str = request.param
    if backend == "sqlite-memory":
        return "sqlite://:memory:"
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path}/data/agentcore.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, empty store; closed after the test."""
    store = open_store(store_url)
    await store.open()
    if store_url.startswith("postgresql"):
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute("TRUNCATE agents, agent_capabilities, agent_tags, tasks, api_keys")
        finally:
            await conn.close()
    yield store
    await store.close()
