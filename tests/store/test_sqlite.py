"""The SQLite driver: statements on the event loop's thread, a writer and a reader.

The repository contracts cover what every backend does; these
tests cover how the SQLite driver does it: transactions that hold the writer,
a reader that only sees committed data, statement time limits, and another
process holding the write lock without stalling the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentcore.errors import QueryTimeout, StoreUnavailable
from agentcore.models import AgentQuery
from agentcore.repositories import SqlRepositories
from agentcore.store import sqlite as sqlite_module
from agentcore.store.sqlite import SqliteDatabase
from tests.support import make_agent

#: A SELECT that keeps one core busy for about a second.
LONG_READ = (
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS "
    "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT x FROM c)"
)


async def opened(path: Path, **options: float) -> SqliteDatabase:
    db = SqliteDatabase(str(path), **options)
    await db.open()
    await db.execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, note TEXT)")
    db.serve()
    return db


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    db = await opened(tmp_path / "db" / "test.db")
    yield db
    await db.close()


@pytest.fixture
def observer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """An independent connection (another process, as far as SQLite is concerned)."""
    conn = sqlite3.connect(tmp_path / "db" / "test.db", isolation_level=None)
    yield conn
    conn.close()


def probe_ids(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM probe ORDER BY id")]


class Ticker:
    """Counts loop turns while it runs: a loop blocked by a statement stops counting."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


# -- transactions ----------------------------------------------------------------------


async def test_an_acknowledged_write_is_seen_by_the_next_read(db: SqliteDatabase) -> None:
    for n in range(1, 51):
        await db.execute("INSERT INTO probe (id) VALUES ($1)", n)
        assert await db.fetch("SELECT max(id) FROM probe") == [(n,)]


async def test_reads_never_see_an_open_transaction(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    async def block() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            assert await tx.fetch("SELECT id FROM probe") == [(1,)]  # its own write
            inside.set()
            await release.wait()

    holder = asyncio.create_task(block())
    await inside.wait()
    assert await db.fetch("SELECT id FROM probe") == []  # the reader: committed data only
    assert probe_ids(observer) == []
    release.set()
    await holder
    assert await db.fetch("SELECT id FROM probe") == [(1,)]
    assert probe_ids(observer) == [1]


async def test_a_block_that_raises_is_rolled_back_and_frees_the_writer(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            raise RuntimeError("the caller changed its mind")
    await db.execute("INSERT INTO probe (id) VALUES (2)")
    assert probe_ids(observer) == [2]


async def insert(db: SqliteDatabase, probe_id: int) -> None:
    """A block of its own: one row."""
    await db.execute("INSERT INTO probe (id) VALUES ($1)", probe_id)


async def test_a_block_that_raises_before_writing_leaves_its_batch_alone(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    async def refuses() -> None:
        async with db.transaction() as tx:
            await tx.fetch("SELECT id FROM probe")
            await tx.execute("UPDATE probe SET note = 'x' WHERE id = 99")  # no row: no change
            raise RuntimeError("checked, found wanting, wrote nothing")

    commits = db.commits
    outcomes = await asyncio.gather(insert(db, 1), refuses(), insert(db, 2), return_exceptions=True)

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], RuntimeError)
    assert db.commits == commits + 1  # the three blocks shared one transaction
    assert probe_ids(observer) == [1, 2]


async def test_a_block_that_raises_after_writing_fails_its_whole_batch(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    async def fails_halfway() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (2)")
            raise RuntimeError("a fault between two statements")

    outcomes = await asyncio.gather(insert(db, 1), fails_halfway(), return_exceptions=True)

    assert isinstance(outcomes[0], StoreUnavailable)  # never acknowledged
    assert isinstance(outcomes[1], RuntimeError)
    assert probe_ids(observer) == []
    await db.execute("INSERT INTO probe (id) VALUES (3)")  # the writer is free again
    assert probe_ids(observer) == [3]


async def test_reads_between_transactions_see_every_commit(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    await db.execute("INSERT INTO probe (id) VALUES (1)")
    assert await db.fetch("SELECT id FROM probe") == [(1,)]
    observer.execute("INSERT INTO probe (id) VALUES (2)")  # another process
    assert await db.fetch("SELECT id FROM probe ORDER BY id") == [(1,), (2,)]


async def test_a_cancelled_block_is_rolled_back(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    inside = asyncio.Event()

    async def block() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            inside.set()
            await asyncio.sleep(3600)

    holder = asyncio.create_task(block())
    await inside.wait()
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    await db.execute("INSERT INTO probe (id) VALUES (2)")
    assert probe_ids(observer) == [2]


async def test_blocks_that_wait_inside_do_not_interleave(db: SqliteDatabase) -> None:
    order: list[str] = []

    async def block(name: str) -> None:
        async with db.transaction() as tx:
            order.append(f"{name} in")
            await asyncio.sleep(0.01)  # something else runs meanwhile
            await tx.execute("INSERT INTO probe (note) VALUES ($1)", name)
            order.append(f"{name} out")

    await asyncio.gather(block("a"), block("b"), block("c"))
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert await db.fetch("SELECT note FROM probe ORDER BY id") == [("a",), ("b",), ("c",)]


async def test_a_write_is_answered_in_the_loop_turn_after_its_own(db: SqliteDatabase) -> None:
    """The commit runs first in the next turn and the block right behind it; not
    behind everything else that turn brought in (a task creation answered two
    turns late set the seed mix's p99)."""
    loop = asyncio.get_running_loop()
    turns = 0
    ticking = True

    def tick() -> None:
        nonlocal turns
        turns += 1
        if ticking:
            loop.call_soon(tick)

    loop.call_soon(tick)
    await asyncio.sleep(0)
    before = turns
    await db.execute("INSERT INTO probe (id) VALUES (1)")
    ticking = False

    assert turns - before <= 1


async def test_a_nested_block_is_a_savepoint(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO probe (id) VALUES (1)")
        with pytest.raises(RuntimeError):
            async with tx.transaction() as inner:
                await inner.execute("INSERT INTO probe (id) VALUES (2)")
                raise RuntimeError("inner only")
        await tx.execute("INSERT INTO probe (id) VALUES (3)")
    assert probe_ids(observer) == [1, 3]


async def test_reads_cannot_write(db: SqliteDatabase) -> None:
    reader = db._reader
    assert reader is not None
    with pytest.raises(StoreUnavailable, match="readonly"):
        reader.run("execute", "INSERT INTO probe (id) VALUES (1)", ())


async def test_close_waits_for_a_block_then_refuses(tmp_path: Path) -> None:
    db = await opened(tmp_path / "c.db")
    inside = asyncio.Event()

    async def block() -> None:
        async with db.transaction() as tx:
            inside.set()
            await asyncio.sleep(0.05)
            await tx.execute("INSERT INTO probe (id) VALUES (1)")

    holder = asyncio.create_task(block())
    await inside.wait()
    await db.close()
    await holder  # it committed before the connections closed
    with pytest.raises(StoreUnavailable):
        await db.execute("INSERT INTO probe (id) VALUES (2)")
    with pytest.raises(StoreUnavailable):
        await db.fetch("SELECT 1")
    await db.close()  # idempotent
    check = sqlite3.connect(tmp_path / "c.db")
    assert probe_ids(check) == [1]
    check.close()


# -- the loop is never held for long ---------------------------------------------------


async def test_a_statement_past_its_time_limit_is_stopped_with_a_clear_error(
    tmp_path: Path,
) -> None:
    db = await opened(tmp_path / "t.db", statement_timeout_s=0.05)
    try:
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"longer than 0\.05 s"):
            await db.fetch(LONG_READ)
        assert time.monotonic() - started < 0.5  # the whole read would take about a second
        with pytest.raises(QueryTimeout):
            async with db.transaction() as tx:
                await tx.fetch(LONG_READ)
        await db.execute("INSERT INTO probe (id) VALUES (1)")  # both connections still work
        assert await db.fetch("SELECT id FROM probe") == [(1,)]
    finally:
        await db.close()


async def test_migrations_run_without_the_time_limit(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "m.db"), statement_timeout_s=0.05)
    await db.open()
    try:
        assert await db.fetch(LONG_READ) == [(2_000_000,)]  # before serve(): unbounded
        db.serve()
        with pytest.raises(QueryTimeout):
            await db.fetch(LONG_READ)
    finally:
        await db.close()


async def test_another_process_holding_the_write_lock_does_not_stall_the_loop(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    observer.execute("BEGIN IMMEDIATE")
    with Ticker() as ticker:
        write = asyncio.ensure_future(db.execute("INSERT INTO probe (id) VALUES (1)"))
        await asyncio.sleep(0.2)
        assert not write.done()
        assert ticker.ticks > 50  # the loop kept turning while the write waited
        observer.execute("COMMIT")
        await asyncio.wait_for(write, 5)
    assert probe_ids(observer) == [1]


async def test_a_write_lock_held_too_long_is_reported(tmp_path: Path) -> None:
    db = await opened(tmp_path / "b.db", busy_timeout_s=0.1)
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            await db.execute("INSERT INTO probe (id) VALUES (1)")
        other.execute("ROLLBACK")
        await db.execute("INSERT INTO probe (id) VALUES (1)")
    finally:
        other.close()
        await db.close()


async def test_the_wal_starts_over_under_a_steady_stream_of_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passive checkpoints alone never let SQLite start the WAL over while commits
    keep coming (it grew without bound); the writer restarts it once it is large."""
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_INTERVAL_S", 0.02)
    monkeypatch.setattr(sqlite_module, "WAL_RESET_FRAMES", 32)
    db = await opened(tmp_path / "wal.db")
    wal = tmp_path / "wal.db-wal"
    note = "x" * 3000  # about a page a row
    largest = inserted = 0
    try:
        deadline = time.monotonic() + 10
        while db.wal_resets < 3 and time.monotonic() < deadline:
            async with db.transaction() as tx:
                for _ in range(4):
                    await tx.execute("INSERT INTO probe (note) VALUES ($1)", note)
            inserted += 4
            largest = max(largest, wal.stat().st_size)
            await asyncio.sleep(0.001)
        rows = await db.fetch("SELECT count(*) FROM probe")
    finally:
        await db.close()

    assert db.wal_resets >= 3
    assert inserted > 3 * 32  # more than three resets' worth of pages went through it
    assert 0 < largest < 400 * 4096  # bounded: tens of frames, not the whole history
    assert rows[0][0] == inserted  # restarting the WAL lost nothing


async def test_an_in_memory_database_answers_reads_on_its_one_connection() -> None:
    db = await opened(Path(":memory:"))
    try:
        assert db._reader is None
        await db.execute("INSERT INTO probe (id) VALUES (1)")
        assert await db.fetch("SELECT id FROM probe") == [(1,)]
        inside = asyncio.Event()
        release = asyncio.Event()

        async def block() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO probe (id) VALUES (2)")
                inside.set()
                await release.wait()

        holder = asyncio.create_task(block())
        await inside.wait()
        read = asyncio.ensure_future(db.fetch("SELECT id FROM probe"))
        await asyncio.sleep(0.01)
        assert not read.done()  # a read waits for the block rather than see inside it
        release.set()
        await holder
        assert await read == [(1,), (2,)]
    finally:
        await db.close()


# -- the store on it -------------------------------------------------------------------


async def test_concurrent_registrations_of_one_id_have_one_winner_with_its_labels(
    tmp_path: Path,
) -> None:
    repos = SqlRepositories(SqliteDatabase(str(tmp_path / "store.db")))
    await repos.open()
    store = repos.agents
    try:
        rivals = [
            make_agent("same", name=f"rival-{n}", capabilities=(f"c{n}", "shared"), tags=(f"t{n}",))
            for n in range(20)
        ]
        won = await asyncio.gather(*(store.put(a, replace=False) for a in rivals))
        stored = await store.get("default", "same")
        by_capability = {
            c: [a.agent_id for a in await store.query(AgentQuery(capabilities=[c]))]
            for c in [f"c{n}" for n in range(20)]
        }
        again = await store.put(rivals[0], replace=False)
    finally:
        await repos.close()

    assert won.count(True) == 1
    winner = rivals[won.index(True)]
    assert stored is not None and stored.name == winner.name
    assert sorted(stored.capabilities) == sorted(winner.capabilities)
    # Only the winner's labels were written: discovery finds it by its own capability only.
    assert {c for c, ids in by_capability.items() if ids} == set(winner.capabilities) - {"shared"}
    assert again is False  # registered already: refused up front


def test_connections_opening_a_new_file_together_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL takes an exclusive lock, and SQLite can answer
    # "locked" at once, without its busy handler, to a connection opening the
    # file while another switches it (workers starting together). Without the
    # retry about 6 rounds in 100 failed here.
    for round_ in range(50):
        path = str(tmp_path / f"race-{round_}.db")
        errors: list[BaseException] = []

        def open_one(path: str = path, errors: list[BaseException] = errors) -> None:
            try:
                sqlite_module._connect(path, sqlite_module._COMMON_PRAGMAS).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == [], f"round {round_}: {errors}"
