"""The PostgreSQL driver: an asyncpg pool.

asyncpg checks parameter types strictly: DOUBLE PRECISION columns need
``float`` (an ``int`` is refused), which :mod:`agentcore.store.sql` ensures.

A unit of work (:meth:`PostgresDatabase.unit`) begins its transaction at its
first write, and a unit whose only write is its last one sends that write
and the events it causes as one statement, which commits on its own: a
task's creation or transition is a read and one statement, not BEGIN, a
read, two writes and COMMIT (asyncpg cannot pipeline them).

asyncpg comes with the ``postgres`` extra (``extras.py``): it is imported when
a :class:`PostgresDatabase` is made, so the gateway imports without it.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

from agentcore.errors import QueryTimeout, StoreUnavailable
from agentcore.extras import POSTGRES
from agentcore.store.database import Driver, Fuse


def _driver() -> Any:
    """asyncpg, or :class:`ConfigError` naming the extra that installs it."""
    return POSTGRES.require()


@functools.cache
def _unavailable() -> tuple[type[BaseException], ...]:
    """What asyncpg raises when the server cannot be reached or used."""
    asyncpg = _driver()
    return (
        OSError,  # includes TimeoutError
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
    )


@contextmanager
def _translated() -> Iterator[None]:
    # The except clauses are evaluated only when something was raised, which
    # only a database opened (so asyncpg imported) can do.
    try:
        yield
    except _driver().QueryCanceledError as exc:
        raise QueryTimeout(
            f"the query ran past the statement time limit and was stopped ({exc}); "
            "narrow it (filters, a smaller limit) or page with a cursor"
        ) from exc
    except _unavailable() as exc:
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


def _abandon(conn: Any) -> None:
    """Close ``conn`` at once: a statement on it was cancelled (a request deadline).

    asyncpg cancels a statement by sending a cancel request on a new connection
    and, before the connection goes back to the pool, waits for that request
    with no time limit: against a server that accepts connections but does not
    answer (hung, stopped, a network partition) the cancelled request never
    finished, holding its pool slot (tests/store/test_postgres_faults.py). A
    closed connection ends the server's side too; the pool opens a new one when
    it is needed.
    """
    conn.terminate()


@asynccontextmanager
async def _transaction(conn: Any) -> AsyncIterator[None]:
    """``conn.transaction()`` (a savepoint when nested), but a cancelled block closes
    the connection (:func:`_abandon`) instead of waiting on a ROLLBACK."""
    tx = conn.transaction()
    try:
        await tx.start()
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
    except asyncio.CancelledError:
        _abandon(conn)
        raise


class _Session:
    """Statements on a pool (each on any free connection) or on one connection."""

    dialect = "postgresql"

    def __init__(self, target: Any, *, pooled: bool = False) -> None:
        self._target = target  # asyncpg.Pool (pooled) or asyncpg.Connection
        self._pooled = pooled

    async def _call(self, method: str, *args: Any) -> Any:
        """``method`` of an asyncpg connection, on this session's (or a pooled) one."""
        with _translated():
            if not self._pooled:
                conn = self._target
                try:
                    return await getattr(conn, method)(*args)
                except asyncio.CancelledError:
                    _abandon(conn)
                    raise
            async with self._target.acquire() as conn:
                try:
                    return await getattr(conn, method)(*args)
                except asyncio.CancelledError:
                    _abandon(conn)
                    raise

    async def execute(self, sql: str, *args: Any) -> int:
        return _rowcount(await self._call("execute", sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._call("fetch", sql, *args)
        return rows

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if params:
            await self._call("executemany", sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """Already on one connection: a nested block is a savepoint."""
        with _translated():
            async with _transaction(self._target):
                yield self


#: A SELECT that takes row locks must run inside the transaction.
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|NO\s+KEY\s+UPDATE|SHARE|KEY\s+SHARE)\b", re.IGNORECASE)


class PostgresUnit:
    """A unit of work's statements: the transaction begins at the first write.

    Under READ COMMITTED each statement reads its own snapshot, so a plain read
    before the first write sees what it would see inside the transaction; it
    runs on any pooled connection, and a unit that only reads holds none. A
    read that locks rows (``FOR UPDATE``, ``FOR SHARE``) begins the transaction.
    """

    dialect = "postgresql"

    def __init__(self, db: PostgresDatabase, stack: AsyncExitStack) -> None:
        self._db = db
        self._stack = stack
        self._session: _Session | None = None
        self._fuse: Fuse | None = None
        #: The fused statement's row, once it has run; nothing may be written after it.
        self.fused: Sequence[Any] | None = None

    @property
    def begun(self) -> bool:
        return self._session is not None

    def fuse_next_write(self, fuse: Fuse) -> None:
        """Send the next write as ``fuse`` makes it, on its own: it commits by itself.
        Only for a unit that has not begun; its row is :attr:`fused` afterwards."""
        if self._session is not None:
            raise RuntimeError("a write has run in this unit already: nothing to fuse with")
        self._fuse = fuse

    async def _begun(self) -> _Session:
        if self.fused is not None:
            raise RuntimeError("the unit's last write has committed: nothing may follow it")
        if self._session is None:
            self._session = await self._stack.enter_async_context(self._db.connection())
        return self._session

    async def execute(self, sql: str, *args: Any) -> int:
        fuse, self._fuse = self._fuse, None
        if fuse is not None:
            fused_sql, fused_args = fuse(sql, args)
            rows = await self._db.fetch(fused_sql, *fused_args)
            self.fused = rows[0]
            return int(rows[0][0])
        return await (await self._begun()).execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        if self._session is None and sql.startswith("SELECT") and not _LOCKING.search(sql):
            return await self._db.fetch(sql, *args)
        if self._fuse is not None:
            raise RuntimeError("a fused write is an execute, not a fetch")
        return await (await self._begun()).fetch(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._fuse is not None:
            raise RuntimeError("a fused write is one statement, not executemany")
        await (await self._begun()).executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """A nested block: a savepoint in the (now begun) transaction."""
        session = await self._begun()
        async with session.transaction() as tx:
            yield tx


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
        self._asyncpg = _driver()  # chosen here: a missing driver stops startup
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
            self._pool = await self._asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                reset=_keep_session,
                server_settings={
                    "statement_timeout": str(self._statement_timeout_ms),
                    # Every statement is prepared once per connection and its shape
                    # fixes the index it walks; replanning each execution (the
                    # default for the first ones, and whenever PostgreSQL guesses a
                    # custom plan is cheaper) cost more server time than running it
                    # (performance-history.md, "The workload", commits d39ae63 to
                    # 3cacfe8).
                    "plan_cache_mode": "force_generic_plan",
                    # Every query walks an index and stops at a small limit: a
                    # parallel plan's worker start-up only costs time here.
                    "max_parallel_workers_per_gather": "0",
                },
            )
        except (*_unavailable(), self._asyncpg.PostgresError) as exc:
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
        async with self.connection() as session:
            yield session

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Session]:
        """One pooled connection from BEGIN to COMMIT."""
        with _translated():
            async with self._slots, self._live_pool().acquire() as conn, _transaction(conn):
                yield _Session(conn)

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[PostgresUnit]:
        """A unit of work: a transaction that begins at its first write (:class:`PostgresUnit`)."""
        self._live_pool()
        with _translated():
            async with AsyncExitStack() as stack:
                yield PostgresUnit(self, stack)

    def _session(self) -> _Session:
        return _Session(self._live_pool(), pooled=True)

    def _live_pool(self) -> Any:
        if self._pool is None:
            raise StoreUnavailable("postgresql store is closed")
        return self._pool
