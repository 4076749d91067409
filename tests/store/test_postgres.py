"""The PostgreSQL driver: how it shares its pool among concurrent requests.

The repository contracts cover what every backend does; this covers the pool.
"""

from __future__ import annotations

import asyncio
import itertools

from agentcore.store.postgres import PostgresDatabase

POOL_SIZE = 2
WORKERS = 16
CALLS = 25


async def test_connections_are_granted_in_arrival_order(postgres_url: str) -> None:
    """asyncpg's pool hands a released connection to a waiter, but a newcomer can
    take it first and the waiter queues again at the back: under a closed loop
    of concurrent reads (a load test's users) some waited seconds."""
    db = PostgresDatabase(postgres_url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    await db.open()
    arrivals = itertools.count()
    finished: list[int] = []

    async def user() -> None:
        for _ in range(CALLS):
            arrived = next(arrivals)
            await db.fetch("SELECT $1::int", arrived)
            finished.append(arrived)

    try:
        await asyncio.gather(*(user() for _ in range(WORKERS)))
    finally:
        await db.close()

    assert sorted(finished) == list(range(WORKERS * CALLS))
    # How many later arrivals were served before each call: with the pool's
    # connections granted in order, at most the calls running beside it.
    overtaken = [
        sum(1 for later in finished[:position] if later > arrived)
        for position, arrived in enumerate(finished)
    ]
    assert max(overtaken) <= 2 * POOL_SIZE
