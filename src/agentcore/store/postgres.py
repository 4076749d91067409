"""The PostgreSQL driver: an asyncpg pool.

asyncpg checks parameter types strictly: DOUBLE PRECISION columns need
``float`` (an ``int`` is refused), which :mod:`agentcore.store.sql` ensures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from agentcore.errors import QueryTimeout, StoreUnavailable
from agentcore.store.database import Driver

_UNAVAILABLE = (
    OSError,  # includes TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except asyncpg.QueryCanceledError as exc:
        raise QueryTimeout(
            f"the query ran past the statement time limit and was stopped ({exc}); "
            "narrow it (filters, a smaller limit) or page with a cursor"
        ) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"postgresql: {exc}") from exc


async def _keep_session(conn: Any) -> None:
    """Release without asyncpg's reset query (``RESET ALL``, ``UNLISTEN *``, ...): a
    round trip on every release, which doubled the cost of a read. The gateway
    leaves nothing in a session to reset: settings are ``SET LOCAL``, locks are
    transaction-scoped, and it never listens."""


def _rowcount(status: str) -> int:
    """``"UPDATE 3"`` -> 3, ``"INSERT 0 1"`` -> 1; 0 for commands without a count."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class _Session:
    """Statements on a pool (each on any free connection) or on one connection."""

    dialect = "postgresql"

    def __init__(self, target: Any) -> None:
        self._target = target  # asyncpg.Pool or asyncpg.Connection

    async def execute(self, sql: str, *args: Any) -> int:
        with _translated():
            return _rowcount(await self._target.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        with _translated():
            rows: list[Sequence[Any]] = await self._target.fetch(sql, *args)
            return rows

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if params:
            with _translated():
                await self._target.executemany(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """Already on one connection: a nested block is a savepoint."""
        with _translated():
            async with self._target.transaction():
                yield self


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_timeout_s: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._statement_timeout_ms = max(1, round(statement_timeout_s * 1000))
        self._pool: Any = None  # asyncpg.Pool
        #: One slot per pooled connection, granted first come first served. asyncpg's
        #: pool alone did not serve its callers in arrival order under a closed loop
        #: of concurrent reads (tests/store/test_postgres.py): some waited behind
        #: dozens of later calls, and 64 concurrent readers saw a p99 of a second.
        self._slots = asyncio.Semaphore(max_size)  # made again by open(), on its loop

    async def open(self) -> None:
        """Any refusal while connecting (auth, unknown database) is ``StoreUnavailable`` too."""
        self._slots = asyncio.Semaphore(self._max_size)
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                reset=_keep_session,
                server_settings={
                    "statement_timeout": str(self._statement_timeout_ms),
                    # Every statement is prepared once per connection and its shape
                    # fixes the index it walks; replanning each execution (the
                    # default for the first ones, and whenever PostgreSQL guesses a
                    # custom plan is cheaper) cost more server time than running it.
                    "plan_cache_mode": "force_generic_plan",
                    # Every query walks an index and stops at a small limit: a
                    # parallel plan's worker start-up only costs time here.
                    "max_parallel_workers_per_gather": "0",
                },
            )
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"postgresql: {exc}") from exc

    def serve(self) -> None:
        """The statement time limit is set on every connection of the pool already."""

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._slots:
            return await self._session().execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._slots:
            return await self._session().fetch(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._slots:
            await self._session().executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        with _translated():
            async with self._slots, self._live_pool().acquire() as conn, conn.transaction():
                yield _Session(conn)

    def _session(self) -> _Session:
        return _Session(self._live_pool())

    def _live_pool(self) -> Any:
        if self._pool is None:
            raise StoreUnavailable("postgresql store is closed")
        return self._pool
