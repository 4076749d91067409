"""The seam between SQL and a database: what the SQLite and PostgreSQL drivers do.

SQL is written once, with ``$1, $2 ...`` placeholders, in the subset that
SQLite (3.40+) and PostgreSQL share: ``ON CONFLICT``, ``RETURNING``,
``excluded``. A :class:`Database` driver runs it and translates its library's
connection errors into :class:`~agentcore.errors.StoreUnavailable`. The
repositories of each concept (agents, tasks, API keys, the event log, LLM
usage, webhooks) write their own SQL over a :class:`Driver`; the schema they
share is ``store/schema.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable


class Driver(Protocol):
    """Runs SQL with ``$N`` placeholders; the whole seam between SQL and a database."""

    dialect: str  # "sqlite" or "postgresql"

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once per row. Nothing comes back, so inside a transaction a
        driver may pipeline it (SQLite does: an error surfaces at the block's next
        statement or at its end)."""

    def transaction(self) -> AbstractAsyncContextManager[Driver]:
        """One connection from BEGIN to COMMIT; rolled back when the block raises.

        The yielded driver is the only one to use inside the block: the outer
        one may wait for the transaction to end (SQLite) and so deadlock.
        """


class Fuse(Protocol):
    """Makes one statement of a write (its SQL and arguments) and the events it causes;
    the statement's one row starts with the write's row count."""

    def __call__(self, sql: str, args: Sequence[Any]) -> tuple[str, list[Any]]: ...


@runtime_checkable
class Database(Driver, Protocol):
    async def open(self) -> None:
        """Connect; :class:`~agentcore.errors.StoreUnavailable` when that fails."""

    def serve(self) -> None:
        """Migrated and about to serve: statement time limits apply from now on."""

    def unit(self) -> AbstractAsyncContextManager[Driver]:
        """A unit of work's transaction, which a driver may begin at its first write
        (PostgreSQL: reads before it run outside, as READ COMMITTED allows)."""

    async def close(self) -> None:
        """Idempotent; afterwards every call raises ``StoreUnavailable``."""
