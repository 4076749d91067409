"""The SQLite driver: one writer thread that group-commits, a pool of readers.

Writes
    Every write (``execute``, ``executemany``, a ``fetch`` that is not a
    ``SELECT``, every ``transaction()`` block) is a *unit* queued on the
    writer's inbox. One thread owns the only writing connection; when it is
    free it takes whatever is queued (at most ``max_batch`` units) and runs it
    as one SQLite transaction: ``BEGIN IMMEDIATE``, the units one after the
    other, ``COMMIT``. No caller is answered before the ``COMMIT`` that holds
    its work has returned, so "acknowledged" still means durable: WAL with
    ``synchronous=NORMAL`` keeps every committed transaction when the process
    is killed (only an OS crash or a power loss can lose the last ones).

    A failing unit fails only its own caller. A single statement that fails
    is undone by SQLite itself (statement rollback) and the transaction goes
    on; an ``executemany`` or a ``transaction()`` block runs inside a
    ``SAVEPOINT`` and is rolled back to it. Should SQLite abandon the whole
    transaction (disk full, I/O error), the units already run in it fail with
    :class:`~agentcore.errors.StoreUnavailable` and those not yet started go
    into the next batch. A failed ``COMMIT`` fails every unit of the batch.

    A ``transaction()`` block is interactive: its statements travel to the
    writer one by one while the writer waits for them, so the block should
    only compute between statements (the writer and the SQLite write lock
    are held meanwhile). Two things shorten that wait: the block's first
    statement is queued with the unit, and ``executemany`` inside a block is
    pipelined (it returns once queued; its error is raised by the block's next
    statement or by the end of the block, which is then rolled back). A
    block that sends nothing for ``tx_idle_timeout_s`` is rolled back and
    fails, so a stuck caller cannot stall every writer. Inside a block, use
    only the driver it yields: a write through the outer driver would wait for
    the batch that is waiting for the block.

Reads
    A ``fetch`` whose SQL starts with ``SELECT`` runs on one of
    ``read_connections`` read-only connections (``PRAGMA query_only``), each
    on its own thread: in WAL mode readers never wait for the writer and the
    writer never waits for them. Each read is its own read transaction, begun
    when it starts, so it sees every batch committed before: a caller that got
    an acknowledgement reads its own write. Reads never see uncommitted work.

Single-connection mode
    ``:memory:`` databases cannot be shared between connections, so they run
    with ``read_connections=0``: the writer's connection serves reads too,
    between batches (outside any transaction, so still only committed data).
    Writes are group-committed the same way.

Queues: the inbox is not bounded here. Each entry is a caller awaiting its
answer, so its length is bounded by the callers' own concurrency (the HTTP
layer's in-flight limit); the writer takes at most ``max_batch`` per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agentcore.errors import StoreUnavailable
from agentcore.store.sql import Driver, ready

MEMORY = ":memory:"

_WRITER_PRAGMAS = (
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=OFF",
)
#: How long opening a connection retries a pragma the database is locked for.
#: Switching to WAL takes an exclusive lock and SQLite can answer "locked" at
#: once, without its busy handler, while another process opens the same new
#: file (several workers starting together).
PRAGMA_RETRY_S = 5.0
_READER_PRAGMAS = (
    "PRAGMA busy_timeout=5000",
    "PRAGMA query_only=ON",
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


@functools.lru_cache(maxsize=1024)
def _is_select(sql: str) -> bool:
    """Only a plain ``SELECT`` goes to a reader (``UPDATE ... RETURNING`` is a fetch too)."""
    return sql.lstrip()[:6].upper() == "SELECT"


def _translated(exc: BaseException) -> BaseException:
    """The error a caller sees: :class:`StoreUnavailable` when the database cannot be used."""
    code = getattr(exc, "sqlite_errorcode", 0)  # errors raised by the module itself carry none
    if isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.DatabaseError) and code & 0xFF in _UNAVAILABLE
    ):
        error = StoreUnavailable(f"sqlite: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _connect(path: str, pragmas: Sequence[str]) -> sqlite3.Connection:
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            _execute_retrying(conn, pragma)
    except BaseException:
        conn.close()
        raise
    return conn


def _execute_retrying(conn: sqlite3.Connection, sql: str) -> None:
    """``sql``, retried for up to :data:`PRAGMA_RETRY_S` while the database is locked
    (called in the store's own threads: the sleep blocks no event loop)."""
    deadline = time.monotonic() + PRAGMA_RETRY_S
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def _run(conn: sqlite3.Connection, kind: str, sql: str, args: Any) -> Any:
    if kind == "execute":
        return conn.execute(sql, args).rowcount
    if kind == "executemany":
        conn.executemany(sql, args)
        return None
    return conn.execute(sql, args).fetchall()  # "fetch" and "read"


# -- answering the event loop from the writer thread ------------------------------

_Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


_LoopAnswer = tuple[asyncio.AbstractEventLoop, _Answer]


def _settle(answers: Sequence[_Answer]) -> None:
    for future, result, error in answers:
        if future.done():  # the caller was cancelled
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _answer(loop: asyncio.AbstractEventLoop, answers: list[_Answer]) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, answers)


# -- units ------------------------------------------------------------------------


class _Statement:
    """One statement outside a transaction block: a unit of its own.

    ``kind`` is ``execute``, ``fetch`` or ``executemany`` (writes, run in a
    batch) or ``read`` (single-connection mode: run between batches).
    """

    __slots__ = ("args", "future", "kind", "loop", "sql")

    def __init__(self, kind: str, sql: str, args: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.sql = sql
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def fail(self, error: BaseException) -> None:
        """Writer thread: answer with ``error`` now."""
        _answer(self.loop, [(self.future, None, error)])


#: A statement of a transaction block: kind, SQL, arguments, and the future
#: that awaits its result (None: pipelined, nobody waits).
_Request = tuple[str, str, Any, "asyncio.Future[Any] | None"]
_COMMIT = "commit"
_ROLLBACK = "rollback"


class _Transaction:
    """A ``transaction()`` block: a unit whose statements arrive while it runs.

    The event loop side puts requests on ``requests`` (statements, then
    ``_COMMIT`` or ``_ROLLBACK``); the writer takes them in order once the
    unit's turn has come. ``done`` is answered after the batch commits.
    State other than the queue is touched on the event loop only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests: queue.SimpleQueue[_Request | str] = queue.SimpleQueue()
        self.done: asyncio.Future[Any] = loop.create_future()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._error: BaseException | None = None
        self._ended = False

    def ask(self, kind: str, sql: str, args: Any) -> asyncio.Future[Any]:
        self._check()
        future: asyncio.Future[Any] = self.loop.create_future()
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        self.requests.put((kind, sql, args, future))
        return future

    def tell(self, kind: str, sql: str, args: Any) -> None:
        self._check()
        self.requests.put((kind, sql, args, None))

    def end(self, *, commit: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self.requests.put(_COMMIT if commit else _ROLLBACK)
        if not commit:
            if self.done.done() and not self.done.cancelled():
                self.done.exception()  # retrieved: the block's own error is what propagates
            self.done.cancel()

    def kill(self, error: BaseException) -> None:
        """Event loop: the writer gave the unit up; every waiter gets ``error``."""
        self._error = error
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(error)
        if not self.done.done():
            self.done.set_exception(error)

    def fail(self, error: BaseException) -> None:
        """Writer thread: give the unit up."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(self.kill, error)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._ended:
            raise RuntimeError("the transaction block has ended")


_Unit = _Statement | _Transaction


class _BatchLost(Exception):
    """SQLite rolled the whole batch back; ``error`` is what its units are told."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Counters:
    """Written by the writer thread, read anywhere (for tests and the benchmark)."""

    def __init__(self) -> None:
        self.batches = 0
        self.units = 0


# -- the writer thread --------------------------------------------------------------


class _Writer:
    """Owns the writing connection; everything here runs on the writer thread."""

    def __init__(
        self, path: str, max_batch: int, idle_timeout_s: float, counters: _Counters
    ) -> None:
        self.inbox: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()  # None: stop
        self._path = path
        self._max_batch = max_batch
        self._idle_timeout_s = idle_timeout_s
        self._counters = counters

    def serve(
        self,
        loop: asyncio.AbstractEventLoop,
        ready: asyncio.Future[None],
        stopped: asyncio.Future[None],
    ) -> None:
        """The thread's body: connect, answer ``ready``, run batches until told to stop."""
        try:
            conn = _connect(self._path, _WRITER_PRAGMAS)
        except Exception as exc:
            _answer(loop, [(ready, None, _translated(exc))])
            return
        _answer(loop, [(ready, None, None)])
        try:
            self._loop(conn)
        finally:
            conn.close()
            _answer(loop, [(stopped, None, None)])

    def _loop(self, conn: sqlite3.Connection) -> None:
        backlog: deque[_Unit] = deque()
        stopping = False
        while True:
            if not backlog:
                if stopping:
                    return
                first = self.inbox.get()
                if first is None:
                    return
                backlog.append(first)
            while not stopping:  # whatever is queued now
                try:
                    unit = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if unit is None:  # close() puts it last: nothing follows
                    stopping = True
                else:
                    backlog.append(unit)
            batch: list[_Unit] = []
            while backlog and len(batch) < self._max_batch:
                unit = backlog.popleft()
                if isinstance(unit, _Statement) and unit.kind == "read":
                    self._read(conn, unit)
                else:
                    batch.append(unit)
            if not batch:
                continue
            try:
                backlog.extendleft(reversed(self._batch(conn, batch)))
            except Exception as exc:  # a bug: tell everyone in the batch, keep serving
                _rollback(conn)
                error = StoreUnavailable(f"sqlite writer failed: {exc!r}")
                error.__cause__ = exc
                for unit in batch:
                    unit.fail(error)  # the answered ones ignore it

    def _read(self, conn: sqlite3.Connection, unit: _Statement) -> None:
        """Single-connection mode: a read between batches, outside any transaction."""
        try:
            rows = _run(conn, "read", unit.sql, unit.args)
        except Exception as exc:
            unit.fail(_translated(exc))
        else:
            _answer(unit.loop, [(unit.future, rows, None)])

    def _batch(self, conn: sqlite3.Connection, batch: list[_Unit]) -> list[_Unit]:
        """Run ``batch`` in one transaction; return the units to run again (batch lost)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            error = _translated(exc)
            for unit in batch:
                unit.fail(error)
            _rollback(conn)  # "within a transaction": one left open by a failed ROLLBACK
            return []
        answers: list[_LoopAnswer] = []
        for index, unit in enumerate(batch):
            try:
                if isinstance(unit, _Statement):
                    answer = self._statement(conn, unit)
                else:
                    answer = self._transaction(conn, unit)
            except _BatchLost as lost:
                _rollback(conn)
                self._fail(answers, lost.error)
                return batch[index + 1 :]
            if answer is not None:
                answers.append((unit.loop, answer))
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            _rollback(conn)
            self._fail(answers, _translated(exc))
            return []
        self._counters.batches += 1
        self._counters.units += len(answers)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for loop, answer in answers:
            by_loop.setdefault(loop, []).append(answer)
        for loop, settled in by_loop.items():
            _answer(loop, settled)
        return []

    @staticmethod
    def _fail(answers: list[_LoopAnswer], error: BaseException) -> None:
        """The work of these units was rolled back: each is told ``error`` instead."""
        for loop, (future, _result, _error) in answers:
            _answer(loop, [(future, None, error)])

    def _statement(self, conn: sqlite3.Connection, unit: _Statement) -> _Answer | None:
        """Run one statement; its answer waits for the COMMIT unless it failed."""
        atomic = unit.kind == "executemany"  # several executions: a savepoint makes them one
        try:
            if atomic:
                conn.execute("SAVEPOINT unit")
            result = _run(conn, unit.kind, unit.sql, unit.args)
            if atomic:
                conn.execute("RELEASE unit")
        except Exception as exc:
            error = _translated(exc)
            unit.fail(error)
            if not conn.in_transaction or (atomic and not _undo(conn)):
                raise _BatchLost(_lost(error)) from exc
            return None
        return (unit.future, result, None)

    def _transaction(self, conn: sqlite3.Connection, unit: _Transaction) -> _Answer | None:
        """Run a block's statements as they arrive, inside a savepoint."""
        try:
            conn.execute("SAVEPOINT unit")
        except Exception as exc:
            error = _translated(exc)
            unit.fail(error)
            if not conn.in_transaction:
                raise _BatchLost(_lost(error)) from exc
            return None
        failed: BaseException | None = None  # a pipelined statement failed
        while True:
            try:
                request = unit.requests.get(timeout=self._idle_timeout_s)
            except queue.Empty:
                request = _ROLLBACK
                failed = StoreUnavailable(
                    f"sqlite: transaction idle for {self._idle_timeout_s:g} s, rolled back"
                )
            if request == _COMMIT and failed is None:
                try:
                    conn.execute("RELEASE unit")
                except Exception as exc:
                    failed = _translated(exc)
                else:
                    return (unit.done, None, None)
            if isinstance(request, str):  # rollback, or a commit that cannot be
                if failed is not None:
                    unit.fail(failed)
                if not _undo(conn):
                    raise _BatchLost(_lost(failed or StoreUnavailable("sqlite: rollback failed")))
                return None
            kind, sql, args, future = request
            if failed is not None:
                if future is not None:
                    _answer(unit.loop, [(future, None, failed)])
                continue
            try:
                result = _run(conn, kind, sql, args)
            except Exception as exc:
                error = _translated(exc)
                if not conn.in_transaction:
                    unit.fail(error)
                    raise _BatchLost(_lost(error)) from exc
                if future is None:
                    failed = error
                else:  # SQLite undid the statement; the block decides what next
                    _answer(unit.loop, [(future, None, error)])
                continue
            if future is not None:
                _answer(unit.loop, [(future, result, None)])


def _lost(error: BaseException) -> StoreUnavailable:
    lost = StoreUnavailable(f"sqlite: the batch holding this write was rolled back ({error})")
    lost.__cause__ = error
    return lost


def _undo(conn: sqlite3.Connection) -> bool:
    """Roll back to and drop the unit's savepoint; False when that failed too."""
    try:
        conn.execute("ROLLBACK TO unit")
        conn.execute("RELEASE unit")
    except Exception:
        return False
    return True


def _rollback(conn: sqlite3.Connection) -> None:
    """Best effort: should it fail, the next batch's BEGIN fails, tells its callers and
    tries again."""
    if conn.in_transaction:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")


# -- the readers ----------------------------------------------------------------------


class _Readers:
    """``size`` threads, each with its own read-only connection, opened on first use."""

    def __init__(self, path: str, size: int) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="agentcore-sqlite-read")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def fetch(self, sql: str, args: Any) -> list[Sequence[Any]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._fetch, sql, args)
        except Exception as exc:
            error = _translated(exc)
            if error is exc:
                raise
            raise error from exc

    def _fetch(self, sql: str, args: Any) -> list[Sequence[Any]]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self._path, _READER_PRAGMAS)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        rows: list[Sequence[Any]] = conn.execute(sql, args).fetchall()
        return rows

    async def close(self) -> None:
        """Wait for running reads, then close every connection."""
        await asyncio.to_thread(self._executor.shutdown)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


# -- the driver -----------------------------------------------------------------------


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        read_connections: int = 4,
        max_batch: int = 256,
        tx_idle_timeout_s: float = 60.0,
    ) -> None:
        """``path`` is a file (parent directories are created) or ``":memory:"``.

        ``read_connections``: read-only connections (threads) for ``SELECT``s;
        0, and always for ``":memory:"``, is single-connection mode.
        ``max_batch``: most units committed in one transaction.
        """
        self._path = path
        self._read_connections = 0 if path == MEMORY else max(0, read_connections)
        self._max_batch = max(1, max_batch)
        self._tx_idle_timeout_s = tx_idle_timeout_s
        self._writer: _Writer | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._readers: _Readers | None = None
        self._counters = _Counters()

    @property
    def committed(self) -> tuple[int, int]:
        """(batches, units) committed since this object was made; units / batches is the
        mean group size."""
        return self._counters.batches, self._counters.units

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        writer = _Writer(self._path, self._max_batch, self._tx_idle_timeout_s, self._counters)
        ready: asyncio.Future[None] = loop.create_future()
        stopped: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=writer.serve,
            args=(loop, ready, stopped),
            name="agentcore-sqlite-writer",
            daemon=True,
        )
        thread.start()
        try:
            await ready
        except BaseException:
            writer.inbox.put(None)  # stops it if it did connect
            raise
        self._writer, self._stopped = writer, stopped
        if self._read_connections:
            self._readers = _Readers(self._path, self._read_connections)

    async def close(self) -> None:
        """Units queued before are still run; waits for them and for running reads."""
        writer, stopped, readers = self._writer, self._stopped, self._readers
        self._writer = self._stopped = self._readers = None
        if writer is not None and stopped is not None:
            writer.inbox.put(None)
            await asyncio.shield(stopped)
        if readers is not None:
            await readers.close()

    async def execute(self, sql: str, *args: Any) -> int:
        rowcount: int = await self._write("execute", _numbered(sql), args)
        return rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        query = _numbered(sql)
        if not _is_select(query):
            rows: list[Sequence[Any]] = await self._write("fetch", query, args)
            return rows
        if self._readers is not None:
            return await self._readers.fetch(query, args)
        rows = await self._write("read", query, args)
        return rows

    async def fetch_pipelined(self, sql: str, *args: Any) -> Awaitable[list[Sequence[Any]]]:
        """Outside a transaction nothing is held: it runs now."""
        return ready(await self.fetch(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if params:
            await self._write("executemany", _numbered(sql), params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        unit = _Transaction(asyncio.get_running_loop())
        self._submit(unit)
        try:
            yield _InTransaction(unit)
        except BaseException:
            unit.end(commit=False)
            raise
        unit.end(commit=True)
        await unit.done

    async def _write(self, kind: str, sql: str, args: Any) -> Any:
        unit = _Statement(kind, sql, args, asyncio.get_running_loop())
        self._submit(unit)
        return await unit.future

    def _submit(self, unit: _Unit) -> None:
        if self._writer is None:
            raise StoreUnavailable("sqlite store is closed")
        self._writer.inbox.put(unit)


class _InTransaction:
    """The driver a ``transaction()`` block sees: its statements go to its unit."""

    dialect = "sqlite"

    def __init__(self, unit: _Transaction) -> None:
        self._unit = unit

    async def execute(self, sql: str, *args: Any) -> int:
        rowcount: int = await self._unit.ask("execute", _numbered(sql), args)
        return rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self._unit.ask("fetch", _numbered(sql), args)
        return rows

    async def fetch_pipelined(self, sql: str, *args: Any) -> Awaitable[list[Sequence[Any]]]:
        """Queued like :meth:`executemany`; the rows arrive when the writer ran it."""
        future: asyncio.Future[list[Sequence[Any]]] = self._unit.ask("fetch", _numbered(sql), args)
        return future

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Pipelined: returns once queued; a failure surfaces at the block's next
        statement or at its end."""
        params = list(rows)
        if params:
            self._unit.tell("executemany", _numbered(sql), params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        """Already inside one: the block joins it."""
        yield self
