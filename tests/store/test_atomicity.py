"""A state change commits its rows and its events together, or neither (issue 13).

Every state change of the gateway runs in one transaction with the events it
causes (``EventLog.change``). These tests wrap the SQL driver so that one
statement of the change's transaction fails, at every position in turn, and
check that the failure leaves the database exactly as it was (rows as the
store reads them back, counters, load counts, the event log, every table
byte for byte) and hands no event to the hub's subscribers; once no
statement fails any more, the same call succeeds and writes its rows and its
events. The fault is injected instead of statement ``k``, right after
statement ``k`` ran (after the last one: just before the commit), or as the
failure of the ``COMMIT`` itself (then the events must not have reached a
subscriber either).

On PostgreSQL a change whose only write is its last (a task created or moved
on) sends that write and its events as one statement after its reads, which
commits on its own: a fault instead of it is the failed commit, and none can
come after it but after the commit. The test checks that those changes took
that path: their reads, then one statement.

Run over every SQL backend (``tests/databases.py``: SQLite in memory and on
disk, PostgreSQL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import msgspec
import pytest

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event
from agentcore.models import (
    Agent,
    AgentCard,
    AgentQuery,
    AgentStatus,
    Task,
    TaskDefinition,
    TaskQuery,
    TaskStatus,
)
from agentcore.repositories import SqlRepositories
from agentcore.store import postgres, sqlite
from tests.support import make_config

S = TaskStatus
#: More statements than any state change here issues: the loop over positions ends by then.
MAX_STATEMENTS = 60
#: Longest one call may take (a lock left held by a failed change would hang the next one).
CALL_TIMEOUT_S = 10.0
TTL_S = 60.0


class InjectedFault(Exception):
    """The failure the wrapped driver raises."""


# -- the fault injector -----------------------------------------------------------------


class FaultInjector:
    """Fails one statement of the state change that runs after :meth:`arm`: the one at
    position ``at`` (instead of it, or just after it), or the first ``COMMIT``.

    The state change's statements are those of the transactions up to and
    including the first one that appends events (``INSERT INTO events``):
    changes that follow it (assigning released tasks after the commit) are not
    counted, but rows written in a transaction of their own before the events
    are.
    """

    def __init__(self) -> None:
        self.armed = False
        self.at = -1
        self.after = False
        self.commit = False
        #: SQL of the state change's statements, in order.
        self.statements: list[str] = []
        self._events_tx: object | None = None
        #: Whether the change's last write went with its events as one statement.
        self.fused = False

    def arm(self, at: int = -1, *, after: bool = False, commit: bool = False) -> None:
        self.armed, self.at, self.after, self.commit = True, at, after, commit
        self.statements = []
        self._events_tx = None
        self.fused = False

    def disarm(self) -> None:
        self.armed = self.commit = False

    def fail_commit(self) -> None:
        """Called before each ``COMMIT``: raises for the first one after arming."""
        if self.armed and self.commit:
            self.commit = False
            raise InjectedFault("instead of COMMIT")

    async def run_fused(self, tx: object, sql: str, statement: Callable[[], Awaitable[Any]]) -> Any:
        """A write sent with its events as one statement, which commits on its own: a
        fault instead of it fails the commit too, and no fault can come after it
        but after the commit."""
        self.fused = True
        if self.armed and self.commit:
            self.fail_commit()
        if self.after and self.at == len(self.statements):
            self.statements.append(f"{sql} + INSERT INTO events")
            return await statement()
        return await self.run(tx, f"{sql} + INSERT INTO events", statement)

    async def run(self, tx: object, sql: str, statement: Callable[[], Awaitable[Any]]) -> Any:
        if not self.armed or self._events_tx not in (None, tx):
            return await statement()  # a later change (e.g. assignment after a commit)
        if "INSERT INTO events" in sql:
            self._events_tx = tx
        index = len(self.statements)
        self.statements.append(sql)
        if index == self.at and not self.after:
            raise InjectedFault(f"instead of statement {index}: {sql[:80]}")
        result = await statement()
        if index == self.at and self.after:
            raise InjectedFault(f"after statement {index}: {sql[:80]}")
        return result


def install(monkeypatch: pytest.MonkeyPatch, injector: FaultInjector, url: str) -> None:
    """Route the in-transaction statements of ``url``'s driver through ``injector``."""
    if url.startswith("postgresql"):
        # Every statement of a unit of work: reads before its transaction begins,
        # the fused last write (its own commit), those of the begun transaction.
        cls: type[Any] = postgres.PostgresUnit

        def in_transaction(session: Any) -> bool:
            return True
    else:
        cls = sqlite._InTransaction

        def in_transaction(session: Any) -> bool:
            return True

    execute, fetch, executemany = cls.execute, cls.fetch, cls.executemany

    async def wrapped_execute(self: Any, sql: str, *args: Any) -> int:
        if not in_transaction(self):
            return int(await execute(self, sql, *args))
        if getattr(self, "_fuse", None) is not None:  # PostgreSQL: the write and its events
            return int(await injector.run_fused(self, sql, lambda: execute(self, sql, *args)))
        return int(await injector.run(self, sql, lambda: execute(self, sql, *args)))

    async def wrapped_fetch(self: Any, sql: str, *args: Any) -> list[Sequence[Any]]:
        if not in_transaction(self):
            rows: list[Sequence[Any]] = await fetch(self, sql, *args)
            return rows
        rows = await injector.run(self, sql, lambda: fetch(self, sql, *args))
        return rows

    async def wrapped_executemany(self: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        params = list(rows)
        if not in_transaction(self) or not params:  # no rows: the driver runs nothing
            await executemany(self, sql, params)
            return
        await injector.run(self, sql, lambda: executemany(self, sql, params))

    monkeypatch.setattr(cls, "execute", wrapped_execute)
    monkeypatch.setattr(cls, "fetch", wrapped_fetch)
    monkeypatch.setattr(cls, "executemany", wrapped_executemany)

    if url.startswith("postgresql"):
        # asyncpg's Transaction commits with ``connection.execute("COMMIT;")``; a
        # failed one leaves the transaction open, and the pool rolls it back on release.
        connection_execute = asyncpg.connection.Connection.execute

        async def commit_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if query == "COMMIT;":
                injector.fail_commit()
            return await connection_execute(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.connection.Connection, "execute", commit_execute)


class CommitFaults:
    """A sqlite3 connection whose ``COMMIT`` can be made to fail (sqlite3's own class
    cannot be patched); everything else goes to the connection."""

    def __init__(self, conn: sqlite3.Connection, injector: FaultInjector) -> None:
        self._conn = conn
        self._injector = injector

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self._injector.fail_commit()
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def install_commit_faults(gateway: Gateway, injector: FaultInjector) -> None:
    """On SQLite, put :class:`CommitFaults` around the open writer connection."""
    repos = gateway.repos
    assert isinstance(repos, SqlRepositories)
    if isinstance(repos.database, sqlite.SqliteDatabase):
        writer = repos.database._writer
        assert writer is not None
        writer.conn = cast(sqlite3.Connection, CommitFaults(writer.conn, injector))


# -- what the database holds ------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    tasks: list[Task]
    agents: list[Agent]
    events: list[Event]
    last_event_id: int
    task_counts: dict[str, int]
    agent_counts: dict[str, int]
    loads: dict[str, int]
    #: Every row of every table, read with plain SQL.
    tables: dict[str, list[str]]


async def snapshot(gateway: Gateway, agent_ids: Sequence[str]) -> Snapshot:
    repos = gateway.repos
    assert isinstance(repos, SqlRepositories)
    db = repos.database
    if db.dialect == "sqlite":
        names = await db.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    else:
        names = await db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    tables = {}
    for (name,) in names:
        rows = await db.fetch(f'SELECT * FROM "{name}"')
        tables[str(name)] = sorted(repr(tuple(row)) for row in rows)
    assert tables["tasks"] or tables["agents"], "an empty database proves nothing"
    return Snapshot(
        tasks=await repos.tasks.query(TaskQuery(limit=1000)),
        agents=await repos.agents.query(AgentQuery(limit=1000)),
        events=await repos.events.read(0, 10_000),
        last_event_id=await repos.events.last_id(),
        task_counts=await repos.tasks.count(),
        agent_counts=await repos.agents.count(),
        loads=await repos.tasks.loads("default", agent_ids),
        tables=tables,
    )


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    return [
        name
        for name in Snapshot.__dataclass_fields__
        if getattr(before, name) != getattr(after, name)
    ]


@asynccontextmanager
async def gateway_on(url: str) -> AsyncIterator[tuple[Gateway, ManualClock]]:
    """A started gateway on ``url`` (emptied), its background jobs too slow to interfere."""
    config = make_config(
        database={"url": url},
        registry={
            "heartbeat_ttl_s": TTL_S,
            "sweep_interval_s": 3600.0,
            "heartbeat_flush_interval_s": 3600.0,
        },
        events={"trim_interval_s": 3600.0},
        webhooks={"enabled": False},
        metrics={"enabled": False},
    )
    clock = ManualClock()
    gateway = create_app(config, clock=clock)
    await gateway.startup()
    try:
        if url.startswith("postgresql"):  # the session's database: empty it
            repos = gateway.repos
            assert isinstance(repos, SqlRepositories)
            await repos.database.execute(
                "TRUNCATE agents, agent_capabilities, agent_tags, tasks, events, api_keys"
            )
        yield gateway, clock
    finally:
        await gateway.shutdown()


# -- the state changes ------------------------------------------------------------------


async def add_agent(gateway: Gateway, agent_id: str, *caps: str) -> None:
    await gateway.registry.register(
        AgentCard(name=agent_id, agent_id=agent_id, capabilities=list(caps), tags=["blue"])
    )


async def add_task(gateway: Gateway, task_id: str, **definition: Any) -> Task:
    definition.setdefault("required_capabilities", ["work"])
    return await gateway.tasks.create(
        msgspec.convert({"task_id": task_id, **definition}, TaskDefinition)
    )


async def task(gateway: Gateway, task_id: str) -> Task:
    return await gateway.tasks.get(task_id)


async def agent(gateway: Gateway, agent_id: str) -> Agent | None:
    return await gateway.repos.agents.get("default", agent_id)


@dataclass(frozen=True)
class Scenario:
    #: Builds the state the change starts from.
    setup: Callable[[Gateway, ManualClock], Awaitable[None]]
    #: The state change.
    call: Callable[[Gateway], Awaitable[object]]
    #: The events the change itself emits, in order (later changes may follow).
    events: tuple[str, ...]
    #: Checks the rows after the change succeeded.
    check: Callable[[Gateway], Awaitable[None]]


AGENTS = ("a1", "a2", "a3")


async def one_worker(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a1", "work")
    await add_agent(gateway, "a3", "misc")


async def assigned(gateway: Gateway, clock: ManualClock) -> None:
    await one_worker(gateway, clock)
    assert (await add_task(gateway, "t1", timeout_seconds=30)).status is S.ASSIGNED


async def running(gateway: Gateway, clock: ManualClock) -> None:
    await assigned(gateway, clock)
    await gateway.tasks.start("t1")


async def retryable(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a1", "work")
    await add_agent(gateway, "a2", "work")
    assert (await add_task(gateway, "t1", max_retries=1)).agent_id == "a1"
    await add_task(gateway, "t2")  # to a2: a1 is again the least loaded once t1 fails


async def with_pending(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a3", "misc")
    assert (await add_task(gateway, "t1")).status is S.PENDING


async def silent_worker(gateway: Gateway, clock: ManualClock) -> None:
    await add_agent(gateway, "a1", "work")
    assert (await add_task(gateway, "t1")).status is S.ASSIGNED
    clock.advance(TTL_S + 1)
    await add_agent(gateway, "a2", "misc")  # seen just now: stays active


async def overdue(gateway: Gateway, clock: ManualClock) -> None:
    await running(gateway, clock)
    assert (await add_task(gateway, "t2", timeout_seconds=30)).status is S.ASSIGNED
    clock.advance(31)


async def check_create(gateway: Gateway) -> None:
    created = await task(gateway, "t2")
    assert (created.status, created.agent_id) == (S.ASSIGNED, "a1")
    assert await gateway.repos.tasks.loads("default", ["a1"]) == {"a1": 2}


async def check_start(gateway: Gateway) -> None:
    assert (await task(gateway, "t1")).status is S.RUNNING


async def check_complete(gateway: Gateway) -> None:
    assert (await task(gateway, "t1")).status is S.COMPLETED
    assert await gateway.repos.tasks.loads("default", ["a1"]) == {}


async def check_fail(gateway: Gateway) -> None:
    retried = await task(gateway, "t1")
    assert (retried.status, retried.retries, retried.agent_id) == (S.ASSIGNED, 1, "a1")


async def check_cancel(gateway: Gateway) -> None:
    assert (await task(gateway, "t1")).status is S.CANCELLED
    assert await gateway.repos.tasks.loads("default", ["a1"]) == {}


async def check_register(gateway: Gateway) -> None:
    registered = await agent(gateway, "a2")
    assert registered is not None and registered.tags == ["blue", "green"]
    # The pending task goes to it in a change of its own, after the registration.
    assert (await task(gateway, "t1")).agent_id == "a2"


async def check_override(gateway: Gateway) -> None:
    replaced = await agent(gateway, "a3")
    assert replaced is not None and replaced.capabilities == ["work"]
    assert (await task(gateway, "t1")).agent_id == "a3"


async def check_unregister(gateway: Gateway) -> None:
    assert await agent(gateway, "a1") is None
    released = await task(gateway, "t1")
    assert (released.status, released.agent_id) == (S.PENDING, None)


async def check_sweep(gateway: Gateway) -> None:
    swept = await agent(gateway, "a1")
    assert swept is not None and swept.status is AgentStatus.INACTIVE
    assert (await task(gateway, "t1")).status is S.PENDING


async def check_expire(gateway: Gateway) -> None:
    assert [(await task(gateway, t)).status for t in ("t1", "t2")] == [S.TIMED_OUT] * 2


async def sweep(gateway: Gateway) -> list[str]:
    expired = await gateway.registry.sweep()
    assert expired == ["a1"]
    return expired


async def expire(gateway: Gateway) -> list[str]:
    expired = await gateway.tasks.expire_due()
    assert sorted(expired) == ["t1", "t2"]
    return expired


SCENARIOS: dict[str, Scenario] = {
    "task.create": Scenario(
        assigned,
        lambda g: add_task(g, "t2"),
        ("task.created", "task.assigned"),
        check_create,
    ),
    "task.start": Scenario(
        assigned, lambda g: g.tasks.start("t1", "a1"), ("task.started",), check_start
    ),
    "task.complete": Scenario(
        running,
        lambda g: g.tasks.complete("t1", result={"ok": True}, artifacts=[]),
        ("task.completed",),
        check_complete,
    ),
    "task.fail (retried, reassigned)": Scenario(
        retryable,
        lambda g: g.tasks.fail("t1", error="boom"),
        ("task.retrying", "task.assigned"),
        check_fail,
    ),
    "task.cancel": Scenario(
        running, lambda g: g.tasks.cancel("t1", reason="no"), ("task.cancelled",), check_cancel
    ),
    "task expiry": Scenario(overdue, expire, ("task.timed_out", "task.timed_out"), check_expire),
    "agent.register": Scenario(
        with_pending,
        lambda g: g.registry.register(
            AgentCard(name="a2", agent_id="a2", capabilities=["work", "x"], tags=["green", "blue"])
        ),
        ("agent.registered",),
        check_register,
    ),
    "agent.register (override)": Scenario(
        with_pending,
        lambda g: g.registry.register(
            AgentCard(name="a3", agent_id="a3", capabilities=["work"], tags=["red"]),
            override=True,
        ),
        ("agent.registered",),
        check_override,
    ),
    "agent.unregister": Scenario(
        assigned,
        lambda g: g.registry.unregister("a1"),
        ("agent.unregistered", "task.released"),
        check_unregister,
    ),
    "registry sweep": Scenario(
        silent_worker, sweep, ("agent.inactive", "task.released"), check_sweep
    ),
}


# -- the test ------------------------------------------------------------------------------


FAULTS = ["instead-of", "after", "commit"]
#: The changes that write once, last: on PostgreSQL their reads, then one statement.
ONE_STATEMENT = {"task.create", "task.start", "task.complete", "task.cancel"}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_a_fault_in_a_state_change_leaves_neither_rows_nor_events(
    name: str,
    fault: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = SCENARIOS[name]
    injector = FaultInjector()
    install(monkeypatch, injector, database_url)
    async with gateway_on(database_url) as (gateway, clock):
        install_commit_faults(gateway, injector)
        await scenario.setup(gateway, clock)
        before = await snapshot(gateway, AGENTS)
        subscriber = gateway.bus.subscribe()

        async def call() -> None:
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await scenario.call(gateway)
            finally:
                injector.disarm()

        async def untouched(where: str) -> None:
            now = await snapshot(gateway, AGENTS)
            assert differences(before, now) == [], f"fault {where}"
            assert subscriber.drain() == [], f"fault {where}: an event was handed out"

        failed_at: list[str] = []  # the statement each fault hit
        if fault == "commit":
            injector.arm(commit=True)
            # SQLite reports a failed commit as StoreUnavailable; asyncpg passes it on.
            with pytest.raises((InjectedFault, StoreUnavailable)) as raised:
                await call()
            assert isinstance(raised.value, InjectedFault) or isinstance(
                raised.value.__cause__, InjectedFault
            ), repr(raised.value)
            await untouched("instead of COMMIT")
            injector.arm()  # counts the statements, fails none
            await call()
        else:
            for k in range(MAX_STATEMENTS):
                injector.arm(k, after=fault == "after")
                try:
                    await call()
                except InjectedFault as exc:
                    failed_at.append(injector.statements[k])
                    await untouched(f"at statement {k} ({exc})")
                else:
                    break  # the change has only k statements: nothing to fail at k
            else:
                pytest.fail(f"still failing after {MAX_STATEMENTS} statements")
            # The run without a fault ran the statements the faults hit, one per position
            # (but after a fused write, which is its own commit).
            hit = injector.statements
            assert failed_at == (hit[:-1] if injector.fused and fault == "after" else hit)

        # The change wrote rows and ended with its events.
        statements = injector.statements
        assert len(statements) >= 2 and "INSERT INTO events" in statements[-1], statements
        if database_url.startswith("postgresql") and name in ONE_STATEMENT:
            assert injector.fused and "INSERT INTO events" not in "".join(statements[:-1])
            assert all(sql.startswith("SELECT") for sql in statements[:-1]), statements
        await scenario.check(gateway)
        now = await snapshot(gateway, AGENTS)
        new = now.events[len(before.events) :]
        assert now.events[: len(before.events)] == before.events
        assert [e.type for e in new[: len(scenario.events)]] == list(scenario.events)
        assert [e.id for e in new] == list(
            range(before.last_event_id + 1, before.last_event_id + 1 + len(new))
        ), "event ids have a gap"
        assert now.last_event_id == before.last_event_id + len(new)
        handed = subscriber.drain()
        assert [(e.id, e.type, e.data) for e in handed] == [(e.id, e.type, e.data) for e in new]
        subscriber.close()
