"""The SQLite driver: one connection, used from one dedicated thread.

Every call runs on a single-worker thread pool, so the event loop never waits
on the disk and calls run in the order they were made. Coroutines share the
connection, so an :class:`asyncio.Lock` is held for each statement and for a
whole transaction (``BEGIN IMMEDIATE`` to ``COMMIT``/``ROLLBACK``).

WAL with ``synchronous=NORMAL``: a committed transaction survives a crash of
the process; the last ones may be lost if the machine loses power.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from agentcore.errors import StoreUnavailable
from agentcore.store.sql import Driver

T = TypeVar("T")

MEMORY = ":memory:"

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=OFF",
)

#: Primary result codes meaning "the database cannot be used right now".
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)

_PLACEHOLDER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> str:
    """``$1`` to ``?1``: SQLite's numbered parameters take the same positional args."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        """``path`` is a file (parent directories are created) or ``":memory:"``."""
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._unlocked = _Unlocked(self)

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentcore-sqlite")
        try:
            self._conn = await self._call(self._connect)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise

    async def close(self) -> None:
        async with self._lock:
            conn, thread = self._conn, self._thread
            self._conn = self._thread = None
            if conn is not None and thread is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
            if thread is not None:
                thread.shutdown(wait=False)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._unlocked.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._lock:
            return await self._unlocked.fetch(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._lock:
            await self._unlocked.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        async with self._lock:
            await self._unlocked.execute("BEGIN IMMEDIATE")
            try:
                yield self._unlocked
                await self._unlocked.execute("COMMIT")
            except BaseException:
                await self._run(_rollback)
                raise

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on the connection's thread; the caller holds the lock."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("sqlite store is closed")
        return await self._call(functools.partial(op, conn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise StoreUnavailable("sqlite store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
        except sqlite3.DatabaseError as exc:
            # Errors raised by the module itself (bad bindings) carry no code.
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _UNAVAILABLE:
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            raise
        except OSError as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self._path != MEMORY:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in _PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn


class _Unlocked:
    """The driver as seen by the holder of the lock (inside a transaction)."""

    dialect = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        query = _numbered(sql)
        return await self._db._run(lambda conn: conn.execute(query, args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        query = _numbered(sql)
        return await self._db._run(lambda conn: conn.execute(query, args).fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, params = _numbered(sql), list(rows)
        if params:
            await self._db._run(lambda conn: conn.executemany(query, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """Already inside one: the block joins it."""
        yield self


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
