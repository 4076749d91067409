"""Real gateway processes: crash durability, graceful stop, workers, ASGI servers, backends.

Each test starts ``agentcore serve`` (or the seed's uvicorn command) on a free
loopback port and talks to it with sync httpx; every wait is bounded. What
the gateway promises whichever ASGI server runs it (graceful stop, workers,
startup failure, the client address) is checked under both.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from agentcore.server import GC_THRESHOLDS, GranianGateway
from tests.support import ServerProcess, agent_card, free_port, make_config, unavailable

pytestmark = pytest.mark.server

#: The ASGI servers ``agentcore serve`` runs, the default first.
SERVERS = ["granian", "uvicorn"]

ServerFactory = Callable[..., ServerProcess]

#: A short flush interval, so "older than the flush interval" is a short wait.
FLUSH_S = 0.2
#: Long enough that no periodic job writes heartbeats during a test.
NEVER_S = "600"

PG_ADMIN_URL = os.environ.get(
    "AGENTCORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without ``AGENTCORE_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
    env.update(extra)
    return env


def client(url: str, *, fresh_connections: bool = False) -> httpx.Client:
    """A client for ``url``; ``fresh_connections`` opens a new TCP connection per request."""
    limits = httpx.Limits(max_keepalive_connections=0) if fresh_connections else httpx.Limits()
    return httpx.Client(base_url=url, timeout=10, limits=limits)


def rpc(http: httpx.Client, method: str, params: dict[str, Any]) -> Any:
    """Call one JSON-RPC method; return its result (an error fails the test)."""
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    response = http.post("/api/v1/jsonrpc", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert "error" not in data, data
    return data["result"]


def register_and_create_task(http: httpx.Client, agent_id: str, task_id: str) -> None:
    registered = rpc(
        http,
        "agent.register",
        {"agent_card": agent_card(agent_id, "summarize", tags=["crash"], metadata={"k": 1})},
    )
    assert registered["agent_id"] == agent_id
    task = rpc(
        http,
        "task.create",
        {
            "task_definition": {
                "task_id": task_id,
                "type": "summary",
                "title": "Summarize the report",
                "required_capabilities": ["summarize"],
                "parameters": {"words": 100},
                "input": {"text": "..."},
                "priority": "high",
                "metadata": {"origin": "test_server"},
            }
        },
    )
    assert (task["status"], task["agent_id"]) == ("assigned", agent_id)


def snapshot(url: str, agent_id: str, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with client(url) as http:
        agent = rpc(http, "agent.get", {"agent_id": agent_id})
        task = rpc(http, "task.get", {"task_id": task_id})
    return agent, task


def snapshot_agent(url: str, agent_id: str) -> dict[str, Any]:
    with client(url) as http:
        agent: dict[str, Any] = rpc(http, "agent.get", {"agent_id": agent_id})
    return agent


def ping(url: str, agent_id: str) -> float:
    with client(url) as http:
        last_seen: float = rpc(http, "agent.ping", {"agent_id": agent_id})["last_seen"]
    return last_seen


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- crash and graceful stop ------------------------------------------------------


def test_sigkill_loses_neither_agents_nor_tasks_nor_flushed_heartbeats(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {"AGENTCORE_REGISTRY__HEARTBEAT_FLUSH_INTERVAL_S": str(FLUSH_S)}
    first = server_factory(env=env, data_dir=data).start()
    with client(first.url) as http:
        register_and_create_task(http, "agent-crash", "task-crash")
    registered_at = snapshot(first.url, "agent-crash", "task-crash")[0]["registered_at"]
    last_seen = ping(first.url, "agent-crash")
    assert last_seen > registered_at
    time.sleep(FLUSH_S * 5)  # well past one flush interval
    before = snapshot(first.url, "agent-crash", "task-crash")

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    second = server_factory(env=env, data_dir=data).start()
    agent, task = snapshot(second.url, "agent-crash", "task-crash")

    assert (agent, task) == before
    assert agent["last_seen"] == last_seen
    assert agent["status"] == "active"
    assert task["status"] == "assigned"


@pytest.mark.parametrize("asgi_server", SERVERS)
def test_sigterm_exits_zero_after_flushing_pending_heartbeats(
    server_factory: ServerFactory, tmp_path: Path, asgi_server: str
) -> None:
    data = tmp_path / "data"
    # Neither the flush loop nor the sweep (which flushes too) runs during the test:
    # only the shutdown flush can write the heartbeat.
    env = {
        "AGENTCORE_REGISTRY__HEARTBEAT_FLUSH_INTERVAL_S": NEVER_S,
        "AGENTCORE_REGISTRY__SWEEP_INTERVAL_S": NEVER_S,
    }
    first = server_factory("--server", asgi_server, env=env, data_dir=data).start()
    with client(first.url) as http:
        registered = rpc(http, "agent.register", {"agent_card": agent_card("agent-term", "x")})
        last_seen: float = rpc(http, "agent.ping", {"agent_id": "agent-term"})["last_seen"]
    assert last_seen > registered["agent"]["last_seen"]

    assert first.signal(signal.SIGTERM) == 0
    second = server_factory(env=env, data_dir=data).start()

    assert snapshot_agent(second.url, "agent-term")["last_seen"] == last_seen


# -- the seed command -------------------------------------------------------------


def test_seed_uvicorn_command_serves_the_gateway_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "seed-data"
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "seed.log"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "agentcore.a2a_protocol.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=clean_env(AGENTCORE_DATABASE__DATA_DIR=str(data)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 20, "the seed command to serve /api/v1/health")
        with client(url) as http:
            health = http.get("/api/v1/health").json()
            registered = rpc(http, "agent.register", {"agent_card": agent_card("agent-seed")})
            agent = rpc(http, "agent.get", {"agent_id": "agent-seed"})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    assert health["dependencies"]["database"]["status"] == "up"
    assert registered["agent_id"] == agent["agent_id"] == "agent-seed"
    assert (data / "agentcore.db").is_file()
    assert not (tmp_path / ".agentcore").exists()


# -- several workers ----------------------------------------------------------------


def worker_pids(parent: int) -> set[int]:
    """Pids of the spawned workers whose parent is ``parent`` (Linux /proc)."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def counted_pids(multiproc_dir: Path) -> set[int]:
    """Pids that wrote request counters (prometheus-client's ``counter_<pid>.db`` files)."""
    return {
        int(m.group(1))
        for path in multiproc_dir.glob("counter_*.db")
        if (m := re.fullmatch(r"counter_(\d+)\.db", path.name))
    }


def health_requests_total(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("agentcore_http_requests_total{") and 'route="/api/v1/health"' in line:
            total += float(line.rpartition(" ")[2])
    return total


@pytest.mark.parametrize("asgi_server", SERVERS)
def test_two_workers_sum_metrics_and_share_data(
    server_factory: ServerFactory, tmp_path: Path, asgi_server: str
) -> None:
    data = tmp_path / "data"
    server = server_factory("--workers", "2", "--server", asgi_server, data_dir=data).start()
    assert server.proc is not None
    parent = server.proc.pid
    wait_until(lambda: len(worker_pids(parent)) == 2, 20, "two worker processes")
    workers = worker_pids(parent)

    # New connections spread over the workers; go on past 200 until both have served.
    sent = 0
    with client(server.url, fresh_connections=True) as http:
        while sent < 200 or counted_pids(data / "prometheus") != workers:
            assert sent < 2000, (
                f"workers {workers} did not all serve: {counted_pids(data / 'prometheus')}"
            )
            for _ in range(50):
                assert http.get("/api/v1/health").status_code == 200
            sent += 50
        scrapes = [health_requests_total(http.get("/metrics").text) for _ in range(4)]

    assert scrapes == [float(sent)] * 4

    with client(server.url) as http:
        rpc(http, "agent.register", {"agent_card": agent_card("agent-shared", "x")})
        task = rpc(http, "task.create", {"task_definition": {"task_id": "task-shared"}})
    with client(server.url, fresh_connections=True) as http:
        for _ in range(20):
            assert rpc(http, "agent.get", {"agent_id": "agent-shared"})["agent_id"] == (
                "agent-shared"
            )
            assert rpc(http, "task.get", {"task_id": "task-shared"}) == task

    assert server.signal(signal.SIGTERM) == 0


# -- the ASGI servers ---------------------------------------------------------------


def test_uvicorn_serves_health_and_jsonrpc(server_factory: ServerFactory) -> None:
    server = server_factory("--server", "uvicorn").start()
    with client(server.url) as http:
        health = http.get("/api/v1/health")
        rpc(http, "agent.register", {"agent_card": agent_card("agent-uvicorn")})
        pong = rpc(http, "agent.ping", {"agent_id": "agent-uvicorn"})

    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    assert (pong["agent_id"], pong["status"]) == ("agent-uvicorn", "active")
    assert server.signal(signal.SIGTERM) == 0


def loopback_source() -> str:
    """A loopback address of its own (Linux routes all of 127/8 to lo)."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def list_agents(url: str, source: str, forwarded_for: str) -> int:
    """One JSON-RPC call from the local address ``source``; its HTTP status."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, timeout=10, transport=transport) as http:
        response = http.post(
            "/api/v1/jsonrpc",
            json={"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1},
            headers={"X-Forwarded-For": forwarded_for, "X-Real-IP": forwarded_for},
        )
    return response.status_code


@pytest.mark.parametrize("asgi_server", SERVERS)
def test_the_client_address_is_the_socket_peer(
    server_factory: ServerFactory, asgi_server: str
) -> None:
    # Anonymous callers are limited per client address: two calls, then 429.
    server = server_factory(
        "--server",
        asgi_server,
        env={"AGENTCORE_RATE_LIMIT__CLASSES": "{control={rate=0.01,burst=2}}"},
    ).start()
    first, second = loopback_source(), loopback_source()
    while second == first:
        second = loopback_source()

    # A new X-Forwarded-For each time changes nothing (no trusted proxy is configured)...
    from_first = [list_agents(server.url, first, f"10.0.0.{i}") for i in range(3)]
    # ...and another peer address is another client.
    from_second = list_agents(server.url, second, "10.0.0.1")

    assert from_first == [200, 200, 429]
    assert from_second == 200


@pytest.mark.parametrize("asgi_server", SERVERS)
def test_startup_failure_exits_non_zero_showing_the_error(tmp_path: Path, asgi_server: str) -> None:
    unreachable = f"postgresql://agentcore@127.0.0.1:{free_port()}/agentcore"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcore.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
            "--database-url",
            unreachable,
            "--server",
            asgi_server,
        ],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert "postgresql: [Errno 111] Connection refused" in done.stdout + done.stderr


def test_granian_logs_at_the_configured_level_without_access_log_by_default(
    server_factory: ServerFactory,
) -> None:
    def log_after_a_request(*args: str, env: dict[str, str] | None = None) -> str:
        server = server_factory("--server", "granian", *args, env=env).start()
        with client(server.url) as http:
            assert http.get("/api/v1/health/live").status_code == 200
        assert server.signal(signal.SIGTERM) == 0
        return server.log.read_text()

    info = log_after_a_request("--log-level", "info")
    warning = log_after_a_request("--log-level", "warning")
    access = log_after_a_request(env={"AGENTCORE_SERVER__ACCESS_LOG": "true"})

    assert "INFO agentcore: agentcore" in info  # a worker's own startup line
    assert "/api/v1/health/live" not in info
    assert "INFO" not in warning
    assert '"GET /api/v1/health/live HTTP/1.1" 200' in access


async def test_granian_gateway_closes_the_streams_on_sigterm_before_granian_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = GranianGateway(make_config())
    stopped = asyncio.Event()
    # Granian's own stop (its SIGINT handler) is not there in this process.
    monkeypatch.setattr(gateway, "stop_serving", stopped.set)
    thresholds = gc.get_threshold()
    await gateway.startup()
    try:
        assert gc.get_threshold() == GC_THRESHOLDS  # tuned after startup
        assert gc.get_freeze_count() > 0

        signal.raise_signal(signal.SIGTERM)  # the handler startup installed takes it
        await asyncio.wait_for(stopped.wait(), 5)

        assert gateway.streams.closing
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        await gateway.shutdown()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


# -- PostgreSQL -------------------------------------------------------------------


async def pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql, timeout=15)
    finally:
        await conn.close(timeout=5)


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh, empty database, dropped after the test."""
    name = f"agentcore_srv_{secrets.token_hex(6)}"
    try:
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        unavailable(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc!r}")
    try:
        yield urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
def test_postgres_backend_survives_sigkill(
    pg_database_url: str, server_factory: ServerFactory
) -> None:
    first = server_factory("--database-url", pg_database_url).start()
    with client(first.url) as http:
        health = http.get("/api/v1/health").json()
        register_and_create_task(http, "agent-pg", "task-pg")
    before = snapshot(first.url, "agent-pg", "task-pg")

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    second = server_factory("--database-url", pg_database_url).start()

    assert health["dependencies"]["database"]["backend"] == "postgresql"
    assert snapshot(second.url, "agent-pg", "task-pg") == before
    second.stop()


async def pg_connections(database: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database, timeout=5
        )
    finally:
        await conn.close(timeout=5)
    return count


@pytest.mark.postgres
def test_postgres_pool_size_comes_from_the_configuration(
    pg_database_url: str, server_factory: ServerFactory
) -> None:
    server = server_factory(
        "--database-url",
        pg_database_url,
        env={"AGENTCORE_DATABASE__POOL_MIN_SIZE": "3", "AGENTCORE_DATABASE__POOL_MAX_SIZE": "3"},
    ).start()

    connections = asyncio.run(pg_connections(urlsplit(pg_database_url).path.lstrip("/")))
    server.stop()

    assert connections == 3


# -- configuration at startup -------------------------------------------------------


def serve_with_env(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcore.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=clean_env(**env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return done, time.monotonic() - started


def test_unknown_env_key_stops_serve_at_once_naming_the_key(tmp_path: Path) -> None:
    done, elapsed = serve_with_env(tmp_path, AGENTCORE_SERVER__NOPE="1")

    assert done.returncode == 2
    assert elapsed < 10
    assert "server.nope" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_default_port_with_only_host_given_is_8001(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agentcore.cli", "config", "show", "--host", "127.0.0.1"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )

    assert done.returncode == 0, done.stderr
    server = tomllib.loads(done.stdout)["server"]
    assert (server["host"], server["port"]) == ("127.0.0.1", 8001)
