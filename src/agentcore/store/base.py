"""The persistence seam: what the registry and the task service need from a store.

Two implementations share one SQL text (``store/sql.py``) over two drivers:
SQLite (the embedded default, WAL mode, ``synchronous=NORMAL``: every
committed transaction survives SIGKILL of the process) and PostgreSQL through
asyncpg. ``sqlite://:memory:`` is the in-memory backend of the unit tests.

Every method that returns after a write has committed it: "acknowledged"
means durable. :meth:`Store.transaction` binds the store to one transaction,
so that a state change's writes (and, through ``EventLog.change``, its
events) commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from agentcore.apikeys import ApiKey
from agentcore.events.base import Event
from agentcore.llm.accounting import LlmUsage
from agentcore.models import Agent, AgentQuery, Task, TaskQuery


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply migrations."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise :class:`~agentcore.errors.StoreUnavailable` when the store is unreachable."""

    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """The store bound to one transaction: whatever the block writes through it
        commits together, or not at all when the block raises."""

    # -- agents ---------------------------------------------------------------

    async def put_agent(self, agent: Agent, *, replace: bool) -> bool:
        """Insert ``agent``; with ``replace`` overwrite an existing one.

        Returns False (and writes nothing) when it exists and ``replace`` is False.
        """

    async def get_agent(self, agent_id: str) -> Agent | None: ...

    async def delete_agent(self, agent_id: str) -> bool: ...

    async def query_agents(self, query: AgentQuery) -> list[Agent]:
        """Agents matching every filter, ordered by name then id."""

    async def touch_agents(self, beats: Sequence[tuple[str, float]]) -> None:
        """Batch heartbeat: set ``last_seen`` (epoch s) and reactivate inactive agents."""

    async def expire_agents(self, cutoff: float, now: float) -> list[tuple[str, str]]:
        """Mark active agents last seen before ``cutoff`` inactive; return (id, tenant) of each."""

    async def count_agents(self) -> dict[str, int]:
        """Number of agents by status."""

    # -- tasks ----------------------------------------------------------------

    async def insert_task(self, task: Task) -> bool:
        """False when a task with this id exists."""

    async def get_task(self, task_id: str) -> Task | None: ...

    async def update_task(self, task: Task) -> bool:
        """Store ``task`` if the stored version is ``task.version - 1`` (compare-and-set)."""

    async def query_tasks(self, query: TaskQuery) -> list[Task]:
        """Tasks matching every filter, ordered by created_at then id."""

    async def pending_tasks(self, limit: int) -> list[Task]:
        """Pending tasks, highest priority first, then oldest."""

    async def due_tasks(self, now: float, limit: int) -> list[Task]:
        """Assigned or running tasks whose deadline has passed."""

    async def agent_loads(self, agent_ids: Sequence[str]) -> dict[str, int]:
        """Assigned plus running tasks per agent (agents with none are omitted)."""

    async def least_loaded_agent(self, capabilities: Sequence[str], tenant: str) -> str | None:
        """The active agent of ``tenant`` with every capability and the fewest assigned
        plus running tasks (ties: name, then id); one query, whatever the number of agents."""

    async def count_tasks(self) -> dict[str, int]:
        """Number of tasks by status."""

    # -- API keys -------------------------------------------------------------

    async def put_api_key(self, key: ApiKey) -> bool:
        """Insert a new key; False (nothing written) when its id is taken."""

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key, revoked or not."""

    async def list_api_keys(self, tenant: str | None) -> list[ApiKey]:
        """Keys of ``tenant`` (None: every tenant), revoked ones included, oldest first."""

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Set ``revoked_at`` to ``now`` (epoch s); False when unknown or already revoked."""

    # -- events ---------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> list[Event]:
        """Store events in one transaction; return them with their ids.

        Ids are gap-free and increase in commit order, across processes too.
        """

    async def read_events(
        self, after_id: int, limit: int, tenant: str | None = None
    ) -> list[Event]:
        """Events with id > ``after_id``, oldest first (optionally of one tenant)."""

    async def last_event_id(self) -> int:
        """The id of the newest event ever appended (0 when none)."""

    async def trim_events(self, keep: int, older_than: float) -> int:
        """Delete all but the newest ``keep`` events and those older than ``older_than``."""

    # -- LLM usage ------------------------------------------------------------

    async def add_llm_usage(self, rows: Sequence[LlmUsage]) -> None:
        """Add the counts of ``rows`` to their (day, tenant, agent, provider, model) rows."""

    async def llm_usage(self, day: str, tenant: str | None = None) -> list[LlmUsage]:
        """Usage rows of a UTC day (``YYYY-MM-DD``), optionally of one tenant."""

    async def llm_tenant_totals(self, day: str) -> dict[str, tuple[int, int, float]]:
        """Per tenant on a UTC day: (requests, tokens, cost)."""
