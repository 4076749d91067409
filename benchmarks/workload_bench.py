"""The gateway's real workload through wrk, beside its own ping, in one interleaved run.

GitHub issue 13 asks for the seed's HTTP mix measured against the gateway's
own ``agent.ping`` throughput, on SQLite and on PostgreSQL, with a small and a
large registry. This script starts one gateway per configuration (backend x
scale), seeds it, then measures every configuration and route in rounds, in
turn, like ``http_bench.py`` (whose machinery it imports: wrk, its output
parsing, the process handling, the machine header, the merging of rounds).

Configurations, all started, seeded and warmed up first, all running for the
whole measurement: ``<backend>-<scale>`` for backend in ``--backends``
(``sqlite``, ``postgresql``) and scale in ``--scales`` (``1k``: ``--agents-small``
agents and ``--tasks-small`` tasks, 1,000 and 1,000 by default; ``100k``:
``--agents-large`` and ``--tasks-large``, 100,000 and 1,000,000). Each gateway is
``agentcore serve`` (uvicorn, one worker, a fresh data directory) pinned to
CPU 0, with authentication and rate limiting off and the heartbeat TTL set to
a year, so that the seeded agents stay active; its database is SQLite in its
data directory or a throwaway PostgreSQL database
(``CREATE DATABASE agentcore_bench_<hex>``, dropped at the end).

Seeding: agents through the API (JSON-RPC batches of ``agent.register``, cards
shaped like the seed load test's; 90 % of the agents have the ``summarization``
capability), then tasks (``required_capabilities: ["summarization"]``, so each is
assigned): through the API (batches of ``task.create``) up to
``--api-task-limit`` tasks, in bulk beyond (``--task-seeding``): the server is
stopped once it has its schema and agents, this script's loader inserts the
tasks through the gateway's own store code in transactions of 10,000 rows, the
server is started again. The API path runs at about 1,000 tasks/s on one core,
so a million tasks through it would take a quarter of an hour per server. On
PostgreSQL the database is then vacuumed and analysed (``VACUUM (ANALYZE)``,
what autovacuum would have done while a deployment created that many tasks),
so that neither autovacuum nor a plan change runs during the rounds.

Routes, each a wrk Lua script (``wrk -t1 -c64 --latency``, wrk pinned to CPU 1):

* ``ping``: ``agent.ping`` of one of the first ``--ping-agents`` agents, at random;
* ``mix``: the seed's HTTP mix with its weights: ``GET /api/v1/health`` 10,
  ``agent.ping`` 8, ``agent.discover`` (summarization, limit 10) 5,
  ``task.create`` 3, ``task.query`` (assigned, limit 10) 2;
* ``discover``: only the discover call; ``query``: only the task query.

The Lua ``response`` callback counts every status other than 200 and every 200
without ``"result"`` (health: without ``"status":"healthy"``); a row with any
error (or socket error) is invalid, and a goal built on it is never a PASS.
Before and after the rounds each server is asked one discover and one query,
which must return full pages (an empty registry answers fast and would pass
as throughput).

With ``--baseline REV`` every configuration also runs on git revision REV's code
(``<configuration>@<commit>``: its ``src/`` exported with ``git archive`` into the
run's temporary directory and put first on the server's PYTHONPATH, the command
and settings unchanged), in the same rounds, and the report adds current /
baseline per configuration and route, with each side's CPU per request and p99:
GitHub issue 13's "on the event loop's thread against reader and writer
threads" (``--baseline fd68243``).

Run ``python benchmarks/workload_bench.py --help`` for the options;
``benchmarks/README.md`` explains the output and the goals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from http_bench import (
    BARE_ENV,
    CLOCK_TICKS,
    HEALTH_PATH,
    HOST,
    INSTALL_HINT,
    RPC_PATH,
    Interrupted,
    Processes,
    Ratio,
    Result,
    Target,
    Wrk,
    _raise_on_signal,
    base_env,
    check_rpc,
    fmt_ms,
    fmt_pct,
    fmt_us,
    free_port,
    machine,
    merge,
    out,
    pinning,
    progress,
    tail,
    wait_idle,
    wait_ready,
    with_paths,
)

BACKENDS = ("sqlite", "postgresql")
SCALES = ("1k", "100k")
ROUTES = ("ping", "mix", "discover", "query")
#: Routes measured only when asked for (``--routes``): ``task.create`` alone.
EXTRA_ROUTES = ("create",)
#: The seed's HTTP mix (tests/load/http_load_test.py): kind and weight.
MIX = (("health", 10), ("ping", 8), ("discover", 5), ("create", 3), ("query", 2))

#: The gateway's default ``limits.max_batch_size`` (this script does not change it).
DEFAULT_BATCH = 100
#: Seeded agents stay active for the whole run: a year without a ping.
HEARTBEAT_TTL_S = 365 * 24 * 3600
SERVER_ENV = BARE_ENV | {"AGENTCORE_REGISTRY__HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S)}
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Seconds one seeding request may take (a batch of task.create on a busy server).
SEED_REQUEST_TIMEOUT_S = 120.0
#: Rows per transaction of the bulk task loader.
BULK_CHUNK = 10_000
#: The hidden first argument that runs the bulk loader (in a child process).
LOADER_FLAG = "--internal-load-tasks"
#: Seconds between two seeding progress lines.
PROGRESS_EVERY_S = 15.0
#: Seconds a PostgreSQL administration statement may take.
PG_ADMIN_TIMEOUT_S = 60.0
#: The checkout (``--baseline`` revisions are read from its git repository).
REPO = Path(__file__).resolve().parent.parent
#: Seconds a git command (rev-parse, archive) may take.
GIT_TIMEOUT_S = 60.0

DISCOVER_PARAMS: dict[str, Any] = {"capabilities": ["summarization"], "limit": 10}
QUERY_PARAMS: dict[str, Any] = {"status": "assigned", "limit": 10}
#: The seed load test's task (tests/load/http_load_test.py), without a task_id.
TASK_DEFINITION: dict[str, Any] = {
    "type": "summarize",
    "title": "load test task",
    "required_capabilities": ["summarization"],
    "priority": "normal",
    "input": {"text": "lorem ipsum"},
}


def rpc(method: str, params: Mapping[str, Any], rpc_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": dict(params)}


def agent_id(n: int) -> str:
    return f"wl-{n:07d}"


def capable(n: int) -> bool:
    """Whether agent ``n`` has ``summarization``: nine in ten do (the issue measured
    9,000 matching agents of 10,000)."""
    return n % 10 != 0


def agent_card(n: int) -> dict[str, Any]:
    """Shaped like the seed load test's card (tests/load/common.py), with a little variety."""
    capabilities = ["text-generation", "summarization" if capable(n) else "translation"]
    if n % 3 == 0:
        capabilities.append("classification")
    return {
        "agent_id": agent_id(n),
        "name": f"load-{n:07d}",
        "version": "1.0.0",
        "capabilities": capabilities,
        "tags": [f"region-{n % 4}", "workload-bench"],
        "endpoints": [
            {
                "url": f"http://127.0.0.1:9/{agent_id(n)}",
                "type": "http",
                "protocols": ["jsonrpc-2.0"],
            }
        ],
    }


def compact(n: int) -> str:
    """1000 -> 1k, 1000000 -> 1M, 2500 -> 2.5k."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:g}{suffix}"
    return str(n)


# -- configurations -----------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One gateway to run: a backend and a scale, on this checkout's code or (``revision``
    set) on the ``--baseline`` revision's."""

    backend: str
    scale: str
    agents: int
    tasks: int
    #: The baseline's short commit ('' for the code under test).
    revision: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.scale}" + (f"@{self.revision}" if self.revision else "")

    @property
    def current(self) -> str:
        """The name of the configuration on the code under test."""
        return f"{self.backend}-{self.scale}"


@dataclass
class Seeding:
    """How a server was filled."""

    agents: int = 0
    agents_s: float = 0.0
    agent_errors: int = 0
    tasks: int = 0
    tasks_via: str = ""
    tasks_s: float = 0.0
    task_errors: int = 0
    #: task.create answers by status (API) or the stored tasks by status (bulk).
    task_statuses: dict[str, int] = field(default_factory=dict)
    #: Seconds the bulk path spent besides inserting: stopping the server, starting
    #: the loader and opening the store, starting the server again.
    restart_s: float | None = None
    first_errors: list[str] = field(default_factory=list)

    @property
    def agents_per_s(self) -> float | None:
        return self.agents / self.agents_s if self.agents_s else None

    @property
    def tasks_per_s(self) -> float | None:
        return self.tasks / self.tasks_s if self.tasks_s else None


@dataclass
class Row(Result):
    """A wrk run (one server, one route), with what http_bench's Result lacks."""

    #: CPU used by the server's PostgreSQL backends during the run (% of one CPU).
    db_cpu_pct: float | None = None
    #: Requests wrk sent, by kind (the mix's weights, checked).
    sent: dict[str, int] = field(default_factory=dict)


@dataclass
class Server:
    """A started (or failed) gateway and what was learnt about it."""

    setup: Setup
    target: Target | None = None
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    log_path: Path | None = None
    scripts: dict[str, Path] = field(default_factory=dict)
    database: str = ""
    #: The throwaway PostgreSQL database (None for SQLite).
    db_name: str | None = None
    seeding: Seeding = field(default_factory=Seeding)
    #: Memory of the server's process group in KiB: after seeding, the largest
    #: reading (VmRSS or VmHWM, its own peak) and the last one.
    rss_seeded_kb: int = 0
    rss_peak_kb: int = 0
    rss_last_kb: int = 0
    #: Tasks the mix created (warm-up and rounds), as wrk counted the requests sent.
    created: int = 0
    #: Why it cannot be measured ('' when it can).
    error: str = ""
    #: Problems of the sanity checks (pages not full), by route.
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.setup.name

    def sample_memory(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        rss, hwm = group_memory_kb(self.proc.pid)
        if rss:
            self.rss_last_kb = rss
            self.rss_peak_kb = max(self.rss_peak_kb, rss, hwm)


# -- /proc ----------------------------------------------------------------------


def _proc_entries() -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                yield entry


def _stat_fields(entry: Path) -> list[str] | None:
    try:
        text = (entry / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def group_memory_kb(pgid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak RSS) summed over the live processes of process group ``pgid``."""
    rss = hwm = 0
    for entry in _proc_entries():
        fields = _stat_fields(entry)
        if fields is None or int(fields[2]) != pgid:
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


def db_cpu_s(db_name: str) -> float:
    """CPU seconds used so far by the live PostgreSQL backends serving ``db_name``
    (their process title names the database)."""
    ticks = 0
    needle = f" {db_name} ".encode()
    for entry in _proc_entries():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if not title.startswith(b"postgres:") or needle not in title.replace(b"\0", b" "):
            continue
        fields = _stat_fields(entry)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


# -- PostgreSQL -----------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _pg_admin(url: str, statements: Sequence[str]) -> str:
    import asyncpg  # a dependency of the gateway

    conn = await asyncpg.connect(url, timeout=10)
    try:
        version = str(await conn.fetchval("SHOW server_version"))
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
    return version


def pg_admin(url: str, *statements: str) -> str:
    """Run ``statements`` on the administration database; the server's version."""
    return asyncio.run(asyncio.wait_for(_pg_admin(url, statements), PG_ADMIN_TIMEOUT_S))


def drop_database(admin_url: str, name: str) -> None:
    try:
        pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as exc:  # report and go on: the other databases still get dropped
        progress(f"could not drop database {name}: {exc}")


# -- seeding --------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_batch(url: str, batch: Sequence[Mapping[str, Any]]) -> list[Any]:
    """POST one JSON-RPC batch; the answers (an error per item when the HTTP call failed)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(batch).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with _OPENER.open(request, timeout=SEED_REQUEST_TIMEOUT_S) as response:
            answers = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}: {exc.read()[:200].decode(errors='replace')}"
        return [{"error": {"message": reason}}] * len(batch)
    except (OSError, ValueError) as exc:
        return [{"error": {"message": f"{type(exc).__name__}: {exc}"}}] * len(batch)
    if not isinstance(answers, list):
        return [answers] * len(batch)
    return answers


@dataclass
class BatchOutcome:
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def add(self, answers: Sequence[Any]) -> None:
        for answer in answers:
            result = answer.get("result") if isinstance(answer, dict) else None
            if isinstance(result, dict):
                self.ok += 1
                status = result.get("status")
                if isinstance(status, str):
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                continue
            self.errors += 1
            if len(self.first_errors) < 3:
                self.first_errors.append(json.dumps(answer)[:300])


def send_batches(
    url: str,
    batches: Iterable[list[dict[str, Any]]],
    total: int,
    what: str,
    concurrency: int,
    deadline: float,
) -> BatchOutcome:
    """Send ``batches`` with ``concurrency`` in flight; raises TimeoutError past ``deadline``."""
    outcome = BatchOutcome()
    started = last_note = time.monotonic()
    pending: set[Future[list[Any]]] = set()
    source = iter(batches)
    with ThreadPoolExecutor(concurrency) as pool:
        try:
            while True:
                while len(pending) < 2 * concurrency:
                    batch = next(source, None)
                    if batch is None:
                        break
                    pending.add(pool.submit(post_batch, url, batch))
                if not pending:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"seeding {what}: --seed-timeout reached after "
                        f"{outcome.ok + outcome.errors} of {total}"
                    )
                done, pending = wait(
                    pending, timeout=min(left, PROGRESS_EVERY_S), return_when=FIRST_COMPLETED
                )
                for future in done:
                    outcome.add(future.result())
                now = time.monotonic()
                if now - last_note >= PROGRESS_EVERY_S:
                    last_note = now
                    sent = outcome.ok + outcome.errors
                    progress(f"  {what}: {sent:,} of {total:,} ({sent / (now - started):,.0f}/s)")
        finally:
            for future in pending:
                future.cancel()
    outcome.seconds = time.monotonic() - started
    return outcome


def agent_batches(count: int, size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, count, size):
        yield [
            rpc("agent.register", {"agent_card": agent_card(n)}, n + 1)
            for n in range(start, min(count, start + size))
        ]


def task_batches(count: int, size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, count, size):
        yield [
            rpc("task.create", {"task_definition": TASK_DEFINITION}, n + 1)
            for n in range(start, min(count, start + size))
        ]


def bulk_load(server: Server, procs: Processes, args: argparse.Namespace, deadline: float) -> None:
    """Stop the server, insert its tasks with the loader (a child process running the
    gateway's store code), start the server again."""
    assert server.proc is not None and server.target is not None and server.log_path
    setup, seeding = server.setup, server.seeding
    server.sample_memory()
    stopped = time.monotonic()
    procs.stop(server.proc)
    server.proc = None
    log = server.log_path.with_suffix(".loader.log")
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        LOADER_FLAG,
        server.database,
        str(setup.tasks),
        str(setup.agents),
    ]
    loader = procs.start(argv, server.target.env, log)
    started = time.monotonic()
    try:
        loader.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        procs.stop(loader)
        raise TimeoutError("the bulk task loader did not finish within --seed-timeout") from None
    loader_s = time.monotonic() - started
    procs.stop(loader)
    report: dict[str, Any] = {}
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                report = json.loads(line)
            break
    if loader.returncode != 0 or not report:
        raise RuntimeError(f"the bulk task loader exited with {loader.returncode}\n{tail(log)}")
    seeding.tasks = int(report["inserted"])
    # The rate counts the inserts; the loader's start (imports, opening the store)
    # goes to restart_s with the server's stop and start.
    seeding.tasks_s = min(float(report["seconds"]), loader_s)
    seeding.tasks_via = f"bulk/{report['method']}"
    seeding.task_statuses = {str(k): int(v) for k, v in report["by_status"].items()}
    server.proc = procs.start(
        server.target.argv, server.target.env, server.log_path.with_suffix(".restarted.log")
    )
    server.log_path = server.log_path.with_suffix(".restarted.log")
    wait_ready(server.proc, server.base + HEALTH_PATH, server.log_path)
    seeding.restart_s = time.monotonic() - stopped - seeding.tasks_s


def seed(server: Server, procs: Processes, args: argparse.Namespace) -> None:
    """Register the agents and create the tasks; raises when the server cannot be used."""
    setup, seeding = server.setup, server.seeding
    url = server.base + RPC_PATH
    deadline = time.monotonic() + args.seed_timeout
    progress(
        f"{server.name}: registering {setup.agents:,} agents "
        f"(batches of {args.batch_size}, {args.seed_concurrency} in flight)"
    )
    agents = send_batches(
        url,
        agent_batches(setup.agents, args.batch_size),
        setup.agents,
        "agents",
        args.seed_concurrency,
        deadline,
    )
    seeding.agents, seeding.agents_s = agents.ok, agents.seconds
    seeding.agent_errors = agents.errors
    seeding.first_errors.extend(agents.first_errors)
    progress(
        f"{server.name}: {agents.ok:,} agents in {agents.seconds:.1f} s "
        f"({seeding.agents_per_s or 0:,.0f}/s), {agents.errors} errors"
    )
    if agents.errors:
        raise RuntimeError(
            f"{agents.errors} agent registrations failed: {'; '.join(agents.first_errors)}"
        )
    via = args.task_seeding
    if via == "auto":
        via = "api" if setup.tasks <= args.api_task_limit else "bulk"
    if setup.tasks and via == "bulk":
        progress(f"{server.name}: bulk-loading {setup.tasks:,} tasks (server stopped meanwhile)")
        bulk_load(server, procs, args, deadline)
    elif setup.tasks:
        progress(f"{server.name}: creating {setup.tasks:,} tasks through the API")
        tasks = send_batches(
            url,
            task_batches(setup.tasks, args.batch_size),
            setup.tasks,
            "tasks",
            args.seed_concurrency,
            deadline,
        )
        seeding.tasks, seeding.tasks_s, seeding.task_errors = tasks.ok, tasks.seconds, tasks.errors
        seeding.tasks_via = "api"
        seeding.task_statuses = dict(tasks.statuses)
        seeding.first_errors.extend(tasks.first_errors)
        if tasks.errors:
            raise RuntimeError(
                f"{tasks.errors} task creations failed: {'; '.join(tasks.first_errors)}"
            )
    if server.db_name:
        # The triggers of a million inserts left about three million dead versions
        # of agent and label rows in minutes; a deployment that created the tasks
        # over hours would have had them vacuumed as it went. Done now, not by
        # autovacuum during the rounds (PostgreSQL at 150 % CPU, the mix at a
        # twentieth of its speed), and the plans do not change mid-run.
        try:
            pg_admin(server.database, "VACUUM (ANALYZE)")
        except Exception as exc:
            raise RuntimeError(f"VACUUM (ANALYZE) failed: {exc}") from exc
    progress(
        f"{server.name}: {seeding.tasks:,} tasks ({seeding.tasks_via}) in "
        f"{seeding.tasks_s:.1f} s ({seeding.tasks_per_s or 0:,.0f}/s), by status "
        f"{seeding.task_statuses}"
        + (f"; restarted in {seeding.restart_s:.1f} s" if seeding.restart_s else "")
    )


# -- the bulk loader (runs in a child process, on the gateway's code) -------------


def load_tasks_main(argv: Sequence[str]) -> int:
    """``LOADER_FLAG URL TASKS AGENTS``: insert TASKS assigned tasks, round robin over
    the capable agents among the first AGENTS, as ``task.create`` would have stored
    them; print a JSON report as the last line."""
    url, tasks, agents = argv[0], int(argv[1]), int(argv[2])
    report = asyncio.run(_load_tasks(url, tasks, agents))
    print(json.dumps(report), flush=True)
    return 0


async def _load_tasks(url: str, count: int, agents: int) -> dict[str, Any]:
    from agentcore.models import Task, TaskStatus

    # The repository's own statement and row, many rows per transaction; a baseline
    # revision from before the repositories has them in store/sql.py.
    insert_sql: str | None
    try:
        from agentcore.repositories import open_repositories
        from agentcore.tasks.repository import _INSERT as insert_sql
        from agentcore.tasks.repository import _row as _task_row

        store: Any = open_repositories(url, statement_timeout_s=3600)
        db = getattr(store, "database", None)
        insert_one, count_tasks = store.tasks.insert, store.tasks.count
        if db is not None and db.dialect == "sqlite":
            # Connected and migrated but not serving: a chunk is then a plain
            # transaction of its own (no group commit, no checkpointer thread). Chosen
            # when a served chunk was a savepoint whose in-memory statement journal
            # made each of its 10,000 inserts slower than the last (measured at
            # 971d245); served blocks have no savepoint since 4956e06, and this path
            # was not measured against serving again.
            from agentcore.store.schema import migrate

            async def open_unserved() -> None:
                await db.open()
                await migrate(db)

            store.open = open_unserved
    except ImportError:
        from agentcore.store import open_store

        try:
            from agentcore.store.sql import _INSERT_TASK as insert_sql
            from agentcore.store.sql import _task_row
        except ImportError:
            insert_sql = None
        try:  # a chunk of 10,000 rows is one statement: no per-statement time limit here
            store = open_store(url, statement_timeout_s=3600)
        except TypeError:  # a baseline revision without the setting
            store = open_store(url)
        db = getattr(store, "db", None)
        insert_one, count_tasks = store.insert_task, store.count_tasks
    await store.open()
    method = "executemany" if insert_sql and db is not None else "insert_task"
    try:
        owners = [agent_id(n) for n in range(agents) if capable(n)]
        if not owners:
            raise SystemExit("no agent has the summarization capability")
        now = time.time()
        first = now - count * 0.001  # one a millisecond, ending now
        started = last = time.monotonic()
        for start in range(0, count, BULK_CHUNK):
            chunk = [
                Task(
                    task_id=f"task-{secrets.token_hex(8)}",
                    type=TASK_DEFINITION["type"],
                    title=TASK_DEFINITION["title"],
                    description="",
                    required_capabilities=TASK_DEFINITION["required_capabilities"],
                    parameters={},
                    input=TASK_DEFINITION["input"],
                    priority=5,
                    status=TaskStatus.ASSIGNED,
                    agent_id=owners[n % len(owners)],
                    created_at=first + n * 0.001,
                    updated_at=first + n * 0.001,
                    version=2,
                )
                for n in range(start, min(count, start + BULK_CHUNK))
            ]
            if insert_sql is not None and db is not None:
                async with db.transaction() as tx:
                    await tx.executemany(insert_sql, [_task_row(task) for task in chunk])
            else:
                await asyncio.gather(*(insert_one(task) for task in chunk))
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                done = start + len(chunk)
                print(f"# {done:,} tasks ({done / (last - started):,.0f}/s)", flush=True)
        by_status = await count_tasks()
    finally:
        await store.close()
    return {
        "inserted": count,
        "method": method,
        "by_status": by_status,
        "seconds": time.monotonic() - started,
    }


# -- wrk scripts ----------------------------------------------------------------

LUA_TEMPLATE = """\
-- Generated by benchmarks/workload_bench.py: route {route}.
-- Each request is drawn by weight from the kinds below (one of its bodies at random);
-- every request is formatted once, in init.
local kinds = {{
{kinds}
}}
local threads = {{}}
local count = 0

function setup(thread)
  count = count + 1
  thread:set("thread_number", count)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0
  rpc_errors = 0
  sent = {{}}
  math.randomseed(7919 * thread_number)
  total = 0
  prepared = {{}}
  for i, kind in ipairs(kinds) do
    local texts = {{}}
    for j, body in ipairs(kind.bodies) do
      local headers = {{}}
      if body ~= "" then
        headers["Content-Type"] = "application/json"
        texts[j] = wrk.format(kind.method, kind.path, headers, body)
      else
        texts[j] = wrk.format(kind.method, kind.path, headers, nil)
      end
    end
    total = total + kind.weight
    prepared[i] = {{upto = total, texts = texts, n = #texts}}
    sent[i] = 0
  end
end

function request()
  local r = math.random(total)
  for i = 1, #prepared do
    local p = prepared[i]
    if r <= p.upto then
      sent[i] = sent[i] + 1
      if p.n == 1 then
        return p.texts[1]
      end
      return p.texts[math.random(p.n)]
    end
  end
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif not ({ok}) then
    rpc_errors = rpc_errors + 1
  end
end

function done(summary, latency, requests)
  local bad, rpc = 0, 0
  local totals = {{}}
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non200")
    rpc = rpc + thread:get("rpc_errors")
    local s = thread:get("sent")
    for i = 1, #kinds do
      totals[i] = (totals[i] or 0) + s[i]
    end
  end
  io.write(string.format("BENCH non200=%d rpc_errors=%d\\n", bad, rpc))
  local parts = {{}}
  for i, kind in ipairs(kinds) do
    table.insert(parts, string.format("%s=%d", kind.name, totals[i]))
  end
  io.write("BENCH sent " .. table.concat(parts, " ") .. "\\n")
end
"""

_RESULT = "string.find(body, '\"result\"', 1, true)"
_HEALTHY = 'string.find(body, \'"status":"healthy"\', 1, true)'


def _lua_string(text: str) -> str:
    if "]==]" in text:
        raise ValueError("a body contains ]==]")
    return f"[==[{text}]==]"


def kind_bodies(kind: str, ping_ids: Sequence[str]) -> tuple[str, str, list[str]]:
    """Method, path and the bodies of one kind of request."""

    def encode(payload: Mapping[str, Any]) -> str:
        return json.dumps(payload, separators=(",", ":"))

    if kind == "health":
        return "GET", HEALTH_PATH, [""]
    if kind == "ping":
        return "POST", RPC_PATH, [encode(rpc("agent.ping", {"agent_id": a})) for a in ping_ids]
    if kind == "discover":
        return "POST", RPC_PATH, [encode(rpc("agent.discover", DISCOVER_PARAMS))]
    if kind == "query":
        return "POST", RPC_PATH, [encode(rpc("task.query", QUERY_PARAMS))]
    if kind == "create":
        return "POST", RPC_PATH, [encode(rpc("task.create", {"task_definition": TASK_DEFINITION}))]
    raise ValueError(kind)


def route_kinds(route: str) -> tuple[tuple[str, int], ...]:
    return MIX if route == "mix" else ((route, 1),)


def write_lua(directory: Path, route: str, ping_ids: Sequence[str], prefix: str) -> Path:
    entries = []
    for kind, weight in route_kinds(route):
        method, target, bodies = kind_bodies(kind, ping_ids)
        listed = ",\n    ".join(_lua_string(b) for b in bodies)
        entries.append(
            f'  {{name = "{kind}", weight = {weight}, method = "{method}", '
            f'path = "{target}", bodies = {{\n    {listed}\n  }}}}'
        )
    ok = f"{_RESULT} or {_HEALTHY}" if route == "mix" else _RESULT
    path = directory / f"{prefix}{route}.lua"
    path.write_text(LUA_TEMPLATE.format(route=route, kinds=",\n".join(entries), ok=ok))
    return path


def parse_sent(text: str) -> dict[str, int]:
    for line in text.splitlines():
        if line.startswith("BENCH sent "):
            pairs = (item.split("=", 1) for item in line.split()[2:])
            return {name: int(value) for name, value in pairs}
    return {}


# -- the baseline ---------------------------------------------------------------


def git(*argv: str, text: bool = True) -> Any:
    """``git -C REPO argv``'s standard output (str, or bytes with ``text=False``);
    raises RuntimeError when it fails."""
    done = subprocess.run(
        ["git", "-C", str(REPO), *argv], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        raise RuntimeError(f"git {' '.join(argv)}: {why}")
    return done.stdout.decode().strip() if text else done.stdout


def resolve_revision(revision: str) -> tuple[str, str, str]:
    """The full and the short commit of ``revision`` and its one-line description."""
    full = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return full, git("rev-parse", "--short", full), git("log", "-1", "--format=%h %cs %s", full)


def export_src(commit: str, into: Path) -> Path:
    """``git archive commit src | tar -x -C into`` (nothing to clean up in the
    repository afterwards); the exported ``src/``."""
    into.mkdir(parents=True)
    with tarfile.open(
        fileobj=io.BytesIO(git("archive", "--format=tar", commit, "src", text=False))
    ) as archive:
        archive.extractall(into, filter="data")
    src = into / "src"
    if not (src / "agentcore" / "__init__.py").is_file():
        raise RuntimeError(f"{commit[:12]} has no src/agentcore/__init__.py")
    return src


def imported_from(env: Mapping[str, str]) -> Path:
    """Where ``python -c 'import agentcore'`` finds the package with ``env`` (and this
    process's working directory, like the servers)."""
    done = subprocess.run(
        [sys.executable, "-c", "import agentcore; print(agentcore.__file__)"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"importing agentcore failed: {done.stderr.strip()[-500:]}")
    return Path(lines[-1]).resolve().parent


def prepare_baseline(commit: str, workdir: Path) -> tuple[Path, Path]:
    """Export the baseline's ``src/`` into ``workdir`` and check that a server started
    with its environment imports that, not this checkout; the ``src/`` and the package
    directory imported."""
    src = export_src(commit, workdir / f"baseline-{commit[:12]}").resolve()
    package = imported_from(server_env(src))
    if not package.is_relative_to(src):
        raise RuntimeError(
            f"with {src} first on PYTHONPATH, agentcore is still imported from {package}"
        )
    current = imported_from(server_env())
    if current.is_relative_to(src):
        raise RuntimeError(f"the current configurations would import {current}")
    return src, package


# -- servers --------------------------------------------------------------------


def server_env(code: Path | None = None) -> dict[str, str]:
    """The gateway's environment; ``code``: a ``src/`` directory put first on its
    PYTHONPATH (the baseline's: the project is installed editable, and PYTHONPATH
    comes before the ``.pth`` file's entry). The settings are the same either way,
    and none that only one of the revisions knows (``database.read_connections``,
    ``database.statement_timeout_s``, ...): each rejects unknown keys."""
    first = [str(code)] if code is not None else []
    return with_paths(base_env(), *first) | SERVER_ENV


def gateway_target(
    setup: Setup,
    port: int,
    data_dir: Path,
    database_url: str,
    pin: list[str],
    code: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> Target:
    env = server_env(code) | {"AGENTCORE_DATABASE__URL": database_url} | dict(settings or {})
    argv = [
        *pin,
        sys.executable,
        "-m",
        "agentcore.cli",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--server",
        "uvicorn",
        "--workers",
        "1",
    ]
    return Target(setup.name, port, argv, env, register=False)


def extra_settings(args: argparse.Namespace) -> dict[str, str]:
    """Settings the command line asked for (only then: a baseline may not know them)."""
    if args.query_cache_s is None:
        return {}
    return {"AGENTCORE_REGISTRY__QUERY_CACHE_S": str(args.query_cache_s)}


def full_pages(server: Server) -> dict[str, str]:
    """Ask one discover and one task query: each must fill its page of 10 (what the
    seeding put there); what is wrong, by route."""
    problems: dict[str, str] = {}
    capable_agents = sum(1 for n in range(min(server.setup.agents, 100)) if capable(n))
    for route, method, params, member, expected in (
        ("discover", "agent.discover", DISCOVER_PARAMS, "agents", min(10, capable_agents)),
        ("query", "task.query", QUERY_PARAMS, "tasks", min(10, server.setup.tasks)),
    ):
        problem, answer = check_rpc(server.base, rpc(method, params))
        if not problem:
            result = json.loads(answer.body).get("result")
            found = result.get(member) if isinstance(result, dict) else None
            if not isinstance(found, list) or len(found) < expected:
                got = len(found) if isinstance(found, list) else "no list of"
                problem = f"{method} returned {got} {member}, expected {expected}"
        if problem:
            problems[route] = problem
    return problems


def start_server(
    server: Server,
    procs: Processes,
    wrk: Wrk,
    workdir: Path,
    args: argparse.Namespace,
    pin: list[str],
    code: Path | None = None,
) -> None:
    """Create the database, start the gateway (on ``code``, a ``src/`` directory, when
    given), seed it, check and warm it up; sets ``server.error`` (and stops it) when one
    of those failed."""
    setup = server.setup
    data_dir = workdir / f"data-{setup.name}"
    data_dir.mkdir(parents=True)
    if setup.backend == "postgresql":
        server.db_name = f"agentcore_bench_{secrets.token_hex(4)}"
        try:
            pg_admin(args.postgres_url, f'CREATE DATABASE "{server.db_name}"')
        except Exception as exc:
            server.error = f"could not create the database: {exc}"
            server.db_name = None
            return
        server.database = with_database(args.postgres_url, server.db_name)
    else:
        server.database = f"sqlite:///{data_dir / 'agentcore.db'}"
    port = free_port()
    server.target = gateway_target(
        setup, port, data_dir, server.database, pin, code, extra_settings(args)
    )
    server.base = f"http://{HOST}:{port}"
    server.log_path = (args.log_dir or workdir) / f"{setup.name}.log"
    ping_ids = [agent_id(n) for n in range(min(args.ping_agents, setup.agents))]
    server.scripts = {
        route: write_lua(workdir, route, ping_ids, f"{setup.name}-") for route in args.route_list
    }
    progress(
        f"{setup.name}: starting on port {port} ({setup.agents:,} agents, {setup.tasks:,} tasks)"
    )
    server.proc = procs.start(server.target.argv, server.target.env, server.log_path)
    try:
        wait_ready(server.proc, server.base + HEALTH_PATH, server.log_path)
        seed(server, procs, args)
        check_and_warm_up(server, wrk, args, ping_ids)
    except (RuntimeError, TimeoutError, OSError, ValueError, subprocess.SubprocessError) as exc:
        server.error = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        log = tail(server.log_path) if server.log_path else ""
        progress(f"{setup.name}: not measured: {exc}\n{log}")
        if server.proc is not None:
            procs.stop(server.proc)


def check_and_warm_up(
    server: Server, wrk: Wrk, args: argparse.Namespace, ping_ids: Sequence[str]
) -> None:
    """One call of each kind (problems make the rows invalid), then the warm-up."""
    setup = server.setup
    server.sample_memory()
    for kind in ("ping", "create"):
        problem = check_rpc(server.base, json.loads(kind_bodies(kind, ping_ids)[2][0]))[0]
        if problem:
            server.problems[kind] = problem
    server.problems.update(full_pages(server))
    if server.problems:
        progress(
            f"{setup.name}: check failed ({'; '.join(server.problems.values())}); "
            "measuring anyway, its rows will be invalid"
        )
    if args.warmup:
        progress(f"{setup.name}: warming up {args.warmup * len(args.route_list)} s")
        for route in args.route_list:
            warm = wrk.run(server.base + "/", server.scripts[route], args.warmup)
            server.created += parse_sent(warm.stdout).get("create", 0)
    server.sample_memory()
    server.rss_seeded_kb = server.rss_last_kb


def measure(server: Server, route: str, wrk: Wrk, seconds: int) -> Row:
    assert server.proc is not None
    db_before = db_cpu_s(server.db_name) if server.db_name else None
    started = time.monotonic()
    result = wrk.measure(
        server.name, route, server.base + "/", server.scripts[route], seconds, server.proc.pid
    )
    wall = time.monotonic() - started
    row = Row(**asdict(result))
    row.sent = parse_sent(result.wrk_output)
    server.created += row.sent.get("create", 0)
    if db_before is not None and server.db_name and wall > 0:
        row.db_cpu_pct = 100 * (db_cpu_s(server.db_name) - db_before) / wall
        if row.other_cpu_pct is not None:
            row.other_cpu_pct = max(0.0, row.other_cpu_pct - row.db_cpu_pct)
    if server.proc.poll() is not None:
        row.error = row.error or f"server exited with status {server.proc.returncode}"
        progress(f"{server.name} died:\n{tail(server.log_path) if server.log_path else ''}")
    server.sample_memory()
    return row


def merge_rows(rounds: Sequence[Row]) -> Row:
    """http_bench's merge(), plus the database CPU (weighted by time) and the sent counts."""
    row = Row(**asdict(merge(rounds)))
    timed = [
        (r.db_cpu_pct, r.duration_s) for r in rounds if r.db_cpu_pct is not None and r.duration_s
    ]
    if timed:
        row.db_cpu_pct = sum(v * d for v, d in timed) / sum(d for _, d in timed)
    for r in rounds:
        for kind, n in r.sent.items():
            row.sent[kind] = row.sent.get(kind, 0) + n
    return row


# -- goals ----------------------------------------------------------------------


@dataclass
class Verdict:
    """A goal of the issue: a ratio (``ratio`` set) or a bound on one figure."""

    label: str
    goal: str
    value: float | None
    verdict: str
    unit: str = ""
    per_round: list[float] = field(default_factory=list)
    ratio: Ratio | None = None


def judge_ratio(
    rows: Mapping[tuple[str, str], Row],
    per_round: Mapping[tuple[str, str], list[Row]],
    label: str,
    mine: tuple[str, str],
    ref: tuple[str, str],
    minimum: float,
    note: str = "",
) -> Verdict:
    """``mine``'s req/s over ``ref``'s (each a (server, route)), against ``minimum``."""
    a, b = rows.get(mine), rows.get(ref)
    value: float | None = None
    if a is None or b is None or any(r.error.startswith("not measured") for r in (a, b)):
        verdict = "unavailable (not measured)"
    elif not (a.valid and b.valid) or not b.requests_per_s:
        verdict = "INVALID (errors in the run)"
    else:
        value = a.requests_per_s / b.requests_per_s
        verdict = "PASS" if value >= minimum else "MISS"
        if a.skewed or b.skewed:
            verdict += " (a row is skewed by other load)"
    verdict += note
    rounds = (
        [
            x.requests_per_s / y.requests_per_s
            for x, y in zip(per_round.get(mine, ()), per_round.get(ref, ()), strict=False)
            if x.valid and y.valid and y.requests_per_s
        ]
        if value is not None
        else []
    )
    ratio = Ratio(label, mine[0], mine[1], f"{ref[0]} {ref[1]}", minimum, value, verdict, rounds)
    return Verdict(label, f">= {minimum:g}", value, verdict, per_round=rounds, ratio=ratio)


def judge_p99(
    rows: Mapping[tuple[str, str], Row],
    per_round: Mapping[tuple[str, str], list[Row]],
    server: str,
    limit_ms: float,
) -> Verdict:
    row = rows.get((server, "mix"))
    label = f"{server}: mix p99 (median of the rounds)"
    if row is None:
        return Verdict(label, f"< {limit_ms:g} ms", None, "unavailable (not measured)", " ms")
    rounds = [r.p99_ms for r in per_round.get((server, "mix"), ()) if r.p99_ms is not None]
    if not row.valid or row.p99_ms is None:
        return Verdict(
            label, f"< {limit_ms:g} ms", row.p99_ms, "INVALID (errors in the run)", " ms", rounds
        )
    verdict = "PASS" if row.p99_ms < limit_ms else "MISS"
    if row.skewed:
        verdict += " (skewed by other load)"
    return Verdict(label, f"< {limit_ms:g} ms", row.p99_ms, verdict, " ms", rounds)


def judge_rss(server: Server | None, name: str, limit_mb: float) -> Verdict:
    label = f"{name}: gateway peak RSS"
    if server is None or server.error:
        why = server.error if server is not None else "not measured"
        return Verdict(label, f"< {limit_mb:g} MB", None, f"unavailable ({why})", " MB")
    mb = server.rss_peak_kb / 1024
    return Verdict(label, f"< {limit_mb:g} MB", mb, "PASS" if mb < limit_mb else "MISS", " MB")


def goals(
    setups: Sequence[Setup],
    servers: Mapping[str, Server],
    rows: Mapping[tuple[str, str], Row],
    per_round: Mapping[tuple[str, str], list[Row]],
    answers_kept: bool = False,
) -> list[Verdict]:
    found: list[Verdict] = []
    by = {(s.backend, s.scale): s for s in setups}
    for backend in BACKENDS:
        small, large = by.get((backend, "1k")), by.get((backend, "100k"))
        minimum = 0.5 if backend == "sqlite" else 0.25
        for setup in (small, large):
            if setup is None:
                continue
            note = (
                " (informational: the issue sets this goal at 1,000 agents)"
                if backend == "sqlite" and setup.scale == "100k"
                else ""
            )
            found.append(
                judge_ratio(
                    rows,
                    per_round,
                    f"{setup.name}: mix / ping",
                    (setup.name, "mix"),
                    (setup.name, "ping"),
                    minimum,
                    note,
                )
            )
            if backend == "sqlite" and setup.scale == "1k":
                found.append(judge_p99(rows, per_round, setup.name, 20.0))
        if small is not None and large is not None:
            found.append(
                judge_ratio(
                    rows,
                    per_round,
                    f"{backend}: discover {compact(large.agents)} / {compact(small.agents)} agents",
                    (large.name, "discover"),
                    (small.name, "discover"),
                    0.8,
                    " (informational: discover answers were kept; --query-cache-s 0 "
                    "measures the query)"
                    if answers_kept
                    else "",
                )
            )
            found.append(
                judge_ratio(
                    rows,
                    per_round,
                    f"{backend}: query {compact(large.tasks)} / {compact(small.tasks)} tasks",
                    (large.name, "query"),
                    (small.name, "query"),
                    0.8,
                )
            )
        if large is not None:
            found.append(judge_rss(servers.get(large.name), large.name, 500.0))
    return found


@dataclass
class Comparison:
    """One configuration and route on the code under test against the baseline."""

    current: str
    baseline: str
    route: str
    #: req/s current / req/s baseline (None when a row is missing or invalid).
    value: float | None
    #: '' when both rows are valid and unskewed; why not otherwise.
    note: str
    per_round: list[float] = field(default_factory=list)
    rps_current: float | None = None
    rps_baseline: float | None = None
    us_current: float | None = None
    us_baseline: float | None = None
    p99_current: float | None = None
    p99_baseline: float | None = None


def comparisons(
    setups: Sequence[Setup],
    rows: Mapping[tuple[str, str], Row],
    per_round: Mapping[tuple[str, str], list[Row]],
) -> list[Comparison]:
    """For each baseline configuration and route: current / baseline (req/s), per round
    too (the two were measured minutes apart in the same round), and each side's
    server CPU per request and p99."""
    found: list[Comparison] = []
    for setup in setups:
        if not setup.revision:
            continue
        for route in dict.fromkeys(route for _, route in rows):
            a, b = rows.get((setup.current, route)), rows.get((setup.name, route))
            value: float | None = None
            rounds: list[float] = []
            if a is None or b is None or any(r.error.startswith("not measured") for r in (a, b)):
                note = "unavailable (not measured)"
            elif not (a.valid and b.valid) or not b.requests_per_s:
                note = "INVALID (errors in the run)"
            else:
                value = a.requests_per_s / b.requests_per_s
                note = "skewed by other load" if a.skewed or b.skewed else ""
                rounds = [
                    x.requests_per_s / y.requests_per_s
                    for x, y in zip(
                        per_round.get((setup.current, route), ()),
                        per_round.get((setup.name, route), ()),
                        strict=False,
                    )
                    if x.valid and y.valid and y.requests_per_s
                ]
            found.append(
                Comparison(
                    setup.current,
                    setup.name,
                    route,
                    value,
                    note,
                    rounds,
                    a.requests_per_s if a else None,
                    b.requests_per_s if b else None,
                    a.server_cpu_us_per_request if a else None,
                    b.server_cpu_us_per_request if b else None,
                    a.p99_ms if a else None,
                    b.p99_ms if b else None,
                )
            )
    return found


# -- report ---------------------------------------------------------------------


def fmt_rate(value: float | None) -> str:
    return "-" if not value else f"{value:,.0f}"


def errors_of(r: Result) -> int:
    return r.non_200 + r.rpc_errors + sum(r.socket_errors.values())


def print_servers(servers: Sequence[Server]) -> None:
    w = max([16, *(len(s.name) for s in servers)])
    header = (
        f"{'server':<{w}} {'agents':>8} {'agents/s':>9} {'tasks':>9} {'via':<16} "
        f"{'tasks/s':>8} {'restart s':>9} {'+created':>8} {'RSS MB':>7} {'peak MB':>7} "
        f"{'last MB':>7}"
    )
    out(header)
    out("-" * len(header))
    for s in servers:
        seeding = s.seeding
        restart = "-" if seeding.restart_s is None else f"{seeding.restart_s:.1f}"
        out(
            f"{s.name:<{w}} {seeding.agents:>8,} {fmt_rate(seeding.agents_per_s):>9} "
            f"{seeding.tasks:>9,} {seeding.tasks_via or '-':<16} "
            f"{fmt_rate(seeding.tasks_per_s):>8} {restart:>9} {s.created:>8,} "
            f"{s.rss_seeded_kb / 1024:>7.0f} {s.rss_peak_kb / 1024:>7.0f} "
            f"{s.rss_last_kb / 1024:>7.0f}"
        )
    for s in servers:
        if s.error:
            out(f"  ! {s.name}: not measured: {s.error}")
        for route, problem in s.problems.items():
            out(f"  ! {s.name} {route}: {problem}")


def print_rows(rows: Sequence[Row]) -> None:
    w = max([16, *(len(r.server) for r in rows)])
    header = (
        f"{'server':<{w}} {'route':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'srv cpu%':>8} {'us/req':>7} {'db cpu%':>7} {'wrk cpu%':>8} "
        f"{'other%':>6}"
    )
    out(header)
    out("-" * len(header))
    for r in rows:
        out(
            f"{r.server:<{w}} {r.route:<9} {fmt_rate(r.requests_per_s):>9} "
            f"{fmt_ms(r.p50_ms):>8} {fmt_ms(r.p99_ms):>8} {errors_of(r):>7} "
            f"{fmt_pct(r.server_cpu_pct):>8} {fmt_us(r.server_cpu_us_per_request):>7} "
            f"{fmt_pct(r.db_cpu_pct):>7} {fmt_pct(r.wrk_cpu_pct):>8} "
            f"{fmt_pct(r.other_cpu_pct):>6}"
        )
    for r in rows:
        if r.error:
            out(f"  ! {r.server} {r.route}: {r.error}")
        elif not r.valid:
            out(
                f"  ! {r.server} {r.route}: errors during the run (non-200 {r.non_200}, "
                f"JSON-RPC errors {r.rpc_errors}, socket {r.socket_errors}); "
                "its figures are not throughput"
            )
        if r.skewed and r.other_cpu_pct is not None:
            out(
                f"  ! {r.server} {r.route}: other processes used {r.other_cpu_pct:.0f}% of a "
                "CPU during the run; its figures are skewed"
            )
    mixes = [r for r in rows if r.route == "mix" and r.sent]
    for r in mixes:
        total = sum(r.sent.values()) or 1
        shares = ", ".join(f"{k} {100 * n / total:.1f}%" for k, n in r.sent.items())
        out(
            f"  {r.server} mix as sent: {shares} "
            f"({r.sent.get('create', 0):,} tasks created in the measured slices)"
        )


def print_goals(found: Sequence[Verdict]) -> None:
    if not found:
        out("no goal could be evaluated with these --backends and --scales")
    width = max([44, *(len(v.label) for v in found)])
    for v in found:
        value = (
            "-"
            if v.value is None
            else (f"{v.value:.3f}" if not v.unit else f"{v.value:.1f}{v.unit}")
        )
        spread = ""
        if len(v.per_round) > 1:
            fmt = "{:.3f}" if not v.unit else "{:.1f}"
            spread = (
                f"  rounds {fmt.format(min(v.per_round))}..{fmt.format(max(v.per_round))}"
                f", median {fmt.format(statistics.median(v.per_round))}"
            )
        out(f"{v.label:<{width}} {value:>9}  (goal {v.goal})  {v.verdict}{spread}")


def print_comparisons(found: Sequence[Comparison]) -> None:
    if not found:
        out("nothing to compare")
    labels = [f"{c.current}: {c.route} current / {c.baseline.partition('@')[2]}" for c in found]
    width = max([36, *(len(label) for label in labels)])
    for label, c in zip(labels, found, strict=True):
        value = "-" if c.value is None else f"{c.value:.3f}"
        spread = ""
        if len(c.per_round) > 1:
            spread = (
                f"  rounds {min(c.per_round):.3f}..{max(c.per_round):.3f}, "
                f"median {statistics.median(c.per_round):.3f}"
            )
        note = f"  {c.note}" if c.note else ""
        out(
            f"{label:<{width}} {value:>7}  us/req {fmt_us(c.us_current):>6} | "
            f"{fmt_us(c.us_baseline):<6}  p99 ms {fmt_ms(c.p99_current):>6} | "
            f"{fmt_ms(c.p99_baseline):<6}{spread}{note}".rstrip()
        )


def print_comparisons_markdown(found: Sequence[Comparison], revision: str) -> None:
    out(
        f"| configuration | route | req/s current | req/s {revision} | current / {revision} "
        f"| rounds | server µs/req current | server µs/req {revision} | p99 ms current | "
        f"p99 ms {revision} |"
    )
    out("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for c in found:
        value = "-" if c.value is None else f"{c.value:.3f}"
        if c.note:
            value += f" ({c.note})"
        rounds = ", ".join(f"{x:.2f}" for x in c.per_round) or "-"
        out(
            f"| {c.current} | {c.route} | {fmt_rate(c.rps_current)} | "
            f"{fmt_rate(c.rps_baseline)} | {value} | {rounds} | {fmt_us(c.us_current)} | "
            f"{fmt_us(c.us_baseline)} | {fmt_ms(c.p99_current)} | {fmt_ms(c.p99_baseline)} |"
        )


def print_markdown(
    servers: Sequence[Server], rows: Sequence[Row], found: Sequence[Verdict]
) -> None:
    setups = {s.name: s for s in servers}
    out(
        "| configuration | agents | tasks | route | req/s | p50 ms | p99 ms | errors | "
        "server µs/req | db CPU % |"
    )
    out("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = setups.get(r.server)
        agents = f"{s.setup.agents:,}" if s else "-"
        tasks = f"{s.setup.tasks:,}" if s else "-"
        out(
            f"| {r.server} | {agents} | {tasks} | {r.route} | {fmt_rate(r.requests_per_s)} | "
            f"{fmt_ms(r.p50_ms)} | {fmt_ms(r.p99_ms)} | {errors_of(r)} | "
            f"{fmt_us(r.server_cpu_us_per_request)} | {fmt_pct(r.db_cpu_pct)} |"
        )
    out()
    out("| goal | measured | rounds | verdict |")
    out("|---|---:|---|---|")
    for v in found:
        value = (
            "-"
            if v.value is None
            else (f"{v.value:.3f}" if not v.unit else f"{v.value:.1f}{v.unit}")
        )
        rounds = ", ".join(f"{x:.2f}" if not v.unit else f"{x:.1f}" for x in v.per_round)
        out(f"| {v.label} {v.goal} | {value} | {rounds or '-'} | {v.verdict} |")


# -- the run --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The seed's HTTP mix beside agent.ping, on SQLite and PostgreSQL, with a "
        "small and a large registry (wrk; GitHub issue 13)."
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of sqlite,postgresql (default both)",
    )
    parser.add_argument(
        "--routes",
        default=",".join(ROUTES),
        help="comma-separated subset of ping,mix,discover,query,create (task.create alone); "
        "default ping,mix,discover,query (the goals need ping and mix)",
    )
    parser.add_argument(
        "--scales",
        default=",".join(SCALES),
        help="comma-separated subset of 1k (--agents-small, --tasks-small) and "
        "100k (--agents-large, --tasks-large); default both",
    )
    parser.add_argument("--agents-small", type=int, help="agents at scale 1k (default 1000)")
    parser.add_argument("--tasks-small", type=int, help="tasks at scale 1k (default 1000)")
    parser.add_argument("--agents-large", type=int, help="agents at scale 100k (default 100000)")
    parser.add_argument("--tasks-large", type=int, help="tasks at scale 100k (default 1000000)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds; each measures every server and route once, in turn (default 3)",
    )
    parser.add_argument(
        "--duration",
        type=int,
        help="seconds per slice: one server, one route, one round (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="warm-up seconds per server and route, after the seeding (default 2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 round of 2 s slices, 1 s warm-ups, 100 agents and "
        "100 tasks small, 1,000 agents and 10,000 tasks large, tasks "
        "through the API up to 1,000 (each unless given)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--ping-agents",
        type=int,
        default=64,
        help="ping (alone and in the mix) one of this many agents at random "
        "(default 64, one per connection like the seed's users)",
    )
    parser.add_argument(
        "--task-seeding",
        choices=("auto", "api", "bulk"),
        default="auto",
        help="tasks through the API (task.create batches), in bulk (server "
        "stopped, rows inserted with the gateway's store code, server "
        "restarted) or auto: the API up to --api-task-limit (default auto)",
    )
    parser.add_argument(
        "--api-task-limit",
        type=int,
        help="with --task-seeding auto, the most tasks seeded through the API "
        "(default 20000; --quick: 1000)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="calls per JSON-RPC batch while seeding (default 100, the "
        "gateway's limits.max_batch_size)",
    )
    parser.add_argument(
        "--seed-concurrency", type=int, default=16, help="seeding batches in flight (default 16)"
    )
    parser.add_argument(
        "--seed-timeout",
        type=float,
        default=1800.0,
        help="seconds one server's seeding may take (default 1800)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="an administration database on a loopback PostgreSQL; a "
        "throwaway database is created beside it per configuration "
        f"(default {DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--query-cache-s",
        type=float,
        metavar="S",
        help="the servers' registry.query_cache_s (default: the gateway's own, which "
        "keeps discover answers: the discover route then measures kept answers; 0 "
        "measures the query itself, as the scaling goal means)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each round, wait up to S seconds for the CPUs to be "
        "under 10%% busy (default 0: do not wait)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="keep the servers' and the loader's logs here (default: a "
        "temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run every configuration on this git revision's src/ "
        "(exported with git archive, first on the server's PYTHONPATH), "
        "named <configuration>@<commit>, in the same rounds; prints "
        "current / baseline per configuration and route",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    quick = {
        "rounds": 1,
        "duration": 2,
        "warmup": 1,
        "agents_small": 100,
        "tasks_small": 100,
        "agents_large": 1_000,
        "tasks_large": 10_000,
        "api_task_limit": 1_000,
    }
    full = {
        "rounds": 3,
        "duration": 10,
        "warmup": 2,
        "agents_small": 1_000,
        "tasks_small": 1_000,
        "agents_large": 100_000,
        "tasks_large": 1_000_000,
        "api_task_limit": 20_000,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.backend_list = _choices(parser, "--backends", args.backends, BACKENDS)
    args.scale_list = _choices(parser, "--scales", args.scales, SCALES)
    args.route_list = _choices(parser, "--routes", args.routes, ROUTES + EXTRA_ROUTES)
    if (
        min(
            args.duration,
            args.rounds,
            args.connections,
            args.ping_agents,
            args.batch_size,
            args.seed_concurrency,
            args.agents_small,
            args.agents_large,
        )
        < 1
    ):
        parser.error(
            "--duration, --rounds, --connections, --ping-agents, --batch-size, "
            "--seed-concurrency and the agent counts must be >= 1"
        )
    if min(args.warmup, args.tasks_small, args.tasks_large, args.api_task_limit) < 0:
        parser.error("--warmup, the task counts and --api-task-limit must be >= 0")
    if not 1 <= args.threads <= args.connections:
        parser.error("--threads must be between 1 and --connections")
    if args.agents_small > args.agents_large or args.tasks_small > args.tasks_large:
        parser.error("the 1k scale must not be larger than the 100k one")
    if max(args.agents_large, args.tasks_large) > 10_000_000:
        parser.error("at most 10,000,000 agents or tasks")
    if args.log_dir is not None:
        args.log_dir = args.log_dir.resolve()
        args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.seed_timeout <= 0:
        parser.error("--seed-timeout must be > 0")
    parts = urlsplit(args.postgres_url)
    if parts.scheme not in ("postgresql", "postgres") or parts.hostname != HOST:
        parser.error("--postgres-url must be postgresql://... on 127.0.0.1 (loopback only)")
    args.baseline_commit = args.baseline_rev = args.baseline_description = ""
    if args.baseline:
        try:
            args.baseline_commit, args.baseline_rev, args.baseline_description = resolve_revision(
                args.baseline
            )
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            parser.error(f"--baseline {args.baseline}: not a commit of {REPO} ({exc})")
    return args


def _choices(
    parser: argparse.ArgumentParser, flag: str, raw: str, allowed: Sequence[str]
) -> list[str]:
    picked = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = sorted(set(picked) - set(allowed))
    if unknown or not picked:
        parser.error(f"{flag}: choose from {','.join(allowed)} (got {raw!r})")
    return [a for a in allowed if a in picked]


def setups_of(args: argparse.Namespace) -> list[Setup]:
    counts = {
        "1k": (args.agents_small, args.tasks_small),
        "100k": (args.agents_large, args.tasks_large),
    }
    revisions = ["", args.baseline_rev] if args.baseline_rev else [""]
    return [
        Setup(backend, scale, *counts[scale], revision)
        for backend in args.backend_list
        for scale in args.scale_list
        for revision in revisions
    ]


def run(args: argparse.Namespace) -> int:
    wrk_path = shutil.which("wrk")
    info = machine(wrk_path, None)
    server_pin, wrk_pin, pin_note = pinning()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    setups = setups_of(args)
    pg_version = ""
    if "postgresql" in args.backend_list:
        try:
            pg_version = pg_admin(args.postgres_url)
        except Exception as exc:
            pg_version = f"unreachable ({type(exc).__name__}: {str(exc)[:200]})"

    out("Workload benchmark (benchmarks/workload_bench.py)")
    out(f"date:     {info['date']}")
    out(f"machine:  {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}")
    out(
        f"software: Python {info['python']}, {info['wrk']}, uvicorn {info['uvicorn']}, "
        f"SQLite {sqlite3.sqlite_version}" + (f", PostgreSQL {pg_version}" if pg_version else "")
    )
    if info["gateway_revision"]:
        out(f"gateway:  {info['gateway_revision']}")
    if args.baseline_rev:
        out(
            f"baseline: {args.baseline_description} (--baseline {args.baseline}): its src/ "
            f"exported with git archive and put first on the PYTHONPATH of the "
            f"*@{args.baseline_rev} servers; same command and settings otherwise"
        )
    out(f"command:  {command}")
    out(
        "servers:  "
        + "; ".join(f"{s.name} ({s.agents:,} agents, {s.tasks:,} tasks)" for s in setups)
    )
    out(
        f"server:   agentcore serve --server uvicorn --workers 1, "
        f"{' '.join(f'{k}={v}' for k, v in (SERVER_ENV | extra_settings(args)).items())}"
    )
    out(
        f"load:     wrk -t{args.threads} -c{args.connections} --latency, {args.rounds} "
        f"round{'s' if args.rounds > 1 else ''} "
        f"of {args.duration} s per server and route (every server started and seeded first, "
        f"measured in turn each round), {args.warmup} s warm-up per server and route; "
        f"{pin_note}"
        + ("; PostgreSQL's own processes are not pinned" if pg_version else "")
        + (
            f"; waits up to {args.wait_idle:g} s for an idle machine before each round"
            if args.wait_idle
            else ""
        )
    )
    out(
        f"mix:      {', '.join(f'{k} {w}' for k, w in MIX)} (the seed's weights); ping: one of "
        f"{args.ping_agents} agents at random"
    )
    out(f"loadavg:  {info['loadavg_before']} (before the run; other load skews the figures)")
    if wrk_path is None:
        out(f"wrk is not installed: nothing to measure. Install it with: {INSTALL_HINT}")
        return 2

    servers: list[Server] = []
    per_round: dict[tuple[str, str], list[Row]] = {}
    baseline: dict[str, str] = {}
    procs = Processes()
    previous = {s: signal.signal(s, _raise_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with tempfile.TemporaryDirectory(prefix="agentcore-workload-bench-") as tmp:
            workdir = Path(tmp)
            wrk = Wrk(wrk_path, wrk_pin, args.threads, args.connections)
            budget = (
                len(setups)
                * len(args.route_list)
                * (args.rounds * (args.duration + 1) + args.warmup)
            )
            progress(
                f"{len(setups)} servers, {args.rounds} rounds: about {budget} s of "
                "measurement after the seeding"
            )
            baseline_src: Path | None = None
            if args.baseline_rev:
                baseline = {
                    "revision": args.baseline,
                    "commit": args.baseline_commit,
                    "description": args.baseline_description,
                }
                try:
                    baseline_src, package = prepare_baseline(args.baseline_commit, workdir)
                except (RuntimeError, OSError, tarfile.TarError, subprocess.SubprocessError) as exc:
                    baseline["error"] = str(exc)[:300]
                    progress(f"baseline {args.baseline_rev} cannot be run: {exc}")
                else:
                    baseline["agentcore"] = str(package)
                    progress(
                        f"baseline {args.baseline_rev}: its servers import agentcore from {package}"
                    )
            for setup in setups:
                # Listed first: its database is dropped at the end whatever happens.
                server = Server(setup)
                servers.append(server)
                if setup.backend == "postgresql" and pg_version.startswith("unreachable"):
                    server.error = f"PostgreSQL {pg_version}"
                    continue
                if setup.revision and baseline_src is None:
                    server.error = f"baseline unavailable: {baseline.get('error', '')}"
                    continue
                start_server(
                    server,
                    procs,
                    wrk,
                    workdir,
                    args,
                    server_pin,
                    baseline_src if setup.revision else None,
                )
            running = [s for s in servers if not s.error]
            for n in range(1, args.rounds + 1):
                share = wait_idle(args.wait_idle)
                note = f" (machine {share:.0%} busy before)" if share is not None else ""
                progress(
                    f"round {n} of {args.rounds}: {args.duration} s per server and route{note}"
                )
                for server in running:
                    for route in args.route_list:
                        row = measure(server, route, wrk, args.duration)
                        per_round.setdefault((server.name, route), []).append(row)
            for server in running:
                if server.proc is not None and server.proc.poll() is None:
                    try:
                        after = full_pages(server)
                    except (OSError, ValueError) as exc:
                        after = dict.fromkeys(("discover", "query"), f"no answer: {exc}")
                    for route, problem in after.items():
                        server.problems.setdefault(route, f"after the rounds: {problem}")
                server.sample_memory()
    finally:
        procs.stop_all()
        for server in servers:
            if server.db_name:
                drop_database(args.postgres_url, server.db_name)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    rows: list[Row] = []
    for server in servers:
        for route in args.route_list:
            found = per_round.get((server.name, route))
            if found:
                row = merge_rows(found)
            else:
                row = Row(server.name, route, error=f"not measured: {server.error}")
            kinds = [kind for kind, _ in route_kinds(route) if kind in server.problems]
            problem = "; ".join(server.problems[kind] for kind in kinds)
            if problem and not row.error:
                row.error = f"check failed: {problem}"
            rows.append(row)
    by_key = {(r.server, r.route): r for r in rows}
    verdicts = goals(
        [s for s in setups if not s.revision],
        {s.name: s for s in servers},
        by_key,
        per_round,
        answers_kept=args.query_cache_s != 0,
    )
    compared = comparisons(setups, by_key, per_round)

    out()
    out(
        "servers (seeding, and the gateway's memory: RSS after seeding and warm-up, the "
        "peak, the last reading):"
    )
    print_servers(servers)
    out()
    print_rows(rows)
    out()
    out("goals (GitHub issue 13):")
    print_goals(verdicts)
    out()
    if args.baseline_rev:
        out(
            f"current against the baseline {args.baseline_rev} (req/s current / baseline, "
            "with the spread over the rounds; server CPU us per request and p99 ms, "
            "current | baseline):"
        )
        print_comparisons(compared)
        out()
    out("markdown (docs/performance.md):")
    out()
    print_markdown(servers, rows, verdicts)
    if args.baseline_rev:
        out()
        print_comparisons_markdown(compared, args.baseline_rev)
    out()
    out(f"loadavg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "command": command,
                    "pinning": pin_note,
                    "postgresql": pg_version,
                    "sqlite": sqlite3.sqlite_version,
                    "settings": {
                        k: getattr(args, k)
                        for k in (
                            "rounds",
                            "duration",
                            "warmup",
                            "connections",
                            "threads",
                            "ping_agents",
                            "task_seeding",
                            "api_task_limit",
                            "batch_size",
                            "seed_concurrency",
                            "wait_idle",
                        )
                    },
                    "servers": [
                        {
                            "name": s.name,
                            **asdict(s.setup),
                            "seeding": asdict(s.seeding),
                            "rss_seeded_kb": s.rss_seeded_kb,
                            "rss_peak_kb": s.rss_peak_kb,
                            "rss_last_kb": s.rss_last_kb,
                            "tasks_created_by_mix": s.created,
                            "error": s.error,
                            "problems": s.problems,
                        }
                        for s in servers
                    ],
                    "results": [asdict(r) | {"valid": r.valid, "skewed": r.skewed} for r in rows],
                    "goals": [
                        {k: v for k, v in asdict(v).items() if k != "ratio"} for v in verdicts
                    ],
                    "baseline": baseline or None,
                    "comparisons": [asdict(c) for c in compared],
                },
                indent=2,
            )
            + "\n"
        )
        progress(f"wrote {args.json}")
    return 0 if all(r.valid for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == [LOADER_FLAG]:
        return load_tasks_main(raw[1:])
    args = parse_args(raw)
    try:
        return run(args)
    except KeyboardInterrupt:
        progress("interrupted; every server was stopped")
        return 128 + signal.SIGINT
    except Interrupted as exc:
        progress(f"{exc}; every server was stopped")
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
