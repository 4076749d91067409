"""The in-memory database: tables as Python objects, units of work with an undo journal.

It is the backend of unit tests and of a gateway that needs no persistence
(``memory://``): nothing survives the process. Each repository keeps its
state in a table object of its own kind (:meth:`MemoryDatabase.table`), so
repositories of one database see each other's rows (the webhook dispatcher
reads the event log's).

Units of work run one at a time (an :class:`asyncio.Lock`). Their writes
apply at once and record how to undo themselves in the unit's
:class:`Journal`; a block that raises is undone in reverse order. A write
outside a unit of work is its own unit and undoes nothing. Reads take no
lock, so they may see a running unit's writes before it ends (read
uncommitted), and a write outside a unit does not wait for one either: if
that unit then fails, undoing it restores the rows it changed, over such a
write to the same rows. The SQL backends are the ones for concurrent writers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from agentcore.errors import StoreUnavailable

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class Journal:
    """How to undo the writes of one unit of work, newest last."""

    __slots__ = ("_undo",)

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def record(self, undo: Callable[[], object]) -> None:
        self._undo.append(undo)

    def rollback(self) -> None:
        while self._undo:
            self._undo.pop()()


class _Autocommit(Journal):
    """Writes outside a unit of work: nothing to undo."""

    __slots__ = ()

    def record(self, undo: Callable[[], object]) -> None:
        pass


#: The journal of writes outside a unit of work.
AUTOCOMMIT: Journal = _Autocommit()


def put(journal: Journal, rows: dict[K, V], key: K, value: V | None) -> None:
    """Set ``rows[key]`` to ``value`` (None: remove it), recording in ``journal`` how to
    put back what was there."""
    journal.record(functools.partial(_assign, rows, key, rows.get(key)))
    _assign(rows, key, value)


def _assign(rows: dict[K, V], key: K, value: V | None) -> None:
    if value is None:
        rows.pop(key, None)
    else:
        rows[key] = value


class MemoryDatabase:
    def __init__(self) -> None:
        self._tables: dict[type, object] = {}
        self._lock = asyncio.Lock()
        self._open = False

    def table(self, kind: type[T]) -> T:
        """The one table of ``kind`` (created empty on first use)."""
        table = self._tables.get(kind)
        if table is None:
            table = self._tables[kind] = kind()
        return table  # type: ignore[return-value]

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` unless open."""
        if not self._open:
            raise StoreUnavailable("the in-memory store is closed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Journal]:
        self.check()
        async with self._lock:
            journal = Journal()
            try:
                yield journal
            except BaseException:
                journal.rollback()
                raise
