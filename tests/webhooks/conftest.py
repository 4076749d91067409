"""A real webhook receiver on loopback, in-process gateways that deliver to it, and
two "processes" (repositories) on one database for the repository-level tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock, system_clock
from agentcore.events.base import Event
from agentcore.events.repository import EventRepository, MemoryEvents, SqlEvents
from agentcore.store.database import Database
from agentcore.store.memory import MemoryDatabase
from agentcore.store.postgres import PostgresDatabase
from agentcore.store.schema import migrate
from agentcore.store.sqlite import SqliteDatabase
from agentcore.webhooks.dispatcher import WebhookDispatcher
from agentcore.webhooks.repository import (
    MemoryWebhooks,
    Secret,
    SqlWebhooks,
    Webhook,
    WebhookRepository,
    new_webhook_id,
)
from agentcore.webhooks.secretbox import SecretBox
from tests.databases import create_pg_database, drop_pg_database
from tests.support import make_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: The key that seals webhook secrets in the repository tests' SQL databases.
KEY = bytes(range(32))

#: Webhook settings of the in-process tests: loopback allowed, fast retries, no jitter.
FAST: dict[str, Any] = {
    "allowed_networks": ["127.0.0.0/8"],
    "retry_schedule": [0, 0.2, 0.4],
    "jitter": 0.0,
    "poll_interval_s": 0.05,
    "timeout_s": 2.0,
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def msg_id(self) -> str:
        return self.headers["webhook-id"]

    def verifies(self, secret: str) -> bool:
        """True when the reference Standard Webhooks verifier accepts it with ``secret``."""
        try:
            standardwebhooks.Webhook(secret).verify(self.body, self.headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True


#: (request, how many requests this path got before it) -> (status, headers, delay_s).
Script = Callable[[Received, int], tuple[int, dict[str, str], float]]


class Receiver:
    """``ThreadingHTTPServer`` in a thread: records every POST, answers as scripted;
    on ``port`` (0: any free one; a given one: a receiver that comes up late)."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                item = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    time.monotonic(),
                )
                with receiver._lock:
                    seen = sum(1 for r in receiver.received if r.path == self.path)
                    receiver.received.append(item)
                script = receiver.scripts.get(self.path)
                status, headers, delay = script(item, seen) if script else (200, {}, 0.0)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    async def wait(self, path: str, count: int, within_s: float = 10.0) -> list[Received]:
        """The first ``count`` requests to ``path``; fails after ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            got = self.at(path)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests in {within_s} s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@contextlib.asynccontextmanager
async def webhook_gateway(
    **webhooks: Any,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A started in-process gateway on the real clock (delivery waits on real time)."""
    config = make_config(webhooks={**FAST, **webhooks})
    app = create_app(config, clock=system_clock)
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield app, c
    finally:
        await app.shutdown()


async def register(client: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    body = {"url": url, "events": ["*"], **fields}
    response = await client.post("/api/v1/integration/webhooks", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def publish(client: httpx.AsyncClient, event_type: str, **data: Any) -> int:
    response = await client.post(
        "/api/v1/integration/events/publish", json={"event_type": event_type, "data": data}
    )
    assert response.status_code == 202, response.text
    event_id: int = response.json()["event_id"]
    return event_id


async def until(check: Callable[[], Any], within_s: float = 10.0) -> Any:
    """Poll the async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {within_s} s (last: {value!r})")
        await asyncio.sleep(0.05)


# -- processes on one database (repository-level tests) ---------------------------

#: Backends of the repository contract that two processes can share: SQLite on a file;
#: in memory, a second "process" is a second repository on the one database.
SHARED_BACKENDS = [
    "memory",
    "sqlite-file",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]
#: Backends of what only SQL has (the listing order a SQL repository keeps).
SHARED_SQL_BACKENDS = SHARED_BACKENDS[1:]

Db = MemoryDatabase | Database


@contextlib.asynccontextmanager
async def shared_database(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Db, Db]]:
    """Two processes' connections to one fresh, migrated database (in memory, the
    one database twice)."""
    if backend == "memory":
        memory = MemoryDatabase()
        await memory.open()
        try:
            yield memory, memory
        finally:
            await memory.close()
        return
    pg_name: str | None = None
    if backend == "sqlite-file":
        path = str(tmp_path / "agentcore.db")
        pair: tuple[Database, Database] = SqliteDatabase(path), SqliteDatabase(path)
    else:
        pg_name, url = await create_pg_database()
        pair = PostgresDatabase(url), PostgresDatabase(url)
    try:
        for db in pair:
            await db.open()
            await migrate(db)
            db.serve()
        yield pair
    finally:
        for db in pair:
            await db.close()
        if pg_name is not None:
            await drop_pg_database(pg_name)


class Process:
    """One process's view of the database: its webhook and event repositories and its
    dispatcher."""

    def __init__(self, db: Db, clock: ManualClock, box: SecretBox | None = None) -> None:
        """``box`` seals secrets in SQL; by default both processes share :data:`KEY`."""
        self.database = db
        self.webhooks: WebhookRepository
        self.events: EventRepository
        if isinstance(db, MemoryDatabase):
            self.webhooks, self.events = MemoryWebhooks(db), MemoryEvents(db)
        else:
            self.webhooks = SqlWebhooks(db, box or SecretBox.from_key(KEY))
            self.events = SqlEvents(db)
        self.dispatcher = WebhookDispatcher(self.webhooks, clock, batch_size=50)
        self.clock = clock
        #: Calls of the webhook reads the dispatcher makes, by method name.
        self.reads: dict[str, int] = {}
        for name in ("active", "active_ids"):
            self._count(name)

    def _count(self, name: str) -> None:
        original: Callable[..., Awaitable[Any]] = getattr(self.webhooks, name)

        async def counted(*args: Any) -> Any:
            self.reads[name] = self.reads.get(name, 0) + 1
            return await original(*args)

        setattr(self.webhooks, name, counted)

    async def register(self, *patterns: str, tenant: str = "default") -> Webhook:
        self.clock.advance(1)
        now = self.clock()
        hook = Webhook(
            id=new_webhook_id(),
            tenant=tenant,
            url="http://127.0.0.1:9/h",
            events=list(patterns),
            secrets=[Secret(SECRET)],
            created_at=now,
            updated_at=now,
        )
        return await self.webhooks.create(hook)

    async def publish(self, *types: str, tenant: str = "default", **data: Any) -> list[int]:
        events = [Event(type=t, timestamp=self.clock(), tenant=tenant, data=data) for t in types]
        return [e.id for e in await self.events.append(events)]

    async def dispatch_all(self) -> int:
        consumed = 0
        while n := await self.dispatcher.run_once():
            consumed += n
        return consumed

    async def queued(self, tenant: str = "default") -> set[tuple[str, int | None]]:
        """(webhook id, event id) of every delivery of the tenant's webhooks."""
        found: set[tuple[str, int | None]] = set()
        for hook in await self.webhooks.for_tenant(tenant):
            rows = await self.webhooks.deliveries(hook.id, None, 100_000, 0)
            found.update((d.webhook_id, d.event_id) for d in rows)
        return found


@pytest.fixture(params=SHARED_BACKENDS)
async def processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Process, Process]]:
    """Two processes on one database, of each backend in turn, on one manual clock."""
    clock = ManualClock()
    async with shared_database(request.param, tmp_path) as (first, second):
        yield Process(first, clock), Process(second, clock)


@pytest.fixture(params=SHARED_SQL_BACKENDS)
async def sql_processes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Process, Process]]:
    """Two processes on one SQL database, of each SQL backend in turn."""
    clock = ManualClock()
    async with shared_database(request.param, tmp_path) as (first, second):
        yield Process(first, clock), Process(second, clock)


@pytest.fixture
def process(processes: tuple[Process, Process]) -> Process:
    """One process, of each backend in turn."""
    return processes[0]
