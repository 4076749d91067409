"""SQLite store throughput: the group-committing driver against the single-connection one.

Each driver gets a fresh database file and runs three loads one after the
other through :class:`~agentcore.store.sql.SqlStore` (the code the gateway
runs), each for ``--duration`` seconds with ``--concurrency`` coroutines
calling the store in a loop:

* ``register``: ``put_agent(replace=False)`` of a new agent (``agent.register``);
* ``tasks``: ``insert_task`` of a new task (``task.create``);
* ``mixed`` (on a second database holding 1,000 agents and 1,000 assigned tasks):
  per call, 25 % ``get_agent``, 25 % ``query_agents`` (one capability, 10
  rows), 15 % ``query_tasks`` (assigned, 10 rows), 20 % ``insert_task``, 15 %
  ``put_agent(replace=True)`` of an existing agent; the data set read stays the
  same size whatever the driver's speed.

Drivers:

* ``grouped``: :class:`agentcore.store.sqlite.SqliteDatabase` as the gateway
  builds it (writer thread with group commit, 4 read connections);
* ``reference``: the driver of commit 55682ad, copied below as
  :class:`SingleConnectionDatabase` (one connection on one thread, an
  ``asyncio.Lock`` around every statement and every transaction).

Both run WAL with ``synchronous=NORMAL`` on local disk, on uvloop (what the
gateway's servers use). Printed per load and driver: calls/s, p50 and p99
latency of reads and of writes, and at the end the ratio grouped/reference.
The store is driven directly: no HTTP, so the event loop only does store work.

Run: ``python benchmarks/store_bench.py`` (about 30 s with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from agentcore.errors import StoreUnavailable
from agentcore.models import Agent, AgentCard, AgentQuery, AgentStatus, Task, TaskQuery, TaskStatus
from agentcore.store.sql import Database, Driver, SqlStore
from agentcore.store.sqlite import SqliteDatabase, _numbered

T = TypeVar("T")


# -- the reference: the single-connection driver of commit 55682ad -------------------

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=OFF",
)


class SingleConnectionDatabase:
    """One connection used from one thread; a lock per statement and per transaction."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._unlocked = _Unlocked(self)

    async def open(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference-sqlite")
        self._conn = await self._call(self._connect)

    async def close(self) -> None:
        async with self._lock:
            conn, thread = self._conn, self._thread
            self._conn = self._thread = None
            if conn is not None and thread is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
            if thread is not None:
                thread.shutdown(wait=False)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._unlocked.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._lock:
            return await self._unlocked.fetch(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._lock:
            await self._unlocked.executemany(sql, rows)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        async with self._lock:
            await self._unlocked.execute("BEGIN IMMEDIATE")
            try:
                yield self._unlocked
                await self._unlocked.execute("COMMIT")
            except BaseException:
                await self._run(_rollback)
                raise

    async def _run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("sqlite store is closed")
        return await self._call(functools.partial(op, conn))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._thread is None:
            raise StoreUnavailable("sqlite store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        return conn


class _Unlocked:
    dialect = "sqlite"

    def __init__(self, db: SingleConnectionDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        query = _numbered(sql)
        return await self._db._run(lambda conn: conn.execute(query, args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        query = _numbered(sql)
        return await self._db._run(lambda conn: conn.execute(query, args).fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        query, params = _numbered(sql), list(rows)
        if params:
            await self._db._run(lambda conn: conn.executemany(query, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Driver]:
        yield self


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


# -- the loads ---------------------------------------------------------------------------

CAPABILITIES = ("summarize", "translate", "classify", "extract")
#: The mixed load's data set: agents (1,000 like the seed's Locust users) and assigned tasks.
AGENTS = 1000
ASSIGNED = 1000


def agent(agent_id: str, rng: random.Random) -> Agent:
    caps = sorted(rng.sample(CAPABILITIES, 2))
    card = AgentCard(name=agent_id, agent_id=agent_id, capabilities=list(caps), tags=["bench"])
    return Agent(
        agent_id=agent_id,
        name=agent_id,
        version="1.0.0",
        status=AgentStatus.ACTIVE,
        capabilities=caps,
        tags=["bench"],
        card=card,
        tenant="bench",
        registered_at=time.time(),
        updated_at=time.time(),
        last_seen=time.time(),
    )


def task(task_id: str, rng: random.Random) -> Task:
    now = time.time()
    return Task(
        task_id=task_id,
        type="bench",
        title=f"task {task_id}",
        description="",
        required_capabilities=[rng.choice(CAPABILITIES)],
        parameters={"n": rng.randrange(1000)},
        input={"text": "hello"},
        priority=rng.randrange(1, 10),
        status=TaskStatus.PENDING,
        tenant="bench",
        created_at=now,
        updated_at=now,
    )


@dataclass
class Result:
    calls: int = 0
    elapsed_s: float = 0.0
    latency_s: dict[str, list[float]] = field(default_factory=lambda: {"read": [], "write": []})

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s else 0.0

    def quantile_ms(self, kind: str, q: float) -> str:
        values = sorted(self.latency_s[kind])
        if not values:
            return "-"
        return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.1f}"


Op = tuple[str, Awaitable[object]]


async def drive(
    make_op: Callable[[random.Random, str], Op], concurrency: int, duration_s: float
) -> Result:
    """``concurrency`` coroutines calling ``make_op`` until ``duration_s`` has passed."""
    result = Result()
    deadline = time.perf_counter() + duration_s

    async def worker(w: int) -> None:
        rng = random.Random(w)
        n = 0
        while time.perf_counter() < deadline:
            kind, call = make_op(rng, f"{w}-{n}")
            started = time.perf_counter()
            await call
            result.latency_s[kind].append(time.perf_counter() - started)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    result.calls = sum(len(v) for v in result.latency_s.values())
    return result


async def load_results(
    make_db: Callable[[str], Database], tmp: Path, concurrency: int, duration_s: float
) -> tuple[dict[str, Result], str]:
    """The three loads on ``make_db``'s driver; ``mixed`` on a second, prefilled database."""
    results: dict[str, Result] = {}
    groups: list[str] = []
    rng = random.Random(0)

    first = make_db(str(tmp / "writes.db"))
    store = SqlStore(first)
    await store.open()
    try:

        def register(rng: random.Random, key: str) -> Op:
            return "write", store.put_agent(agent(f"agent-{key}", rng), replace=False)

        def create(rng: random.Random, key: str) -> Op:
            return "write", store.insert_task(task(f"task-{key}", rng))

        results["register"] = await drive(register, concurrency, duration_s)
        results["tasks"] = await drive(create, concurrency, duration_s)
    finally:
        await store.close()
    groups.append(_groups(first))

    # The mixed load reads a data set of the same size for both drivers: AGENTS
    # agents (re-registered, never added) and ASSIGNED assigned tasks (new tasks
    # are pending, and task.query asks for assigned ones).
    second = make_db(str(tmp / "mixed.db"))
    store = SqlStore(second)
    await store.open()
    try:
        agent_ids = [f"agent-{n}" for n in range(AGENTS)]
        for agent_id in agent_ids:
            await store.put_agent(agent(agent_id, rng), replace=False)
        for n in range(ASSIGNED):
            assigned = task(f"assigned-{n}", rng)
            assigned.status, assigned.agent_id = TaskStatus.ASSIGNED, rng.choice(agent_ids)
            await store.insert_task(assigned)

        def mixed(rng: random.Random, key: str) -> Op:
            draw = rng.random()
            if draw < 0.25:  # agent.get
                return "read", store.get_agent(rng.choice(agent_ids))
            if draw < 0.50:  # agent.discover
                caps = [rng.choice(CAPABILITIES)]
                return "read", store.query_agents(AgentQuery(capabilities=caps, limit=10))
            if draw < 0.65:  # task.query
                query = TaskQuery(status=TaskStatus.ASSIGNED, limit=10)
                return "read", store.query_tasks(query)
            if draw < 0.85:  # task.create
                return "write", store.insert_task(task(f"task-{key}", rng))
            # agent.register with override_existing
            return "write", store.put_agent(agent(rng.choice(agent_ids), rng), replace=True)

        results["mixed"] = await drive(mixed, concurrency, duration_s)
    finally:
        await store.close()
    groups.append(_groups(second))
    return results, "; ".join(g for g in groups if g)


def _groups(db: Database) -> str:
    if not isinstance(db, SqliteDatabase):
        return ""
    batches, units = db.committed
    return f"{units:,} writes in {batches:,} commits ({units / max(1, batches):.1f} per commit)"


# -- the report -------------------------------------------------------------------------------


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uname = platform.uname()
    return f"{os.cpu_count()} CPUs, {cpu}, {uname.system} {uname.release} {uname.machine}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src/agentcore/store"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() + (" + uncommitted store changes" if dirty.stdout.strip() else "")


async def main(args: argparse.Namespace) -> None:
    print("SQLite store benchmark (benchmarks/store_bench.py)")
    print(f"date:     {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"machine:  {machine()}, load average {os.getloadavg()[0]:.2f} at start")
    print(
        f"software: Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"uvloop {getattr(uvloop, '__version__', '?')}, agentcore at {commit()}"
    )
    print(
        f"load:     {args.concurrency} coroutines, {args.duration:g} s per load, "
        "WAL + synchronous=NORMAL, a fresh file per driver"
    )
    print()
    all_results: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=args.dir) as tmp:
        drivers: list[tuple[str, Callable[[str], Database]]] = [
            ("reference", SingleConnectionDatabase),
            ("grouped", SqliteDatabase),
        ]
        for name, make_db in drivers:
            directory = Path(tmp) / name
            directory.mkdir()
            results, groups = await load_results(
                make_db, directory, args.concurrency, args.duration
            )
            all_results[name] = results
            if groups:
                print(f"{name}: {groups}")
    print()
    header = (
        f"{'load':<9} {'driver':<10} {'calls/s':>9}  "
        f"{'read p50':>8} {'read p99':>8}  {'write p50':>9} {'write p99':>9}  (ms)"
    )
    print(header)
    print("-" * len(header))
    for load in ("register", "tasks", "mixed"):
        for name in ("reference", "grouped"):
            r = all_results[name][load]
            print(
                f"{load:<9} {name:<10} {r.rate:>9,.0f}  "
                f"{r.quantile_ms('read', 0.5):>8} {r.quantile_ms('read', 0.99):>8}  "
                f"{r.quantile_ms('write', 0.5):>9} {r.quantile_ms('write', 0.99):>9}"
            )
    print()
    ratios = [
        f"{load} {all_results['grouped'][load].rate / all_results['reference'][load].rate:.1f}x"
        for load in ("register", "tasks", "mixed")
    ]
    print("grouped / reference: " + ", ".join(ratios))
    print(f"(geometric mean of the ratios: {_geomean(all_results):.1f}x)")


def _geomean(results: dict[str, dict[str, Result]]) -> float:
    return statistics.geometric_mean(
        results["grouped"][load].rate / results["reference"][load].rate
        for load in ("register", "tasks", "mixed")
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load (4)")
    parser.add_argument(
        "--concurrency", type=int, default=200, help="coroutines calling the store (200)"
    )
    parser.add_argument(
        "--dir", default=None, help="where the temporary databases go (the system temp dir)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(main(parse_args()))
