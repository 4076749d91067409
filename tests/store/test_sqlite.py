"""The SQLite driver's concurrency: group commit, readers beside the writer.

The store contract (test_contract.py) covers what every backend does; these
tests cover how the SQLite driver does it. Batches are made deterministic by
holding the writer inside a transaction block while units queue up behind it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event
from agentcore.models import AgentQuery
from agentcore.store import sqlite as sqlite_module
from agentcore.store.sql import SqlStore, migrate
from agentcore.store.sqlite import SqliteDatabase

from .test_contract import make_agent, make_task

#: A SELECT that keeps one core busy for about a second.
LONG_READ = (
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS "
    "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT x FROM c)"
)
#: The same amount of work as one write statement.
LONG_WRITE = (
    "INSERT INTO bulk (n) SELECT x FROM (WITH RECURSIVE c(x) AS "
    "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT x FROM c)"
)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase(str(tmp_path / "db" / "test.db"))
    await db.open()
    await db.execute("CREATE TABLE probe (id INTEGER PRIMARY KEY, note TEXT)")
    yield db
    await db.close()


@pytest.fixture
def observer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """An independent connection: it sees committed data only."""
    conn = sqlite3.connect(tmp_path / "db" / "test.db", isolation_level=None)
    yield conn
    conn.close()


async def queued() -> None:
    """Let every ready task run up to its first real wait (its unit is then queued).

    Generous: a task can take several loop turns to get there, and one still on
    its way when the writer is released would land in a batch of its own (seen
    about once in ten runs of this file with five turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


@asynccontextmanager
async def writer_held(db: SqliteDatabase) -> AsyncIterator[None]:
    """Keep the writer busy in an open transaction block until the ``async with`` ends.

    Units queued meanwhile are all taken by the writer's next batch.
    """
    running, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as tx:
            await tx.fetch("SELECT 1")  # answered by the writer: the block is running
            running.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await running.wait()
    try:
        yield
    finally:
        release.set()
        await holder


def probe_ids(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM probe ORDER BY id")]


# -- group commit ---------------------------------------------------------------------


async def test_concurrent_writes_share_one_commit_and_each_is_acked_after_it(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    seen_at_ack: list[bool] = []

    async def insert(n: int) -> None:
        await db.execute("INSERT INTO probe (id) VALUES ($1)", n)
        # Acknowledged: another connection must see the row already.
        seen_at_ack.append(
            observer.execute("SELECT 1 FROM probe WHERE id = ?", (n,)).fetchone() is not None
        )

    batches_before, units_before = db.committed
    async with writer_held(db):
        writers = [asyncio.create_task(insert(n)) for n in range(200)]
        await queued()
        assert probe_ids(observer) == []  # all queued, nothing committed
    await asyncio.gather(*writers)

    assert seen_at_ack == [True] * 200
    assert probe_ids(observer) == list(range(200))
    batches, units = db.committed
    assert (batches - batches_before, units - units_before) == (2, 201)  # the holder, then all


async def test_many_coroutines_through_the_store_are_all_durable(tmp_path: Path) -> None:
    url = tmp_path / "store.db"
    store = SqlStore(SqliteDatabase(str(url)))
    await store.open()
    try:
        await asyncio.gather(
            *(
                store.put_agent(make_agent(f"a{n:03}", capabilities=("x",)), replace=n % 3 == 0)
                for n in range(300)
            ),
            *(store.insert_task(make_task(f"t{n:03}")) for n in range(300)),
        )
    finally:
        await store.close()
    conn = sqlite3.connect(url)
    try:
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("agents", "agent_capabilities", "tasks")
        ]
    finally:
        conn.close()
    assert counts == [300, 300, 300]


async def test_a_failing_unit_fails_only_its_own_caller(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    await db.execute("INSERT INTO probe (id) VALUES (1)")

    async def block_that_raises() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (20)")
            raise RuntimeError("changed my mind")

    async def block_with_a_failing_executemany() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (30)")
            await tx.executemany("INSERT INTO probe (id) VALUES ($1)", [(31,), (1,)])  # 1 exists

    async def block_that_commits() -> int:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (40)")
            return await tx.execute("UPDATE probe SET note = 'x' WHERE id = 1")

    batches_before, _ = db.committed
    async with writer_held(db):
        units = [
            asyncio.create_task(db.execute("INSERT INTO probe (id) VALUES (2)")),
            asyncio.create_task(db.execute("INSERT INTO probe (id) VALUES (1)")),  # duplicate
            asyncio.create_task(
                db.executemany("INSERT INTO probe (id) VALUES ($1)", [(10,), (11,), (2,)])
            ),
            asyncio.create_task(block_that_raises()),
            asyncio.create_task(block_with_a_failing_executemany()),
            asyncio.create_task(block_that_commits()),
            asyncio.create_task(db.execute("INSERT INTO probe (id) VALUES (3)")),
        ]
        await queued()
    results = await asyncio.gather(*units, return_exceptions=True)

    assert results[0] == 1
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert isinstance(results[2], sqlite3.IntegrityError)  # 10 and 11 undone with it
    assert isinstance(results[3], RuntimeError)
    assert isinstance(results[4], sqlite3.IntegrityError)  # raised at the end of the block
    assert results[5] == 1
    assert results[6] == 1
    assert probe_ids(observer) == [1, 2, 3, 40]
    assert db.committed[0] - batches_before == 2  # the holder's batch, then one for all


async def test_a_batch_rolled_back_by_sqlite_fails_its_run_units_and_retries_the_rest(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    await db.execute("INSERT INTO probe (id) VALUES (1)")
    pages = (await db.fetch("PRAGMA page_count"))[0][0]
    await db.execute(f"PRAGMA max_page_count = {pages + 20}")  # the writer's connection

    async with writer_held(db):
        before = asyncio.create_task(db.execute("INSERT INTO probe (id) VALUES (2)"))
        too_big = asyncio.create_task(
            db.execute("INSERT INTO probe (id, note) VALUES (3, zeroblob(1000000))")
        )
        after = asyncio.create_task(db.execute("INSERT INTO probe (id) VALUES (4)"))
        await queued()
    results = await asyncio.gather(before, too_big, after, return_exceptions=True)

    # SQLITE_FULL abandons the whole transaction: unit 2 was in it and is lost
    # (its caller is told so), unit 4 had not run and goes into the next batch.
    assert isinstance(results[0], StoreUnavailable)
    assert isinstance(results[1], StoreUnavailable)
    assert results[2] == 1
    assert probe_ids(observer) == [1, 4]


# -- readers beside the writer ----------------------------------------------------------


async def test_a_long_read_does_not_block_writes(db: SqliteDatabase) -> None:
    long_read = asyncio.create_task(db.fetch(LONG_READ))
    for n in range(20):
        await db.execute("INSERT INTO probe (id) VALUES ($1)", n)
    assert not long_read.done()
    assert (await long_read)[0][0] == 2_000_000


async def test_a_long_write_does_not_block_reads(db: SqliteDatabase) -> None:
    await db.execute("CREATE TABLE bulk (n INTEGER NOT NULL)")
    await db.execute("INSERT INTO probe (id) VALUES (1)")
    long_write = asyncio.create_task(db.execute(LONG_WRITE))
    await queued()
    for _ in range(20):
        assert [tuple(r) for r in await db.fetch("SELECT id FROM probe")] == [(1,)]
        assert await db.fetch("SELECT count(*) FROM bulk") == [(0,)]  # not committed yet
    assert not long_write.done()
    assert await long_write == 2_000_000
    assert await db.fetch("SELECT count(*) FROM bulk") == [(2_000_000,)]


async def test_an_open_transaction_block_does_not_block_reads(db: SqliteDatabase) -> None:
    inserted, release = asyncio.Event(), asyncio.Event()

    async def block() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (7)")
            assert await tx.fetch("SELECT id FROM probe") == [(7,)]  # its own write
            inserted.set()
            await release.wait()

    task = asyncio.create_task(block())
    await inserted.wait()
    assert await db.fetch("SELECT id FROM probe") == []  # uncommitted: invisible
    release.set()
    await task
    assert await db.fetch("SELECT id FROM probe") == [(7,)]


async def test_an_acknowledged_write_is_seen_by_the_next_read(db: SqliteDatabase) -> None:
    async def write_then_read(n: int) -> bool:
        await db.execute("INSERT INTO probe (id) VALUES ($1)", n)
        return bool(await db.fetch("SELECT id FROM probe WHERE id = $1", n))

    for round_ in range(5):
        assert all(await asyncio.gather(*(write_then_read(round_ * 100 + n) for n in range(100))))


async def test_reads_cannot_write(tmp_path: Path) -> None:
    """A SELECT goes to a read-only connection; a writing fetch goes to the writer."""
    db = SqliteDatabase(str(tmp_path / "r.db"))
    await db.open()
    try:
        await db.execute("CREATE TABLE t (n INTEGER)")
        assert await db.fetch("INSERT INTO t (n) VALUES (1) RETURNING n") == [(1,)]
        assert await db.fetch("SELECT n FROM t") == [(1,)]
        readers = db._readers
        assert readers is not None
        with pytest.raises(StoreUnavailable):  # SQLITE_READONLY
            await readers.fetch("INSERT INTO t (n) VALUES (2)", ())
    finally:
        await db.close()


# -- blocks that misbehave --------------------------------------------------------------


async def test_a_cancelled_block_is_rolled_back_and_frees_the_writer(
    db: SqliteDatabase, observer: sqlite3.Connection
) -> None:
    inserted = asyncio.Event()

    async def block() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO probe (id) VALUES (1)")
            inserted.set()
            await asyncio.Event().wait()  # forever

    task = asyncio.create_task(block())
    await inserted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await db.execute("INSERT INTO probe (id) VALUES (2)") == 1
    assert probe_ids(observer) == [2]


async def test_an_idle_block_is_rolled_back_after_the_timeout(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "idle.db"), tx_idle_timeout_s=0.2)
    await db.open()
    try:
        await db.execute("CREATE TABLE t (n INTEGER)")
        stalled = asyncio.Event()
        with pytest.raises(StoreUnavailable, match="idle"):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t (n) VALUES (1)")
                other = asyncio.create_task(db.execute("INSERT INTO t (n) VALUES (2)"))
                await asyncio.wait_for(other, timeout=10)  # runs once the block is given up
                stalled.set()
                await tx.execute("INSERT INTO t (n) VALUES (3)")
        assert stalled.is_set()
        assert await db.fetch("SELECT n FROM t") == [(2,)]
    finally:
        await db.close()


async def test_close_runs_what_was_queued_and_then_refuses(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "c.db"))
    await db.open()
    await db.execute("CREATE TABLE t (n INTEGER)")
    writes = [
        asyncio.create_task(db.execute("INSERT INTO t (n) VALUES ($1)", n)) for n in range(50)
    ]
    await queued()
    await db.close()
    assert await asyncio.gather(*writes) == [1] * 50
    with pytest.raises(StoreUnavailable):
        await db.execute("INSERT INTO t (n) VALUES (0)")
    with pytest.raises(StoreUnavailable):
        await db.fetch("SELECT n FROM t")
    conn = sqlite3.connect(tmp_path / "c.db")
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)
    finally:
        conn.close()


# -- single-connection mode ---------------------------------------------------------------


@pytest.mark.parametrize("memory", [True, False], ids=["memory", "file"])
async def test_single_connection_mode_groups_writes_and_reads_between_batches(
    memory: bool, tmp_path: Path
) -> None:
    if memory:  # ":memory:" is never shared between connections, whatever is asked
        db = SqliteDatabase(":memory:", read_connections=8)
    else:
        db = SqliteDatabase(str(tmp_path / "s.db"), read_connections=0)
    await db.open()
    try:
        assert db._readers is None
        await migrate(db)
        store = SqlStore(db)
        batches_before, _ = db.committed
        async with writer_held(db):
            writes = [
                asyncio.create_task(
                    store.put_agent(make_agent(f"a{n}", capabilities=("x",)), replace=False)
                )
                for n in range(20)
            ]
            reads = [asyncio.create_task(store.get_agent(f"a{n}")) for n in range(20)]
            await queued()
        assert all(await asyncio.gather(*writes))
        assert await asyncio.gather(*reads) == [None] * 20  # read before the batch committed
        assert db.committed[0] - batches_before == 2
        assert len(await store.query_agents(AgentQuery(capabilities=["x"]))) == 20
    finally:
        await db.close()


# -- blocks that never wait for the event loop --------------------------------------------


async def test_an_event_append_commits_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    """The append's block sends every statement and its commit at once: the writer
    finishes it without the event loop (a block that awaited the counter first would
    hold the one writer for an event-loop round trip, under load for everyone)."""
    path = tmp_path / "store.db"
    store = SqlStore(SqliteDatabase(str(path)))
    await store.open()
    observer = sqlite3.connect(path, isolation_level=None)
    try:
        await store.append_events([Event(type="warm.up", timestamp=1.0)])
        events = [Event(type=f"e.{n}", timestamp=2.0, data={"n": n}) for n in range(3)]
        appending = asyncio.create_task(store.append_events(events))
        await queued()  # the block, its statements and its commit are queued
        committed = False
        for _ in range(100):  # the loop stays blocked: only the writer thread moves
            time.sleep(0.01)  # noqa: ASYNC251 - blocking the event loop is the point
            committed = observer.execute("SELECT count(*) FROM events").fetchone()[0] == 4
            if committed:
                break
        assert committed
        stored = await appending
    finally:
        observer.close()
        await store.close()
    assert [(e.id, e.type, e.data) for e in stored] == [
        (2, "e.0", {"n": 0}),
        (3, "e.1", {"n": 1}),
        (4, "e.2", {"n": 2}),
    ]


async def test_concurrent_registrations_of_one_id_have_one_winner_with_its_labels(
    tmp_path: Path,
) -> None:
    store = SqlStore(SqliteDatabase(str(tmp_path / "store.db")))
    await store.open()
    try:
        rivals = [
            make_agent("same", name=f"rival-{n}", capabilities=(f"c{n}", "shared"), tags=(f"t{n}",))
            for n in range(20)
        ]
        won = await asyncio.gather(*(store.put_agent(a, replace=False) for a in rivals))
        stored = await store.get_agent("same")
        by_capability = {
            c: [a.agent_id for a in await store.query_agents(AgentQuery(capabilities=[c]))]
            for c in [f"c{n}" for n in range(20)]
        }
        again = await store.put_agent(rivals[0], replace=False)
    finally:
        await store.close()

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
                sqlite_module._connect(path, sqlite_module._WRITER_PRAGMAS).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == [], f"round {round_}: {errors}"
