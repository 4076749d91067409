"""Shared fixtures: an in-process gateway (SQLite in memory, manual clock), real servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from hypothesis import settings

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.repositories import Repositories, open_repositories
from tests import databases
from tests.support import ServerProcess, free_port, make_config

# Property tests explore new examples on a developer's machine; in CI
# (AGENTCORE_REQUIRE_SERVICES=1) they replay a fixed, derandomized set so a
# landing is decided by the code, not by luck. HYPOTHESIS_PROFILE overrides.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE",
        "ci" if os.environ.get("AGENTCORE_REQUIRE_SERVICES") == "1" else "explore",
    )
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["sqlite://:memory:", "memory://"], ids=["sqlite", "memory"])
async def gateway(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[Gateway]:
    """An in-process gateway on SQLite in memory, and again on the memory backend."""
    app = create_app(make_config(database={"url": request.param}), clock=clock)
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> ServerProcess:
        data = data_dir or tmp_path / "data"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
        full_env.update(env or {})
        server = ServerProcess(
            ["--data-dir", str(data), "--log-level", "warning", *args],
            port or free_port(),
            full_env,
            tmp_path / f"server-{len(started)}.log",
        )
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# -- databases: every repository contract runs over each backend ----------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name, url = databases.run(databases.create_pg_database())
    yield url
    databases.run(databases.drop_pg_database(name))


def _backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend: str = request.param
    if backend == "memory":
        return "memory://"
    if backend == "sqlite-memory":
        return "sqlite://:memory:"
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path}/data/agentcore.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=databases.SQL_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each SQL backend in turn."""
    return _backend_url(request, tmp_path)


@pytest.fixture(params=databases.BACKENDS)
def repos_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each backend in turn, memory included."""
    return _backend_url(request, tmp_path)


@pytest.fixture
async def repos(repos_url: str) -> AsyncIterator[Repositories]:
    """Open, empty repositories on each backend; closed after the test."""
    opened = open_repositories(repos_url)
    await opened.open()
    if repos_url.startswith("postgresql"):
        conn = await asyncpg.connect(repos_url)
        try:
            await conn.execute(f"TRUNCATE {databases.TABLES}")
            await conn.execute("UPDATE event_seq SET n = 0")
            await conn.execute("UPDATE webhook_cursor SET position = 0")
        finally:
            await conn.close()
    yield opened
    await opened.close()
