"""The event log's rows: appended with gap-free ids, read in id order, trimmed.

:class:`SqlEvents` keeps them in the ``events`` table with the log's head in
``event_seq``; :class:`MemoryEvents` in a list. Either way ids are gap-free
and increase in commit order, across processes too (appenders queue on the
counter row).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from agentcore.events.base import Event
from agentcore.store.database import Driver, Fuse
from agentcore.store.memory import AUTOCOMMIT, Journal, MemoryDatabase
from agentcore.store.sql import Args, atomic, json_text, page, where


class EventRepository(Protocol):
    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Store events (in one transaction); return them with their ids."""

    async def read(self, after_id: int, limit: int, tenant: str | None = None) -> list[Event]:
        """Events with id > ``after_id``, oldest first (optionally of one tenant)."""

    async def last_id(self) -> int:
        """The id of the newest event ever appended (0 when none)."""

    async def trim(self, keep: int, older_than: float) -> int:
        """Delete all but the newest ``keep`` events and those older than ``older_than``
        (epoch s); return how many were deleted."""


# -- SQL ----------------------------------------------------------------------

COLUMNS = "id, type, timestamp, source, tenant, data"


@functools.cache
def _insert_events(k: int) -> str:
    """PostgreSQL: the CTE that inserts the events after the counter row ``s`` moved:
    their count in ``$k``, their columns as arrays in the five parameters after it."""
    return (
        f"i AS (INSERT INTO events ({COLUMNS}) "
        f"SELECT s.n - ${k} + x.ord, x.type, x.ts, x.source, x.tenant, x.data FROM s, "
        f"unnest(${k + 1}::text[], ${k + 2}::float8[], ${k + 3}::text[], ${k + 4}::text[], "
        f"${k + 5}::text[]) WITH ORDINALITY AS x(type, ts, source, tenant, data, ord))"
    )


_APPEND_POSTGRESQL = (
    f"WITH s AS (UPDATE event_seq SET n = n + $1 RETURNING n), {_insert_events(1)} "
    "SELECT n - $1 + 1 FROM s"
)
#: Event ids deleted per transaction by :meth:`SqlEvents.trim`.
TRIM_STEP = 5_000


def _event(row: Sequence[object]) -> Event:
    return Event(
        id=int(row[0]),  # type: ignore[call-overload]
        type=str(row[1]),
        timestamp=float(row[2]),  # type: ignore[arg-type]
        source=str(row[3]),
        tenant=str(row[4]),
        data=msgspec.json.decode(row[5]),  # type: ignore[call-overload]
    )


def _columns(events: Sequence[Event]) -> list[list[Any]]:
    return [
        [e.type for e in events],
        [float(e.timestamp) for e in events],
        [e.source for e in events],
        [e.tenant for e in events],
        [json_text(e.data) for e in events],
    ]


def fused_append(events: Sequence[Event]) -> Fuse:
    """PostgreSQL: a write (an INSERT or UPDATE without RETURNING) and the append of
    ``events`` as one statement; its row is the write's count and the last event id."""

    def fuse(sql: str, args: Sequence[Any]) -> tuple[str, list[Any]]:
        # The write's parameters first, the events' after them.
        k = len(args) + 1
        text = (
            f"WITH w AS ({sql} RETURNING 1), s AS (UPDATE event_seq SET n = n + ${k} "
            f"WHERE EXISTS (SELECT 1 FROM w) RETURNING n), {_insert_events(k)} "
            "SELECT (SELECT COUNT(*) FROM w), (SELECT n FROM s)"
        )
        return text, [*args, len(events), *_columns(events)]

    return fuse


def fused_stored(events: Sequence[Event], row: Sequence[Any]) -> list[Event]:
    """The events of :func:`fused_append` with their ids, from the statement's row."""
    first = int(row[1]) - len(events) + 1
    return [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]


class SqlEvents:
    def __init__(self, db: Driver, *, in_transaction: bool = False) -> None:
        self._db = db
        self._in_transaction = in_transaction

    async def append(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        count = len(events)
        if self._db.dialect == "postgresql":
            # One round trip: the counter and every row in one statement.
            rows = await self._db.fetch(_APPEND_POSTGRESQL, count, *_columns(events))
            first = int(rows[0][0])
            return [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
        async with atomic(self._db, self._in_transaction) as tx:
            # Not RETURNING: SQLite runs that as a trigger, with a statement journal.
            await tx.execute("UPDATE event_seq SET n = n + $1", count)
            rows = await tx.fetch("SELECT n FROM event_seq")
            first = int(rows[0][0]) - count + 1
            stored = [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
            await tx.executemany(
                f"INSERT INTO events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (e.id, e.type, float(e.timestamp), e.source, e.tenant, json_text(e.data))
                    for e in stored
                ],
            )
        return stored

    async def read(self, after_id: int, limit: int, tenant: str | None = None) -> list[Event]:
        args = Args()
        conditions = [f"id > {args(int(after_id))}"]
        if tenant is not None:
            conditions.append(f"tenant = {args(tenant)}")
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM events{where(conditions)} ORDER BY id {page(limit)}", *args
        )
        return [_event(row) for row in rows]

    async def last_id(self) -> int:
        rows = await self._db.fetch("SELECT n FROM event_seq")
        return int(rows[0][0])

    async def trim(self, keep: int, older_than: float) -> int:
        """In steps of :data:`TRIM_STEP` ids, a transaction each, so that no single
        statement holds the database (or, on SQLite, the event loop) for long."""
        last = await self.last_id()
        cutoff = last - keep
        young = await self._db.fetch(
            "SELECT id FROM events WHERE timestamp >= $1 ORDER BY timestamp LIMIT 1",
            float(older_than),
        )
        cutoff = max(cutoff, (int(young[0][0]) if young else last + 1) - 1)
        oldest = await self._db.fetch("SELECT id FROM events ORDER BY id LIMIT 1")
        if not oldest:
            return 0
        deleted = 0
        start = int(oldest[0][0])
        while start <= cutoff:
            end = min(cutoff, start + TRIM_STEP - 1)
            deleted += await self._db.execute(
                "DELETE FROM events WHERE id >= $1 AND id <= $2", start, end
            )
            start = end + 1
            await asyncio.sleep(0)
        return deleted


# -- memory -------------------------------------------------------------------


class EventTable:
    """The in-memory log: events in id order (ids gap-free from ``first_id``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.last_id = 0

    def after(self, after_id: int) -> int:
        """Index of the first event with an id above ``after_id``."""
        if not self.events:
            return 0
        return max(0, min(len(self.events), after_id - self.events[0].id + 1))


class MemoryEvents:
    def __init__(self, db: MemoryDatabase, journal: Journal = AUTOCOMMIT) -> None:
        self._db = db
        self._journal = journal
        self._table = db.table(EventTable)

    async def append(self, events: Sequence[Event]) -> list[Event]:
        self._db.check()
        table = self._table
        first = table.last_id + 1
        stored = [msgspec.structs.replace(e, id=first + i) for i, e in enumerate(events)]
        table.events.extend(stored)
        table.last_id += len(stored)
        if stored:
            self._journal.record(lambda: self._undo_append(len(stored)))
        return stored

    def _undo_append(self, count: int) -> None:
        del self._table.events[-count:]
        self._table.last_id -= count

    async def read(self, after_id: int, limit: int, tenant: str | None = None) -> list[Event]:
        self._db.check()
        events = self._table.events
        found: list[Event] = []
        for index in range(self._table.after(after_id), len(events)):
            if len(found) >= limit:
                break
            event = events[index]
            if tenant is None or event.tenant == tenant:
                found.append(event)
        return found

    async def last_id(self) -> int:
        self._db.check()
        return self._table.last_id

    async def trim(self, keep: int, older_than: float) -> int:
        self._db.check()
        table = self._table
        # As SqlEvents does: keep from the youngest-but-oldest event still in its time.
        young = min(
            (e for e in table.events if e.timestamp >= older_than),
            key=lambda e: e.timestamp,
            default=None,
        )
        cutoff = max(table.last_id - keep, (table.last_id + 1 if young is None else young.id) - 1)
        cut = table.after(cutoff)
        del table.events[:cut]
        return cut
