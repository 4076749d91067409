"""Event fan-out over the real Redis: two event logs on one SQLite file, as two workers would be.

Each :func:`node` is one worker in miniature (its own store connection to the
shared file, hub, log writer and :class:`RedisFanout`), on a channel of the
test's own. "Exactly once" is checked by order, not by waiting: Redis delivers
a channel's messages to a subscriber in publication order, so once a later
event has arrived, any duplicate of an earlier one would already have.

Redis outages are staged with :class:`Proxy`, a loopback TCP forwarder the
test takes down and brings back on the same port; single connections are
killed with ``CLIENT KILL ID`` (never by type, which would hit other tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentcore.clock import Clock, ManualClock, system_clock
from agentcore.config import EventsConfig
from agentcore.events.base import Event
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus, MemorySubscription
from agentcore.events.redis import RedisFanout
from agentcore.repositories import Repositories, open_repositories
from tests.support import free_port, unavailable

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Seconds any single wait in these tests may take before it fails.
WAIT_S = 5.0


class Node:
    def __init__(self, repos: Repositories, fanout: RedisFanout) -> None:
        self.repos = repos
        self.fanout = fanout
        self.hub = MemoryEventBus()
        self.log = EventLog(repos, self.hub, EventsConfig(), ManualClock(), fanout)


@asynccontextmanager
async def node(
    db: Path, channel: str, name: str, *, url: str = REDIS_URL, clock: Clock = system_clock
) -> AsyncIterator[Node]:
    """A running log writer and fan-out receiver; the fan-out is not yet known to be subscribed."""
    repos = open_repositories(f"sqlite:///{db}")
    await repos.open()
    fanout = RedisFanout(
        url, channel, f"{name}-{channel}", clock=clock, retry_min_s=0.05, retry_max_s=0.2
    )
    n = Node(repos, fanout)
    n.log.open()
    writer = asyncio.create_task(n.log.run())
    receiver = asyncio.create_task(fanout.run(n.log.deliver))
    try:
        yield n
    finally:
        await n.log.close()
        await asyncio.wait_for(writer, WAIT_S)
        await fanout.close()
        await asyncio.wait_for(receiver, WAIT_S)
        await repos.close()


async def subscribed(*nodes: Node) -> None:
    for n in nodes:
        await asyncio.wait_for(n.fanout.subscribed.wait(), WAIT_S)


async def take(sub: MemorySubscription, count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(WAIT_S):
        async for event in sub:
            got.append(event)
            if len(got) == count:
                break
    return got


async def until(condition: Callable[[], bool]) -> None:
    """Poll state the code under test signals no event for: every 10 ms, up to WAIT_S."""
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {WAIT_S} s")


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
def channel(admin: aioredis.Redis) -> str:
    return f"agentcore:test:events:{uuid.uuid4().hex}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


async def test_an_event_reaches_the_other_hub_once_with_its_id(db: Path, channel: str) -> None:
    async with node(db, channel, "a") as a, node(db, channel, "b") as b:
        await subscribed(a, b)
        on_a, on_b = a.hub.subscribe(), b.hub.subscribe()

        first = await a.log.publish("agent.registered", {"agent_id": "x"})
        assert await take(on_b, 1) == [first]
        second = await b.log.publish("agent.registered", {"agent_id": "y"})

        # A sees its own event once (from its hub, not echoed back) and B's after it.
        assert await take(on_a, 2) == [first, second]
        assert await take(on_b, 1) == [second]
        assert (first.id, second.id) == (1, 2)
        assert on_a.pending() == on_b.pending() == 0
        assert (a.fanout.received, b.fanout.received) == (1, 1)


async def test_a_committed_change_is_one_message(
    db: Path, channel: str, admin: aioredis.Redis
) -> None:
    spy = admin.pubsub()
    await spy.subscribe(channel)
    async with node(db, channel, "a") as a, node(db, channel, "b") as b:
        await subscribed(a, b)
        on_b = b.hub.subscribe()

        sent: list[Event] = []
        for change_no in range(20):
            async with a.log.change() as change:
                for i in range(10):
                    change.emit("task.created", {"n": change_no * 10 + i})
            sent.extend(change.stored)

        assert await take(on_b, 200) == sent
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(messages) < 20:
            message = await spy.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                messages.append(message)
    await spy.aclose()  # type: ignore[no-untyped-call,unused-ignore]
    assert [len(msgspec.json.decode(m["data"])["events"]) for m in messages] == [10] * 20


async def test_the_subscription_is_taken_again_after_its_connection_is_killed(
    db: Path, channel: str, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with node(db, channel, "a") as a, node(db, channel, "b") as b:
        await subscribed(a, b)
        on_b = b.hub.subscribe()
        name = f"agentcore:fanout:{b.fanout.instance_id}"
        killed = 0
        with caplog.at_level(logging.WARNING, "agentcore.events"):
            for client in await admin.client_list():
                if client["name"] == name and "P" in client["flags"]:  # P: pub/sub
                    killed += await admin.client_kill_filter(_id=client["id"])
            assert killed == 1
            await until(lambda: b.fanout.reconnects == 1 and b.fanout.subscribed.is_set())

            later = await a.log.publish("task.created", {})

            assert await take(on_b, 1) == [later]
        assert "Connection closed by server" in caplog.text
        assert "subscribed again" in caplog.text


async def test_a_publisher_succeeds_while_redis_is_unreachable(
    db: Path, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, "agentcore.events"):
        async with node(db, channel, "a", url=nowhere) as a:
            local = a.hub.subscribe()

            event = await a.log.publish("agent.registered", {"agent_id": "x"})

            assert event.id == 1
            assert await take(local, 1) == [event]
            assert await a.repos.events.read(0, 10) == [event]
            await until(lambda: a.fanout.unsent_events == 1)
    assert "event fan-out (Redis) unavailable" in caplog.text
    assert "they are durable" in caplog.text


class Proxy:
    """A TCP forwarder to Redis on a loopback port of its own, to take down and bring back."""

    def __init__(self) -> None:
        target = urlsplit(REDIS_URL)
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._db = target.path
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones (as a Redis restart would)."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in tuple(self._writers):
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass  # the other side was cut: closing below ends both directions
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy(admin: aioredis.Redis) -> AsyncIterator[Proxy]:
    forwarder = Proxy()
    await forwarder.start()
    yield forwarder
    await forwarder.stop()


async def test_both_directions_recover_when_redis_comes_back(
    db: Path, channel: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    with caplog.at_level(logging.WARNING, "agentcore.events"):
        async with (
            node(db, channel, "a", url=proxy.url, clock=clock) as a,
            node(db, channel, "b") as b,
        ):
            await subscribed(a, b)
            on_a, on_b = a.hub.subscribe(), b.hub.subscribe()
            await proxy.stop()
            await until(lambda: not a.fanout.subscribed.is_set())

            # A cannot publish: its batches are counted, the first failure logged once.
            lost = [await a.log.publish("task.created", {"n": i}) for i in range(3)]
            await until(lambda: a.fanout.unsent_batches == 3)
            # B's event reaches no live stream on A, but it is in the store.
            missed = await b.log.publish("task.created", {"from": "b"})
            assert await take(on_a, 3) == lost

            await proxy.start()
            clock.advance(1.0)  # past the publish back-off window
            await until(lambda: a.fanout.subscribed.is_set())
            after = await a.log.publish("task.created", {"n": 3})
            assert await take(on_b, 2) == [missed, after]
            back = await b.log.publish("task.created", {"from": "b"})

            # Live again both ways; what B committed during the outage never reached A live.
            assert await take(on_a, 2) == [after, back]
            assert on_a.pending() == 0
            assert a.fanout.unsent_batches == 0
            assert missed in await a.log.replay(0, on_a.filter, 10)
    assert caplog.text.count("they are durable") == 1
    assert "3 events in 3 batches were not fanned out" in caplog.text
    assert "subscribed again" in caplog.text


async def test_a_message_that_is_not_a_batch_is_skipped(
    db: Path, channel: str, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with node(db, channel, "a") as a, node(db, channel, "b") as b:
        await subscribed(a, b)
        on_b = b.hub.subscribe()
        with caplog.at_level(logging.WARNING, "agentcore.events"):
            await admin.publish(channel, b"not json")

            event = await a.log.publish("task.created", {})

            assert await take(on_b, 1) == [event]
        assert "not a batch" in caplog.text


async def test_close_ends_run_promptly(channel: str) -> None:
    fanout = RedisFanout(REDIS_URL, channel)
    receiver = asyncio.create_task(fanout.run(lambda event: None))
    await asyncio.wait_for(fanout.subscribed.wait(), WAIT_S)

    await fanout.close()

    await asyncio.wait_for(receiver, 1.0)
    await fanout.publish([Event(id=1, type="x", timestamp=1.0)])  # a no-op once closed
    assert fanout.unsent_batches == 0
