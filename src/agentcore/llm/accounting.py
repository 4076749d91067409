"""Usage per tenant and agent: Prometheus counters, a table in the database, daily budgets.

Every finished completion is counted at once in /metrics (requests, tokens
and cost by tenant, agent, provider and model) and in memory; a background
job (``llm.usage_flush_interval_s``) adds the counts to the ``llm_usage``
table, one row per (UTC day, tenant, agent, provider, model), and reads back
today's totals per tenant, so budgets see what the other workers spent
within one flush interval.

Budgets (``[llm.budgets.<tenant>]``, ``"*"`` for the rest) are checked
before routing: a tenant at or over its daily requests, tokens or cost gets
429 with ``Retry-After`` until midnight UTC. Calls already in flight finish,
so a tenant can overshoot by what its concurrent calls use. Failed calls
are counted in /metrics but spend no budget (providers do not bill them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentcore.clock import Clock
from agentcore.config import LlmBudgetConfig
from agentcore.errors import BudgetExceeded, StoreUnavailable
from agentcore.llm.usage import LlmUsage, UsageRepository

if TYPE_CHECKING:
    from prometheus_client import Counter

    from agentcore.metrics import Metrics

log = logging.getLogger("agentcore.llm")

DAY_S = 86_400


@dataclass(slots=True)
class Totals:
    requests: int = 0
    tokens: int = 0
    cost: float = 0.0

    def add(self, requests: int, tokens: int, cost: float) -> None:
        self.requests += requests
        self.tokens += tokens
        self.cost += cost


def utc_day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


class Accounting:
    def __init__(
        self,
        usage: UsageRepository,
        budgets: Mapping[str, LlmBudgetConfig],
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self._usage = usage
        self._budgets = budgets
        self._clock = clock
        self._metrics = metrics
        #: Counts not yet written to the store, by (day, tenant, agent, provider, model).
        self._pending: dict[tuple[str, str, str, str, str], LlmUsage] = {}
        #: Today's totals per tenant as the store last reported them...
        self._stored: dict[str, Totals] = {}
        self._stored_day = ""
        #: Where ``_stored_day`` starts and ends (epoch seconds): the day's name
        #: is only recomputed when the clock leaves it.
        self._day_starts = self._day_ends = 0.0
        #: ...plus what this worker counted since, not yet in ``_stored``.
        self._local: dict[str, Totals] = {}
        #: Counts being written by a running flush (still not in ``_stored``).
        self._flushing: dict[str, Totals] = {}
        #: The four counters of each (tenant, agent, provider, model) label set that
        #: completes: looked up once, not per completion (a ``labels()`` call is a lock
        #: and a dict lookup; performance-history.md, "The workload", seventh session).
        #: Keyed by the bounded labels, so it is as bounded as they are.
        self._series: dict[tuple[str, str, str, str], tuple[Counter, Counter, Counter, Counter]]
        self._series = {}

    @property
    def day(self) -> str:
        """Today, UTC, as ``YYYY-MM-DD``."""
        return utc_day(self._clock())

    def budget(self, tenant: str) -> LlmBudgetConfig | None:
        return self._budgets.get(tenant) or self._budgets.get("*")

    def today(self, tenant: str) -> Totals:
        """The tenant's usage today as this worker knows it."""
        self._roll()
        total = Totals()
        for source in (self._stored, self._local, self._flushing):
            part = source.get(tenant)
            if part is not None:
                total.add(part.requests, part.tokens, part.cost)
        return total

    def check(self, tenant: str) -> None:
        """Raise :class:`BudgetExceeded` when the tenant's daily budget is used up."""
        budget = self.budget(tenant)
        if budget is None:
            return
        used = self.today(tenant)
        over = None
        if budget.requests_per_day and used.requests >= budget.requests_per_day:
            over = ("requests", f"{used.requests} of {budget.requests_per_day} requests")
        elif budget.tokens_per_day and used.tokens >= budget.tokens_per_day:
            over = ("tokens", f"{used.tokens} of {budget.tokens_per_day} tokens")
        elif budget.cost_per_day and used.cost >= budget.cost_per_day:
            over = ("cost", f"{used.cost:.6g} of {budget.cost_per_day:g} cost")
        if over is None:
            return
        now = self._clock()
        retry = int(DAY_S - now % DAY_S) + 1
        if self._metrics is not None:
            self._metrics.llm_budget_exceeded.labels(self._metrics.tenants(tenant)).inc()
        raise BudgetExceeded(
            f"tenant {tenant!r} has used its daily LLM budget: {over[1]} today; "
            "it resets at 00:00 UTC",
            data={"tenant": tenant, "budget": over[0], "retry_after_s": retry},
            headers=((b"retry-after", str(retry).encode()),),
        )

    def record(
        self,
        tenant: str,
        agent: str,
        provider: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> None:
        """Count one successful completion."""
        self._roll()
        day = self._stored_day
        key = (day, tenant, agent, provider, model)
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = LlmUsage(
                day=day, tenant=tenant, agent_id=agent, provider=provider, model=model
            )
        row.requests += 1
        row.prompt_tokens += prompt_tokens
        row.completion_tokens += completion_tokens
        row.cost += cost
        self._local.setdefault(tenant, Totals()).add(1, prompt_tokens + completion_tokens, cost)
        metrics = self._metrics
        if metrics is not None:
            # The caller names its agent (and, with authentication off, its tenant):
            # bounded labels, so invented ids cannot add series without end.
            labels = (metrics.tenants(tenant), metrics.agents(agent), provider, model)
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = (
                    metrics.llm_requests.labels(*labels, "ok"),
                    metrics.llm_tokens.labels(*labels, "prompt"),
                    metrics.llm_tokens.labels(*labels, "completion"),
                    metrics.llm_cost.labels(*labels),
                )
            series[0].inc()
            series[1].inc(prompt_tokens)
            series[2].inc(completion_tokens)
            series[3].inc(cost)

    def failed(self, tenant: str, agent: str, provider: str, model: str, outcome: str) -> None:
        """Count a call that ended without a completion (``error``, ``timeout``, ``rejected``)."""
        metrics = self._metrics
        if metrics is not None:
            metrics.llm_requests.labels(
                metrics.tenants(tenant), metrics.agents(agent), provider, model, outcome
            ).inc()

    async def load(self) -> None:
        """Read today's totals (startup)."""
        await self.flush()

    async def flush(self) -> None:
        """Write pending counts and read back today's totals; on a store outage
        the counts stay pending and are written by a later flush."""
        self._roll()
        rows, self._pending = list(self._pending.values()), {}
        local = self._flushing = self._local
        self._local = {}
        try:
            if rows:
                await self._usage.add(rows)
            day = self._stored_day
            stored = await self._usage.tenant_totals(day)
        except StoreUnavailable:
            for row in rows:  # put them back, merging with what arrived meanwhile
                key = (row.day, row.tenant, row.agent_id, row.provider, row.model)
                newer = self._pending.get(key)
                if newer is not None:
                    row.requests += newer.requests
                    row.prompt_tokens += newer.prompt_tokens
                    row.completion_tokens += newer.completion_tokens
                    row.cost += newer.cost
                self._pending[key] = row
            for tenant, totals in local.items():
                self._local.setdefault(tenant, Totals()).add(
                    totals.requests, totals.tokens, totals.cost
                )
            raise
        finally:
            self._flushing = {}
        if day == self._stored_day:
            self._stored = {t: Totals(r, k, c) for t, (r, k, c) in stored.items()}

    def _roll(self) -> None:
        now = self._clock()
        if self._day_starts <= now < self._day_ends:
            return
        self._day_starts = now // DAY_S * DAY_S
        self._day_ends = self._day_starts + DAY_S
        day = utc_day(now)
        if day != self._stored_day:
            self._stored_day = day
            self._stored = {}
            self._local = {}
