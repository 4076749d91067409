"""A real webhook receiver on loopback, in-process gateways that deliver to it, and
two "processes" (stores) on one database for the store-level tests."""

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
from agentcore.store import open_store
from agentcore.store.sql import SqlStore
from agentcore.webhooks.dispatcher import WebhookDispatcher
from agentcore.webhooks.store import Secret, Webhook, WebhookStore, new_webhook_id
from tests.store.conftest import create_pg_database, drop_pg_database
from tests.support import make_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

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
    """``ThreadingHTTPServer`` in a thread: records every POST, answers as scripted."""

    def __init__(self) -> None:
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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


# -- two processes on one database (store-level tests) --------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agentcore.db'}"
        return
    name, url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(name)


class Process:
    """One process's view of the database: its store, webhook store and dispatcher."""

    def __init__(self, url: str, clock: ManualClock) -> None:
        store = open_store(url)
        assert isinstance(store, SqlStore)
        self.store = store
        self.webhooks = WebhookStore(self.store.db)
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

    async def publish(self, *types: str, tenant: str = "default") -> list[int]:
        events = [Event(type=t, timestamp=self.clock(), tenant=tenant) for t in types]
        return [e.id for e in await self.store.append_events(events)]

    async def dispatch_all(self) -> int:
        consumed = 0
        while n := await self.dispatcher.run_once():
            consumed += n
        return consumed

    async def queued(self) -> set[tuple[str, int]]:
        rows = await self.store.db.fetch("SELECT webhook_id, event_id FROM webhook_deliveries")
        return {(r[0], int(r[1])) for r in rows}


@pytest.fixture
async def processes(database_url: str) -> AsyncIterator[tuple[Process, Process]]:
    clock = ManualClock()
    first, second = Process(database_url, clock), Process(database_url, clock)
    await first.store.open()
    await second.store.open()
    yield first, second
    await second.store.close()
    await first.store.close()
