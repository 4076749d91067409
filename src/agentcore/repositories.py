"""Every concept's repository over one database, and units of work across them.

Each concept keeps its repository next to its code: agents
(``registry/repository.py``), tasks (``tasks/repository.py``), API keys
(``apikeys.py``), the event log (``events/repository.py``), LLM usage
(``llm/usage.py``) and webhooks (``webhooks/repository.py``), each in SQL
and in memory. :class:`Repositories` gathers one database's: used directly,
each write commits on its own; :meth:`Repositories.transaction` yields the
same repositories bound to one unit of work, whose writes (a task's row, its
agent's load and its events) commit together or not at all.

Webhooks keep their own transactions (the dispatcher's and the delivery
worker's) and take no part in a unit of work. :func:`open_repositories` picks
the backend from a URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from agentcore.apikeys import ApiKeyRepository, MemoryApiKeys, SqlApiKeys
from agentcore.config import parse_url
from agentcore.events.base import Event
from agentcore.events.repository import (
    EventRepository,
    MemoryEvents,
    SqlEvents,
    fused_append,
    fused_stored,
)
from agentcore.llm.usage import MemoryUsage, SqlUsage, UsageRepository
from agentcore.registry.repository import AgentRepository, AgentRows, MemoryAgents, SqlAgents
from agentcore.store.database import Database, Driver
from agentcore.store.memory import MemoryDatabase
from agentcore.store.postgres import PostgresDatabase, PostgresUnit
from agentcore.store.schema import migrate
from agentcore.store.sqlite import MEMORY, SqliteDatabase
from agentcore.tasks.repository import MemoryTasks, SqlTasks, TaskRepository
from agentcore.webhooks.repository import MemoryWebhooks, SqlWebhooks, WebhookRepository
from agentcore.webhooks.secretbox import KEY_BYTES, SecretBox

__all__ = ["MemoryRepositories", "Repositories", "SqlRepositories", "open_repositories"]


class Repositories(Protocol):
    agents: AgentRepository
    tasks: TaskRepository
    api_keys: ApiKeyRepository
    events: EventRepository
    llm_usage: UsageRepository
    webhooks: WebhookRepository

    async def open(self) -> None:
        """Connect and apply migrations."""

    async def close(self) -> None:
        """Idempotent; afterwards every call raises ``StoreUnavailable``."""

    async def check(self) -> None:
        """Raise :class:`~agentcore.errors.StoreUnavailable` when the database is unreachable."""

    def transaction(self) -> AbstractAsyncContextManager[Repositories]:
        """The repositories bound to one unit of work: whatever the block writes through
        them commits together, or not at all when the block raises."""

    async def last_write(
        self, write: Callable[[Repositories], Awaitable[bool]], events: Sequence[Event]
    ) -> tuple[bool, list[Event] | None]:
        """Run a unit of work's last write, ``write(self)``: whether it changed a row,
        and ``events`` stored with their ids when the write appended them too (one
        statement, committed: PostgreSQL, in a unit that has written nothing yet);
        None leaves the append to the end of the unit."""


class SqlRepositories:
    """The repositories on SQLite or PostgreSQL (one SQL text, ``store/database.py``)."""

    def __init__(self, database: Database, box: SecretBox | None = None) -> None:
        """``box`` seals webhook signing secrets at rest (``webhooks/secretbox.py``)."""
        self.database = database
        self._rows = AgentRows()
        self.agents: AgentRepository = SqlAgents(database, self._rows)
        self.tasks: TaskRepository = SqlTasks(database)
        self.api_keys: ApiKeyRepository = SqlApiKeys(database)
        self.events: EventRepository = SqlEvents(database)
        self.llm_usage: UsageRepository = SqlUsage(database)
        self.webhooks: WebhookRepository = SqlWebhooks(database, box)

    async def open(self) -> None:
        await self.database.open()
        try:
            await migrate(self.database)
        except BaseException:
            await self.database.close()
            raise
        self.database.serve()

    async def close(self) -> None:
        await self.database.close()

    async def check(self) -> None:
        await self.database.fetch("SELECT 1")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repositories]:
        async with self.database.unit() as tx:
            yield _SqlUnit(self, tx)

    async def last_write(
        self, write: Callable[[Repositories], Awaitable[bool]], events: Sequence[Event]
    ) -> tuple[bool, list[Event] | None]:
        return await write(self), None


class _SqlUnit(SqlRepositories):
    """The repositories of one SQL transaction."""

    def __init__(self, root: SqlRepositories, tx: Driver) -> None:
        self._tx = tx
        self.database = root.database
        self._rows = root._rows
        self.agents = SqlAgents(tx, self._rows, in_transaction=True)
        self.tasks = SqlTasks(tx)
        self.api_keys = SqlApiKeys(tx)
        self.events = SqlEvents(tx, in_transaction=True)
        self.llm_usage = SqlUsage(tx, in_transaction=True)
        self.webhooks = root.webhooks

    async def last_write(
        self, write: Callable[[Repositories], Awaitable[bool]], events: Sequence[Event]
    ) -> tuple[bool, list[Event] | None]:
        tx = self._tx
        if not isinstance(tx, PostgresUnit) or tx.begun:
            return await write(self), None
        tx.fuse_next_write(fused_append(events))
        changed = await write(self)
        if tx.fused is None:
            raise RuntimeError("a unit's last write wrote nothing to fuse its events with")
        return changed, fused_stored(events, tx.fused) if changed else []


class MemoryRepositories:
    """The repositories in this process's memory (``memory://``): tests, and gateways
    that need nothing kept across a restart."""

    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.database = database or MemoryDatabase()
        self.agents: AgentRepository = MemoryAgents(self.database)
        self.tasks: TaskRepository = MemoryTasks(self.database)
        self.api_keys: ApiKeyRepository = MemoryApiKeys(self.database)
        self.events: EventRepository = MemoryEvents(self.database)
        self.llm_usage: UsageRepository = MemoryUsage(self.database)
        self.webhooks: WebhookRepository = MemoryWebhooks(self.database)

    async def open(self) -> None:
        await self.database.open()

    async def close(self) -> None:
        await self.database.close()

    async def check(self) -> None:
        self.database.check()

    async def last_write(
        self, write: Callable[[Repositories], Awaitable[bool]], events: Sequence[Event]
    ) -> tuple[bool, list[Event] | None]:
        return await write(self), None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repositories]:
        async with self.database.transaction() as journal:
            unit = MemoryRepositories.__new__(MemoryRepositories)
            unit.database = self.database
            unit.agents = MemoryAgents(self.database, journal)
            unit.tasks = MemoryTasks(self.database, journal)
            unit.api_keys = MemoryApiKeys(self.database, journal)
            unit.events = MemoryEvents(self.database, journal)
            unit.llm_usage = MemoryUsage(self.database, journal)
            unit.webhooks = self.webhooks
            yield unit


def open_repositories(
    url: str,
    *,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    statement_timeout_s: float = 1.0,
    box: SecretBox | None = None,
) -> Repositories:
    """The repositories of the database at ``url`` (see :func:`parse_url`); the caller
    awaits ``open()`` to connect. Raises :class:`ConfigError` for a URL it cannot use.

    ``box`` seals webhook secrets in SQL databases; memory needs none."""
    backend, target = parse_url(url)
    if backend == "memory":
        return MemoryRepositories()
    if backend == "sqlite":
        if target == MEMORY and box is not None:
            # Nothing is at rest: a key that lives and dies with the database, no file.
            box = SecretBox.from_key(os.urandom(KEY_BYTES))
        return SqlRepositories(SqliteDatabase(target, statement_timeout_s=statement_timeout_s), box)
    return SqlRepositories(
        PostgresDatabase(
            target,
            min_size=pool_min_size,
            max_size=pool_max_size,
            statement_timeout_s=statement_timeout_s,
        ),
        box,
    )
