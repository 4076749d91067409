"""Events across instances: published on one, streamed from every other, resumable anywhere.

An event published through instance A reaches a WebSocket subscriber on B
and an SSE subscriber on C (Redis fan-out), each event once and in log
order. A subscriber that drops and subscribes again on another instance with
its cursor (``since`` / ``Last-Event-ID``) gets exactly the events after it:
the replay from the shared PostgreSQL log, then live ones, no gap and no
duplicate. The same streams work through nginx (WebSocket upgrade and
unbuffered SSE). Each test's events have a type of their own, so the
subscriptions see nothing else. docs/realtime.md is the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from benchmarks.cluster import Cluster
from tests.cluster.calls import WAIT_S, async_client, publish
from tests.realtime.test_sse import STREAM, Stream

pytestmark = pytest.mark.server

#: Events published per test.
EVENTS = 5


class Socket:
    """One WebSocket subscription's events."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def data(self) -> tuple[int, dict[str, Any]]:
        """The next event (keep-alive pings skipped): its id and the frame."""
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))
            if frame["type"] != "ping":
                assert frame["type"] == "event", frame
                return int(frame["id"]), frame


@contextlib.asynccontextmanager
async def websocket(url: str, topic: str, since: int | None = None) -> AsyncIterator[Socket]:
    """Subscribed to ``topic`` (from ``since``) over a WebSocket to ``url``."""
    ws_url = url.replace("http://", "ws://") + "/api/v1/ws/events"
    async with connect(ws_url, open_timeout=WAIT_S) as ws:
        subscribe: dict[str, Any] = {"type": "subscribe", "topics": [topic], "id": 1}
        if since is not None:
            subscribe["since"] = since
        await ws.send(json.dumps(subscribe))
        answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert answer["type"] == "subscribed", answer
        yield Socket(ws)


@contextlib.asynccontextmanager
async def sse(url: str, topic: str, last_event_id: int | None = None) -> AsyncIterator[Stream]:
    """Subscribed to ``topic`` (after ``last_event_id``) over SSE from ``url``."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with (
        httpx.AsyncClient(base_url=url, timeout=WAIT_S) as client,
        client.stream("GET", STREAM, params={"topics": topic}, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        opened = Stream(response)
        subscribed = await opened.event()
        assert subscribed["event"] == "subscribed", subscribed
        yield opened


async def until(subscription: Socket | Stream, last: int) -> list[int]:
    """The ids of the events received up to and including ``last``."""
    ids: list[int] = []
    while not ids or ids[-1] != last:
        event_id, _ = await subscription.data()
        ids.append(event_id)
    return ids


async def publish_all(url: str, event_type: str, count: int) -> list[int]:
    async with async_client(url) as http:
        return [await publish(http, event_type, {"n": n}) for n in range(count)]


def topic() -> tuple[str, str]:
    """A pattern of this test's own and an event type it matches."""
    own = f"cluster{secrets.token_hex(4)}"
    return f"{own}.*", f"{own}.item"


async def test_an_event_published_on_a_reaches_a_websocket_on_b_and_sse_on_c(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.instances
    pattern, event_type = topic()
    async with websocket(b.url, pattern) as on_b, sse(c.url, pattern) as on_c:
        published = await publish_all(a.url, event_type, EVENTS)
        assert published == sorted(set(published))
        # A last event: anything duplicated or out of order would come before it.
        [last] = await publish_all(a.url, event_type, 1)
        got_b, got_c = await asyncio.gather(until(on_b, last), until(on_c, last))
    assert got_b == [*published, last]
    assert got_c == [*published, last]


async def test_a_subscriber_resumes_on_another_instance_from_its_cursor(cluster: Cluster) -> None:
    a, b, c = cluster.instances
    pattern, event_type = topic()
    async with websocket(b.url, pattern) as on_b, sse(c.url, pattern) as on_c:
        published = await publish_all(a.url, event_type, EVENTS)
        # Each reads two events, then drops its connection.
        ws_cursor = [(await on_b.data())[0] for _ in range(2)][-1]
        sse_cursor = [(await on_c.data())[0] for _ in range(2)][-1]
    assert ws_cursor == sse_cursor == published[1]
    # Meanwhile (no subscriber anywhere) more happens.
    missed = await publish_all(a.url, event_type, 2)

    async with (
        websocket(c.url, pattern, since=ws_cursor) as on_c_again,
        sse(a.url, pattern, last_event_id=sse_cursor) as on_a_again,
    ):
        [live] = await publish_all(b.url, event_type, 1)
        got_ws, got_sse = await asyncio.gather(until(on_c_again, live), until(on_a_again, live))
    expected = [*published[2:], *missed, live]
    assert got_ws == expected
    assert got_sse == expected


async def test_websocket_and_sse_stream_through_nginx(cluster: Cluster) -> None:
    pattern, event_type = topic()
    async with websocket(cluster.url, pattern) as ws, sse(cluster.url, pattern) as stream:
        # Through nginx too: round robin spreads the publishing over the instances.
        published = await publish_all(cluster.url, event_type, EVENTS)
        got_ws, got_sse = await asyncio.gather(
            until(ws, published[-1]), until(stream, published[-1])
        )
    assert got_ws == published
    assert got_sse == published
