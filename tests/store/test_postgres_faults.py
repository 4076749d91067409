"""The PostgreSQL driver against a server that stops answering (a private one, paused).

A statement cancelled there (a request's deadline) must give its caller back
at once and free its pool slot, not wait for asyncpg's cancel request, which
a paused server never answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from agentcore.store.postgres import PostgresDatabase
from tests.services import PrivateServer, pg_server

__all__ = ["pg_server"]  # a fixture, used by name

pytestmark = pytest.mark.server

#: Longer than a cancelled call may take to come back.
PROMPT_S = 1.0


@pytest.fixture
def paused(pg_server: tuple[PrivateServer, str]) -> Iterator[tuple[PrivateServer, str]]:
    server, _ = pg_server
    yield pg_server
    server.resume()


async def cancelled_within(coro: object, deadline_s: float) -> float:
    """Cancel ``coro`` after ``deadline_s``; the seconds until it came back."""
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(coro, deadline_s)  # type: ignore[arg-type]
    return time.monotonic() - start


@pytest.mark.parametrize("where", ["pool", "transaction"])
async def test_a_statement_cancelled_on_a_hung_server_returns_at_once(
    paused: tuple[PrivateServer, str], where: str
) -> None:
    server, url = paused
    db = PostgresDatabase(url, min_size=1, max_size=1, statement_timeout_s=5)
    await db.open()
    try:
        await db.fetch("SELECT 1")
        server.pause()

        async def in_transaction() -> None:
            async with db.transaction() as tx:
                await tx.fetch("SELECT 1")

        call = db.fetch("SELECT 1") if where == "pool" else in_transaction()
        assert await cancelled_within(call, 0.3) < PROMPT_S
        # The only pool slot is free again: the next call waits on the server, not on it.
        assert await cancelled_within(db.fetch("SELECT 1"), 0.3) < PROMPT_S

        server.resume()
        rows = await asyncio.wait_for(db.fetch("SELECT 2"), 5)
        assert rows[0][0] == 2
    finally:
        server.resume()
        await asyncio.wait_for(db.close(), 10)
