"""Event fan-out between real gateway processes over the real Redis.

Two ``agentcore serve`` instances share one data directory (one SQLite file,
so one id sequence) and a Redis channel of the test's own. An agent
registered through A must reach B's in-process hub: B's
``agentcore_events_published_total{type="agent.registered"}`` counts every
event its hub delivers, its own and fanned-in alike. With ``events.fanout =
"local"`` it stays at 0 on B, which shows the check can fail. A WebSocket
client subscribed on B receives the event too, and the same holds between
the two workers of one instance, whose metrics are summed.

Each fan-out process is known to listen once Redis counts its subscription
(``PUBSUB NUMSUB``), so no event is published before the other side hears.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError
from websockets.asyncio.client import connect

from tests.support import ServerProcess, agent_card, unavailable

pytestmark = pytest.mark.server

ServerFactory = Callable[..., ServerProcess]

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Seconds any wait for another process may take.
WAIT_S = 10.0
#: How long "B never sees it" is watched: far beyond the fan-out latency
#: (a few milliseconds on loopback).
QUIET_S = 0.5
REGISTERED = 'agentcore_events_published_total{type="agent.registered"}'
RECEIVED = "agentcore_events_fanout_received_total"


@pytest.fixture
def channel() -> Iterator[str]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    yield f"agentcore:test:events:{uuid.uuid4().hex}"


def fanout_env(channel: str) -> dict[str, str]:
    return {
        "AGENTCORE_EVENTS__FANOUT": "redis",
        "AGENTCORE_EVENTS__REDIS_URL": REDIS_URL,
        "AGENTCORE_EVENTS__REDIS_CHANNEL": channel,
    }


def until_subscribed(channel: str, count: int) -> None:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            numsub = client.pubsub_numsub(channel)
            if numsub[0][1] >= count:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{count} subscribers on {channel} not seen within {WAIT_S} s")
            time.sleep(0.02)
    finally:
        client.close()


def metric(server: ServerProcess, name: str) -> float:
    """The value of one sample (``name`` with its labels, as /metrics prints it), 0 if absent."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            if (f"{sample.name}{{{labels}}}" if labels else sample.name) == name:
                return float(sample.value)
    return 0.0


def until_metric(server: ServerProcess, name: str, value: float) -> float:
    """Poll until the sample reaches ``value``; returns the seconds it took."""
    started = time.monotonic()
    while (seen := metric(server, name)) < value:
        if time.monotonic() - started > WAIT_S:
            pytest.fail(f"{name} on {server.url} is {seen}, not {value}, after {WAIT_S} s")
        time.sleep(0.005)
    return time.monotonic() - started


def register(server: ServerProcess, agent_id: str) -> None:
    body = {
        "jsonrpc": "2.0",
        "method": "agent.register",
        "params": {"agent_card": agent_card(agent_id, "summarize")},
        "id": 1,
    }
    response = httpx.post(f"{server.url}/api/v1/jsonrpc", json=body, timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert data["result"]["agent_id"] == agent_id, data


async def next_message(ws: Any) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    return message


def health(server: ServerProcess) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{server.url}/api/v1/health", timeout=5).json()
    return data


def test_an_event_published_on_one_instance_reaches_the_other(
    server_factory: ServerFactory, channel: str
) -> None:
    a = server_factory(env=fanout_env(channel)).start()
    b = server_factory(env=fanout_env(channel)).start()
    until_subscribed(channel, 2)
    assert health(b)["events"] == {"fanout": "redis"}

    register(a, "fanned-out")

    until_metric(b, REGISTERED, 1)
    assert metric(b, RECEIVED) == 1
    # A counted it once: from its own hub, not again from the channel.
    assert metric(a, REGISTERED) == 1
    assert metric(a, RECEIVED) == 0


def test_a_websocket_client_on_one_instance_gets_what_the_other_published(
    server_factory: ServerFactory, channel: str
) -> None:
    a = server_factory(env=fanout_env(channel)).start()
    b = server_factory(env=fanout_env(channel)).start()
    until_subscribed(channel, 2)

    async def listen_on_b() -> str:
        async with connect(f"ws://127.0.0.1:{b.port}/api/v1/ws/events", open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topics": ["agent.*"], "id": 1}))
            answer = await next_message(ws)
            assert answer["type"] == "subscribed", answer
            await asyncio.to_thread(register, a, "seen-over-websocket")
            while True:  # skip keep-alive pings; the next other frame must be the event
                frame = await asyncio.wait_for(ws.recv(), WAIT_S)
                assert isinstance(frame, str)
                if json.loads(frame).get("type") != "ping":
                    return frame

    frame = json.loads(asyncio.run(listen_on_b()))

    assert frame["type"] == "event"
    assert frame["subscription"] == "s1"
    assert frame["event_type"] == "agent.registered"
    assert frame["data"]["agent_id"] == "seen-over-websocket"
    assert frame["id"] == 1  # the first event in this data directory: the id A's commit got


def test_with_local_fanout_the_other_instance_never_sees_it(
    server_factory: ServerFactory, channel: str
) -> None:
    a = server_factory().start()
    b = server_factory().start()
    assert health(b)["events"] == {"fanout": "local"}

    register(a, "kept-local")

    until_metric(a, REGISTERED, 1)
    time.sleep(QUIET_S)
    assert metric(b, REGISTERED) == 0


@pytest.mark.parametrize(("fanout", "hubs"), [("redis", 2), ("local", 1)])
def test_the_workers_of_one_instance_share_events_over_redis(
    server_factory: ServerFactory, channel: str, tmp_path: Path, fanout: str, hubs: int
) -> None:
    env = fanout_env(channel) | {"AGENTCORE_EVENTS__FANOUT": fanout}
    server = server_factory("--workers", "2", env=env, data_dir=tmp_path / fanout).start()
    if fanout == "redis":
        until_subscribed(channel, 2)
    else:
        assert "will not see events" in health(server)["events"]["warning"]

    register(server, f"two-workers-{fanout}")

    # Summed over both workers: the hub of the one that served the call, plus
    # (over Redis) the other's.
    until_metric(server, REGISTERED, hubs)
    time.sleep(QUIET_S)
    assert metric(server, REGISTERED) == hubs
    assert metric(server, RECEIVED) == hubs - 1
