"""The SQLite driver: every statement runs on the event loop's own thread.

A registry or task query costs less in SQLite itself than handing it to a
thread and back (a future, a cross-thread wake-up and, under load, a wait for
the GIL). So the driver calls :mod:`sqlite3` directly, between two loop
steps, and never hands work to a thread (performance-history.md, "The
workload", "On the loop against the threads", has the measurement behind
this choice).

Connections
    A file database has two: the writer, the only one that writes, and a
    reader (``PRAGMA query_only``) for plain ``SELECT`` statements while the
    writer has a transaction open. In WAL mode the reader sees exactly what
    has been committed: never the inside of an open transaction, always every
    transaction acknowledged before. Between transactions the writer answers
    reads itself: SQLite drops a connection's whole page cache when another
    one has committed, so the reader starts cold after every commit and the
    writer does not. An in-memory database cannot be shared between
    connections, so it has only the writer.

Transactions
    ``transaction()`` holds the writer (an :class:`asyncio.Lock`) while its
    block runs and is rolled back when the block raises. A block that awaits
    nothing but its own statements runs without yielding to the loop, so the
    lock is never contended then. A statement outside a block is a block of
    its own.

Group commit
    A commit writes every page the transaction changed to the WAL, one system
    call each, which costs more than the statements of a typical state change.
    So once serving, the blocks of one loop turn share a transaction: the
    first one begins it (``BEGIN IMMEDIATE``) and a callback at the end of the
    turn commits them together. No block returns before that ``COMMIT`` has
    succeeded; if it fails, every block of the batch fails.

    A block that raises before it changed a row leaves the batch as it was. A
    block that raises after it wrote takes the whole batch down: it is rolled
    back and every block in it fails (:class:`~agentcore.errors.StoreUnavailable`,
    a retryable error). Blocks raise after writing only on faults; the state
    changes check before they write. A savepoint per block would spare the
    others, but SQLite copies every page a block changes into the savepoint's
    journal, and with statement journals nested in it the journal's upkeep
    grew with the block (quadratic): measured, that cost more than the
    statements (performance-history.md, "The workload", seventh session).
    WAL with ``synchronous=NORMAL`` keeps every committed transaction when
    the process is killed (only an OS crash or a power loss can lose the last
    ones), so "acknowledged" means durable. Checkpoints (copying the WAL back
    into the database file, with an ``fsync``) run in a thread of their own
    instead of inside a commit on the loop; once the WAL is large the writer
    starts it over after a commit (see :class:`_Checkpointer`).

Other processes
    Several workers may share one file. SQLite's busy handler would block the
    loop while another process holds the write lock, so the writer runs with
    ``busy_timeout=0`` and ``BEGIN IMMEDIATE`` is retried with an async sleep
    for up to ``busy_timeout_s``; then the caller gets
    :class:`~agentcore.errors.StoreUnavailable`.

Long statements
    A statement that runs longer than ``statement_timeout_s`` is interrupted
    (a progress handler) and answered with
    :class:`~agentcore.errors.QueryTimeout`, so one expensive query cannot stall
    every other request on the loop for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from agentcore.datadir import FILE_MODE, private_dir, private_file, tighten
from agentcore.errors import AgentCoreError, QueryTimeout, StoreUnavailable
from agentcore.store.database import Driver

MEMORY = ":memory:"

#: Pages kept in memory per connection, in KiB (SQLite's default is 2 MiB). A task
#: insert touches about ten index pages at random places; past the default cache
#: each one became a read system call.
CACHE_KIB = 65_536
_COMMON_PRAGMAS = (
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=OFF",
    f"PRAGMA cache_size=-{CACHE_KIB}",
    # Statement journals (a write that fires triggers keeps one) in memory: as
    # files they cost a system call per page. Without a savepoint around them each
    # one starts empty, so memory stays bounded by the largest statement.
    "PRAGMA temp_store=MEMORY",
)
_READER_PRAGMAS = (
    "PRAGMA busy_timeout=5000",
    "PRAGMA query_only=ON",
    f"PRAGMA cache_size=-{CACHE_KIB}",
)
#: How long opening a connection retries a pragma the database is locked for.
#: Switching to WAL takes an exclusive lock and SQLite can answer "locked" at
#: once, without its busy handler, while another process opens the same new
#: file (several workers starting together).
PRAGMA_RETRY_S = 5.0
#: SQLite virtual-machine steps between two looks at the statement's deadline.
PROGRESS_STEPS = 20_000

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


@functools.lru_cache(maxsize=2048)
def _numbered(sql: str) -> str:
    """``$1`` to ``?1``: SQLite's numbered parameters take the same positional args."""
    return _PLACEHOLDER.sub(r"?\1", sql)


@functools.lru_cache(maxsize=2048)
def _is_select(sql: str) -> bool:
    """Only a plain ``SELECT`` goes to the reader (``UPDATE ... RETURNING`` is a fetch too)."""
    return sql.lstrip()[:6].upper() == "SELECT"


def _private(path: str) -> None:
    """The database file and its companions readable by this user only (``datadir.py``).

    A missing parent directory is created ``0700``. The file is created ``0600``
    before SQLite opens it, and SQLite gives the ``-wal``, ``-shm`` and
    ``-journal`` files it makes the database's mode; files left looser by an
    older version are tightened.
    """
    parent = Path(path).parent
    if not parent.exists():
        private_dir(parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(path + suffix, FILE_MODE)


def _connect(path: str, pragmas: Sequence[str]) -> sqlite3.Connection:
    if path != MEMORY:
        _private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            _execute_retrying(conn, pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _execute_retrying(conn: sqlite3.Connection, sql: str) -> None:
    """``sql``, retried for up to :data:`PRAGMA_RETRY_S` while the database is locked.

    Only while opening (before the gateway serves), so the sleep stalls nothing.
    """
    deadline = time.monotonic() + PRAGMA_RETRY_S
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


class _Connection:
    """One sqlite3 connection with a per-statement deadline."""

    __slots__ = ("conn", "deadline", "timeout_s")

    def __init__(self, conn: sqlite3.Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self.deadline = 0.0
        if timeout_s > 0:
            conn.set_progress_handler(self._progress, PROGRESS_STEPS)

    def _progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0

    def _translated(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return QueryTimeout(
                f"the query ran longer than {self.timeout_s:g} s and was stopped; "
                "narrow it (filters, a smaller limit) or page with a cursor"
            )
        code = getattr(exc, "sqlite_errorcode", 0)  # errors of the module itself carry none
        if isinstance(exc, OSError) or (
            isinstance(exc, sqlite3.DatabaseError) and code & 0xFF in _UNAVAILABLE
        ):
            return StoreUnavailable(f"sqlite: {exc}")
        return exc

    def run(self, kind: str, sql: str, args: Any) -> Any:
        self.deadline = time.monotonic() + self.timeout_s
        try:
            if kind == "execute":
                return self.conn.execute(sql, args).rowcount
            if kind == "executemany":
                self.conn.executemany(sql, args)
                return None
            return self.conn.execute(sql, args).fetchall()
        except Exception as exc:
            error = self._translated(exc)
            if error is exc:
                raise
            raise error from exc


#: Most blocks committed together; past it the batch commits at once.
MAX_BATCH_UNITS = 256
#: Seconds between two WAL checkpoints of the checkpointer thread.
CHECKPOINT_INTERVAL_S = 0.5
#: WAL frames (pages, 64 MiB) past which the writer starts the WAL over after a commit.
WAL_RESET_FRAMES = 16_384


class _Batch:
    """The blocks of one loop turn: they commit together, then are answered."""

    __slots__ = ("committed", "loop", "units")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.committed: asyncio.Future[None] = loop.create_future()
        # A block cancelled while it waits leaves the outcome to no one: taken here.
        self.committed.add_done_callback(_consume)
        self.units = 0


async def _committed(batch: _Batch) -> None:
    """Return once ``batch`` has committed; raise what its commit raised.

    The commit was scheduled (``call_soon``) before this block's next step, so
    one yield usually finds it done. Waiting on the future instead woke the
    block only after every request that arrived in the meantime: a write
    answered a full loop turn later than a read.
    """
    committed = batch.committed
    if not committed.done():
        await asyncio.sleep(0)
    if not committed.done():  # its commit was put off (a block held the writer)
        await asyncio.shield(committed)
    committed.result()


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Checkpointer:
    """A thread that copies the WAL back into the database file every
    :data:`CHECKPOINT_INTERVAL_S`: a checkpoint writes and syncs the file, work
    that must not run on the event loop (``wal_autocheckpoint`` would run it
    inside a commit). ``PASSIVE`` never waits for, nor blocks, readers or the
    writer.

    Under a steady stream of commits a passive checkpoint never catches up
    with the last frame, and SQLite starts the WAL over only after one that
    did: the file grew by hundreds of megabytes a minute. So once the WAL
    holds :data:`WAL_RESET_FRAMES` frames the thread asks for a reset
    (``reset_wanted``) and the writer, right after its next commit, runs a
    ``RESTART`` checkpoint itself: it holds the write lock already, the
    reader is between statements, and what is left to copy is what was
    committed since the passive checkpoint; the next transaction writes the
    WAL from its start. That pauses the loop for the checkpoint's syncs,
    once per :data:`WAL_RESET_FRAMES` pages written. ``TRUNCATE`` took
    longer: shrinking the file discards its blocks on the disk (both timed in
    performance-history.md, "The workload", "The WAL restart").
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="agentcore-sqlite-checkpoint", daemon=True
        )
        #: Set by the thread, taken by the writer after a commit.
        self.reset_wanted = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL_S):
                # A failed checkpoint is retried at the next interval; the WAL only grows.
                with contextlib.suppress(sqlite3.Error):
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= WAL_RESET_FRAMES:
                        self.reset_wanted = True
        finally:
            conn.close()


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        statement_timeout_s: float = 1.0,
        busy_timeout_s: float = 5.0,
    ) -> None:
        """``path`` is a file (parent directories are created) or ``":memory:"``.

        ``statement_timeout_s``: longest a statement may run (0: unbounded).
        ``busy_timeout_s``: longest a write waits for another process's write lock.
        """
        self._path = path
        self._statement_timeout_s = statement_timeout_s
        self._busy_timeout_s = busy_timeout_s
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        self._lock = asyncio.Lock()
        #: Once serving, file databases group the blocks of one loop turn into one commit.
        self._grouped = False
        self._batch: _Batch | None = None
        self._commit_wanted = False
        self._checkpointer: _Checkpointer | None = None
        #: Transactions committed since this object was made (tests, benchmarks).
        self.commits = 0
        #: WAL restarts run by the writer (:class:`_Checkpointer`).
        self.wal_resets = 0

    async def open(self) -> None:
        """Connect. Statements are unbounded until :meth:`serve` (migrations run between)."""
        try:
            writer = _connect(self._path, _COMMON_PRAGMAS)
        except Exception as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc
        self._writer = _Connection(writer, 0.0)
        if self._path != MEMORY:
            try:
                reader = _connect(self._path, _READER_PRAGMAS)
            except Exception as exc:
                writer.close()
                self._writer = None
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            self._reader = _Connection(reader, 0.0)

    def serve(self) -> None:
        """From now on statements are bounded and ``BEGIN`` never blocks the loop."""
        writer = self._live()
        writer.conn.execute("PRAGMA busy_timeout=0")
        self._writer = _Connection(writer.conn, self._statement_timeout_s)
        if self._reader is not None:
            self._reader = _Connection(self._reader.conn, self._statement_timeout_s)
        self._grouped = self._path != MEMORY
        if self._grouped and self._checkpointer is None:
            writer.conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self._path)
            self._checkpointer.start()

    async def close(self) -> None:
        """Waits for a transaction in progress; idempotent."""
        async with self._lock:
            if self._writer is not None:
                self._commit_batch(self._writer)
            for conn in (self._reader, self._writer):
                if conn is not None:
                    conn.conn.close()
            self._writer = self._reader = None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await asyncio.to_thread(checkpointer.stop)

    def _live(self) -> _Connection:
        writer = self._writer
        if writer is None:
            raise StoreUnavailable("sqlite store is closed")
        return writer

    # -- statements outside a block ---------------------------------------------------

    async def execute(self, sql: str, *args: Any) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        query = _numbered(sql)
        if _is_select(query):
            if self._batch is None and not self._lock.locked():
                # No transaction open: the writer sees what is committed, from a warm
                # cache (the reader drops its whole cache after every commit).
                rows: list[Sequence[Any]] = self._live().run("fetch", query, args)
                return rows
            reader = self._reader
            if reader is not None:
                rows = reader.run("fetch", query, args)
                return rows
        async with self.transaction() as tx:
            return await tx.fetch(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if params:
            async with self.transaction() as tx:
                await tx.executemany(sql, params)

    # -- transactions -------------------------------------------------------------------

    def unit(self) -> AbstractAsyncContextManager[Driver]:
        """A unit of work: a transaction, group-committed with its neighbours."""
        return self.transaction()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        if not self._grouped:
            async with self._lock:
                writer = self._live()
                await self._begin(writer)
                try:
                    yield _InTransaction(writer)
                except BaseException:
                    _rollback(writer.conn)
                    raise
                self._commit_or_raise(writer)
            return
        async with self._lock:
            writer = self._live()
            batch = self._batch
            if batch is None:
                await self._begin(writer)
                batch = self._batch = _Batch(asyncio.get_running_loop())
                batch.loop.call_soon(self._commit)  # once this loop turn's work is done
            conn = writer.conn
            changed = conn.total_changes
            try:
                yield _InTransaction(writer)
            except BaseException:
                if conn.total_changes != changed or not conn.in_transaction:
                    self._lose(batch, writer)
                raise
            batch.units += 1
            if batch.units >= MAX_BATCH_UNITS:
                self._commit_batch(writer)
        if self._commit_wanted:
            self._commit_wanted = False
            batch.loop.call_soon(self._commit)
        await _committed(batch)

    def _commit_or_raise(self, writer: _Connection) -> None:
        try:
            writer.conn.execute("COMMIT")
        except Exception as exc:
            _rollback(writer.conn)
            raise StoreUnavailable(f"sqlite: commit failed: {exc}") from exc
        self.commits += 1
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.reset_wanted:
            checkpointer.reset_wanted = False
            # Busy (the thread is checkpointing): the thread asks again.
            with contextlib.suppress(AgentCoreError, sqlite3.Error):
                writer.run("fetch", "PRAGMA wal_checkpoint(RESTART)", ())
                self.wal_resets += 1

    def _commit(self) -> None:
        """End of a loop turn: commit the batch, unless a block is still inside it
        (then the block commits it as it leaves)."""
        if self._batch is None:
            return
        if self._lock.locked():
            self._commit_wanted = True
            return
        writer = self._writer
        if writer is not None:
            self._commit_batch(writer)

    def _commit_batch(self, writer: _Connection) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        try:
            self._commit_or_raise(writer)
        except StoreUnavailable as exc:
            batch.committed.set_exception(exc)
        else:
            batch.committed.set_result(None)

    def _lose(self, batch: _Batch, writer: _Connection) -> None:
        """The batch cannot commit: roll it back and fail every block that was in it."""
        _rollback(writer.conn)
        if self._batch is batch:
            self._batch = None
        if not batch.committed.done():
            batch.committed.set_exception(
                StoreUnavailable("sqlite: the transaction holding this write was rolled back")
            )

    async def _begin(self, writer: _Connection) -> None:
        """``BEGIN IMMEDIATE``; while another process writes, retried after async sleeps."""
        delay = 0.0005
        deadline = 0.0
        while True:
            try:
                writer.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreUnavailable(f"sqlite: {exc}") from exc
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._busy_timeout_s
                elif now >= deadline:
                    raise StoreUnavailable(
                        f"sqlite: the database stayed locked by another process "
                        f"for {self._busy_timeout_s:g} s"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


def _undo(conn: sqlite3.Connection, savepoint: str) -> bool:
    """Roll ``savepoint`` back; False when even that failed."""
    try:
        conn.execute(f"ROLLBACK TO {savepoint}")
        conn.execute(f"RELEASE {savepoint}")
    except Exception:
        return False
    return True


def _rollback(conn: sqlite3.Connection) -> None:
    """Best effort: a failed rollback leaves the connection in a transaction that the
    next ``BEGIN`` reports."""
    if conn.in_transaction:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")


class _InTransaction:
    """The driver a ``transaction()`` block sees: its statements run on the writer now."""

    dialect = "sqlite"

    __slots__ = ("_writer",)

    def __init__(self, writer: _Connection) -> None:
        self._writer = writer

    async def execute(self, sql: str, *args: Any) -> int:
        rowcount: int = self._writer.run("execute", _numbered(sql), args)
        return rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self._writer.run("fetch", _numbered(sql), args)
        return rows

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if params:
            self._writer.run("executemany", _numbered(sql), params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """Already inside one: a nested block is a savepoint."""
        conn = self._writer.conn
        conn.execute("SAVEPOINT nested")
        try:
            yield self
        except BaseException:
            _undo(conn, "nested")  # best effort: the block's own error propagates
            raise
        conn.execute("RELEASE nested")
