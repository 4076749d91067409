"""LLM usage as stored: one row per (UTC day, tenant, agent, provider, model).

:class:`SqlUsage` keeps the rows in ``llm_usage`` and adds to them with one
upsert each; :class:`MemoryUsage` in a dict. Either way concurrent adders
(several workers) sum, never overwrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from agentcore.store.database import Driver
from agentcore.store.memory import AUTOCOMMIT, Journal, MemoryDatabase, put
from agentcore.store.sql import Args, atomic, where


class LlmUsage(msgspec.Struct, kw_only=True):
    """One row of ``llm_usage``: what a tenant's agent spent on one model in one UTC day."""

    day: str
    tenant: str
    agent_id: str
    provider: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


class UsageRepository(Protocol):
    async def add(self, rows: Sequence[LlmUsage]) -> None:
        """Add the counts of ``rows`` to their (day, tenant, agent, provider, model) rows."""

    async def rows(self, day: str, tenant: str | None = None) -> list[LlmUsage]:
        """Usage rows of a UTC day (``YYYY-MM-DD``), optionally of one tenant, ordered by
        tenant, agent, provider and model."""

    async def tenant_totals(self, day: str) -> dict[str, tuple[int, int, float]]:
        """Per tenant on a UTC day: (requests, tokens, cost)."""


COLUMNS = "day, tenant, agent_id, provider, model, requests, prompt_tokens, completion_tokens, cost"
_ADD = (
    f"INSERT INTO llm_usage ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    "ON CONFLICT (day, tenant, agent_id, provider, model) DO UPDATE SET "
    "requests = llm_usage.requests + excluded.requests, "
    "prompt_tokens = llm_usage.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = llm_usage.completion_tokens + excluded.completion_tokens, "
    "cost = llm_usage.cost + excluded.cost"
)


class SqlUsage:
    def __init__(self, db: Driver, *, in_transaction: bool = False) -> None:
        self._db = db
        self._in_transaction = in_transaction

    async def add(self, rows: Sequence[LlmUsage]) -> None:
        async with atomic(self._db, self._in_transaction) as tx:
            await tx.executemany(
                _ADD,
                [
                    (
                        r.day,
                        r.tenant,
                        r.agent_id,
                        r.provider,
                        r.model,
                        r.requests,
                        r.prompt_tokens,
                        r.completion_tokens,
                        float(r.cost),
                    )
                    for r in rows
                ],
            )

    async def rows(self, day: str, tenant: str | None = None) -> list[LlmUsage]:
        args = Args()
        conditions = [f"day = {args(day)}"]
        if tenant is not None:
            conditions.append(f"tenant = {args(tenant)}")
        rows = await self._db.fetch(
            f"SELECT {COLUMNS} FROM llm_usage{where(conditions)} "
            "ORDER BY tenant, agent_id, provider, model",
            *args,
        )
        return [
            LlmUsage(
                day=r[0],
                tenant=r[1],
                agent_id=r[2],
                provider=r[3],
                model=r[4],
                requests=int(r[5]),
                prompt_tokens=int(r[6]),
                completion_tokens=int(r[7]),
                cost=float(r[8]),
            )
            for r in rows
        ]

    async def tenant_totals(self, day: str) -> dict[str, tuple[int, int, float]]:
        rows = await self._db.fetch(
            "SELECT tenant, SUM(requests), SUM(prompt_tokens + completion_tokens), SUM(cost) "
            "FROM llm_usage WHERE day = $1 GROUP BY tenant",
            day,
        )
        return {r[0]: (int(r[1]), int(r[2]), float(r[3])) for r in rows}


_Key = tuple[str, str, str, str, str]


class UsageTable:
    def __init__(self) -> None:
        self.rows: dict[_Key, LlmUsage] = {}


class MemoryUsage:
    def __init__(self, db: MemoryDatabase, journal: Journal = AUTOCOMMIT) -> None:
        self._db = db
        self._journal = journal
        self._table = db.table(UsageTable)

    async def add(self, rows: Sequence[LlmUsage]) -> None:
        self._db.check()
        for r in rows:
            key = (r.day, r.tenant, r.agent_id, r.provider, r.model)
            stored = self._table.rows.get(key) or LlmUsage(
                day=r.day, tenant=r.tenant, agent_id=r.agent_id, provider=r.provider, model=r.model
            )
            added = msgspec.structs.replace(
                stored,
                requests=stored.requests + r.requests,
                prompt_tokens=stored.prompt_tokens + r.prompt_tokens,
                completion_tokens=stored.completion_tokens + r.completion_tokens,
                cost=stored.cost + float(r.cost),
            )
            put(self._journal, self._table.rows, key, added)

    async def rows(self, day: str, tenant: str | None = None) -> list[LlmUsage]:
        self._db.check()
        return [
            row
            for key, row in sorted(self._table.rows.items())
            if key[0] == day and (tenant is None or key[1] == tenant)
        ]

    async def tenant_totals(self, day: str) -> dict[str, tuple[int, int, float]]:
        self._db.check()
        totals: dict[str, tuple[int, int, float]] = {}
        for row in self._table.rows.values():
            if row.day == day:
                requests, tokens, cost = totals.get(row.tenant, (0, 0, 0.0))
                totals[row.tenant] = (
                    requests + row.requests,
                    tokens + row.prompt_tokens + row.completion_tokens,
                    cost + row.cost,
                )
        return totals
