"""The agent registry: cards, liveness and discovery.

Registration and unregistration are written to the database before they are
acknowledged. Heartbeats are not: ``agent.ping`` only records the time in
memory and a background flush writes all pending heartbeats in one batch every
``heartbeat_flush_interval_s``. A crash therefore loses at most that interval
of heartbeat timestamps, never an agent. An agent that has not pinged for
``heartbeat_ttl_s`` is swept to ``inactive``; discovery and assignment skip it
and its next ping brings it back (written at once, not batched).

Discover and list answers are kept for ``query_cache_s`` and reused while no
change to the registry went through this worker: the same discovery asked
thousands of times a second costs one query per heartbeat flush instead of one
per request. A change through another worker or instance shows up at most
``query_cache_s`` late.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from agentcore.clock import Clock
from agentcore.config import RegistryConfig
from agentcore.entropy import random_hex
from agentcore.errors import AgentAlreadyExists, AgentNotFound
from agentcore.events.log import Change, EventLog
from agentcore.lifecycle import Job, every
from agentcore.models import DEFAULT_TENANT, Agent, AgentCard, AgentQuery, AgentStatus
from agentcore.registry.repository import AgentRepository

_encode_query = msgspec.json.Encoder().encode

#: Agents expired (with their tasks released) per change of a sweep.
EXPIRE_BATCH = 4
#: Distinct discover and list queries whose answers are kept; past it they start over.
CACHED_QUERIES = 1024

AgentHook = Callable[[str], Awaitable[None]]
#: Called inside the change that takes an agent away (its tasks are released in it).
LeaveHook = Callable[[Change, str, str], Awaitable[int]]
ReleasedHook = Callable[[], Awaitable[object]]


class PingResult(msgspec.Struct, kw_only=True):
    agent_id: str
    status: AgentStatus
    last_seen: float
    #: Seconds without a ping before the agent becomes inactive.
    ttl_s: float


class Registry:
    def __init__(
        self, agents: AgentRepository, events: EventLog, config: RegistryConfig, clock: Clock
    ) -> None:
        self._agents = agents
        self._events = events
        self._config = config
        self._clock = clock
        #: Heartbeats not yet written: (tenant, agent id) -> epoch seconds.
        self._beats: dict[tuple[str, str], float] = {}
        #: Agents this worker knows to be active: (tenant, agent id) -> cache expiry.
        self._active_until: dict[tuple[str, str], float] = {}
        #: The task service hooks in here. ``on_available`` runs once a change that
        #: made an agent available (registered, or back from inactive) has
        #: committed; ``on_leave`` runs inside the change that takes an agent
        #: away and returns how many of its tasks it released; ``on_released``
        #: runs after that change committed, when it released any, to offer
        #: them to the other agents.
        self.on_available: AgentHook | None = None
        self.on_leave: LeaveHook | None = None
        self.on_released: ReleasedHook | None = None
        #: Bumped once each write through this worker has ended (committed or not).
        self._generation = 0
        #: Query answers: encoded query -> (generation, expiry, agents).
        self._answers: dict[bytes, tuple[int, float, list[Agent]]] = {}

    @staticmethod
    def _emit(change: Change, event_type: str, agent_id: str, tenant: str, **data: object) -> None:
        change.emit(event_type, {"agent_id": agent_id, **data}, tenant=tenant, source="registry")

    async def _left(self, change: Change, agent_id: str, tenant: str) -> int:
        return 0 if self.on_leave is None else await self.on_leave(change, agent_id, tenant)

    async def register(
        self, card: AgentCard, *, override: bool = False, tenant: str = DEFAULT_TENANT
    ) -> Agent:
        now = self._clock()
        agent_id = card.agent_id or f"agent-{random_hex()}"
        agent = Agent(
            agent_id=agent_id,
            name=card.name,
            version=card.version,
            status=AgentStatus.ACTIVE,
            capabilities=card.capability_names(),
            tags=sorted(set(card.tags)),
            card=card,
            tenant=tenant,
            registered_at=now,
            updated_at=now,
            last_seen=now,
        )
        # Ids are scoped by tenant: this can only meet (or replace) the caller's own.
        async with self._change() as change:
            if not await change.repos.agents.put(agent, replace=override):
                raise AgentAlreadyExists(
                    f"agent {agent_id!r} is already registered; "
                    "pass override_existing=true to replace it"
                )
            self._emit(
                change,
                "agent.registered",
                agent_id,
                tenant,
                name=agent.name,
                capabilities=agent.capabilities,
            )
        key = (tenant, agent_id)
        self._beats.pop(key, None)
        self._active_until[key] = now + self._config.agent_cache_ttl_s
        if self.on_available is not None:
            await self.on_available(agent_id)
        return agent

    async def get(self, agent_id: str, tenant: str = DEFAULT_TENANT) -> Agent:
        """The tenant's agent of that id (another tenant's is a different agent)."""
        agent = await self._agents.get(tenant, agent_id)
        if agent is None:
            raise AgentNotFound(f"agent {agent_id!r} not found")
        beat = self._beats.get((tenant, agent_id))
        if beat is not None and beat > agent.last_seen:
            agent = msgspec.structs.replace(agent, last_seen=beat, status=AgentStatus.ACTIVE)
        return agent

    async def query(self, query: AgentQuery) -> list[Agent]:
        ttl = self._config.query_cache_s
        if ttl <= 0:
            return await self._agents.query(query)
        key = _encode_query(query)
        now = self._clock()
        kept = self._answers.get(key)
        if kept is not None and kept[0] == self._generation and kept[1] > now:
            return list(kept[2])
        # Taken before the read: a write that ends while it runs makes the answer stale.
        generation = self._generation
        agents = await self._agents.query(query)
        if len(self._answers) >= CACHED_QUERIES:
            self._answers.clear()
        self._answers[key] = (generation, now + ttl, agents)
        return list(agents)

    async def discover(self, query: AgentQuery) -> list[Agent]:
        """Like :meth:`query`, but only active agents unless a status is asked for."""
        if query.status is None:
            query = msgspec.structs.replace(query, status=AgentStatus.ACTIVE)
        return await self.query(query)

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[Change]:
        """A change of the registry: once it has ended, kept answers are stale."""
        try:
            async with self._events.change() as change:
                yield change
        finally:
            self._generation += 1

    async def ping(self, agent_id: str, tenant: str = DEFAULT_TENANT) -> PingResult:
        now = self._clock()
        key = (tenant, agent_id)
        cached = self._active_until.get(key)
        if cached is None or cached < now:
            await self._refresh(key, now)
        self._beats[key] = now
        return PingResult(
            agent_id=agent_id,
            status=AgentStatus.ACTIVE,
            last_seen=now,
            ttl_s=self._config.heartbeat_ttl_s,
        )

    async def _refresh(self, key: tuple[str, str], now: float) -> None:
        tenant, agent_id = key
        agent = await self._agents.get(tenant, agent_id)
        if agent is None:
            self._active_until.pop(key, None)
            self._beats.pop(key, None)
            raise AgentNotFound(f"agent {agent_id!r} not found")
        if agent.status is AgentStatus.INACTIVE:
            async with self._change() as change:
                await change.repos.agents.touch([(tenant, agent_id, now)])
                self._emit(change, "agent.active", agent_id, tenant)
            if self.on_available is not None:
                await self.on_available(agent_id)
        self._active_until[key] = now + self._config.agent_cache_ttl_s

    async def unregister(self, agent_id: str, tenant: str = DEFAULT_TENANT) -> None:
        """Delete the tenant's agent, emit ``agent.unregistered`` and release its assigned
        tasks, in one change; then offer the released tasks to the other agents."""
        async with self._change() as change:
            if not await change.repos.agents.delete(tenant, agent_id):
                raise AgentNotFound(f"agent {agent_id!r} not found")
            self._emit(change, "agent.unregistered", agent_id, tenant)
            released = await self._left(change, agent_id, tenant)
        key = (tenant, agent_id)
        self._beats.pop(key, None)
        self._active_until.pop(key, None)
        if released and self.on_released is not None:
            await self.on_released()

    def jobs(self) -> list[Job]:
        """The heartbeat flush and the sweep, each at its configured interval."""
        config = self._config
        return [
            every(config.heartbeat_flush_interval_s, self.flush),
            every(config.sweep_interval_s, self.sweep),
        ]

    async def flush(self) -> int:
        """Write pending heartbeats in one batch; returns how many."""
        if not self._beats:
            return 0
        beats, self._beats = self._beats, {}
        try:
            await self._agents.touch([(*key, ts) for key, ts in beats.items()])
        except BaseException:
            # Keep them for the next flush; newer beats win.
            for key, ts in beats.items():
                self._beats.setdefault(key, ts)
            raise
        finally:
            self._generation += 1  # last_seen moved: kept answers are stale
        return len(beats)

    async def sweep(self) -> list[str]:
        """Flush, then mark agents silent for longer than the TTL inactive.

        :data:`EXPIRE_BATCH` agents per change, each with the release of its
        tasks: atomic per agent, and a mass expiry (a load test's users
        leaving at once, each holding hundreds of tasks) lets the loop serve
        requests between two changes instead of stalling in one.
        """
        await self.flush()
        now = self._clock()
        cutoff = now - self._config.heartbeat_ttl_s
        released = 0
        swept: list[str] = []
        while True:
            async with self._change() as change:
                expired = await change.repos.agents.expire(cutoff, now, EXPIRE_BATCH)
                for agent_id, tenant in expired:
                    self._emit(change, "agent.inactive", agent_id, tenant)
                    released += await self._left(change, agent_id, tenant)
            for agent_id, tenant in expired:
                self._active_until.pop((tenant, agent_id), None)
                swept.append(agent_id)
            if len(expired) < EXPIRE_BATCH:
                break
            await asyncio.sleep(0)
        if released and self.on_released is not None:
            await self.on_released()
        return swept
