"""The SSE stream over real sockets: ``agentcore serve`` and httpx streaming.

One shared server (short heartbeat) for the protocol, one with API keys for
authentication and tenants, and servers of their own for SIGTERM and the slow
consumer. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realtime.test_websocket import (
    NOBODY,
    WAIT_S,
    big_card,
    create_key,
    slow_consumers,
    start,
    task_definition,
)
from tests.support import ServerProcess, rpc

pytestmark = pytest.mark.server

STREAM = "/api/v1/events/stream"


class Stream:
    """The events of one text/event-stream response, parsed as EventSource does."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        #: The data of the opening ``event: subscribed``.
        self.subscribed: dict[str, Any] = {}

    async def next(self, wait_s: float = WAIT_S) -> dict[str, str]:
        """The next event (its fields) or comment (``{"comment": ...}``)."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(wait_s):
            async for line in self._lines:
                if line.startswith(":"):
                    return {"comment": line[1:].strip()}
                if line == "":
                    if fields:
                        return fields
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        raise EOFError("the stream ended")

    async def event(self) -> dict[str, str]:
        """The next event, heartbeats skipped."""
        while "comment" in (found := await self.next()):
            pass
        return found

    async def data(self) -> tuple[int, dict[str, Any]]:
        """The next stream event: its ``id:`` and its data."""
        found = await self.event()
        assert "event" not in found, found  # events use the default type ("message")
        data: dict[str, Any] = json.loads(found["data"])
        assert data["type"] == "event" and data["id"] == int(found["id"])
        return int(found["id"]), data


@contextlib.asynccontextmanager
async def stream(
    server: ServerProcess,
    query: str = "",
    *,
    key: str | None = None,
    last_event_id: int | None = None,
) -> AsyncIterator[Stream]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client,
        client.stream("GET", f"{STREAM}?{query}", headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        opened = Stream(response)
        subscribed = await opened.event()
        assert subscribed["event"] == "subscribed" and subscribed["retry"] == "3000"
        opened.subscribed = json.loads(subscribed["data"])
        yield opened


def api(server: ServerProcess, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=WAIT_S * 2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(tmp_path_factory.mktemp("sse"), AGENTCORE_REALTIME__SSE_HEARTBEAT_S="0.3")
    yield process
    process.stop()


async def test_a_stream_sends_ids_and_events_as_text_event_stream(server: ServerProcess) -> None:
    async with stream(server, "topics=task.created,agent.*") as events, api(server) as http:
        assert events.response.headers["content-type"].startswith("text/event-stream")
        assert events.response.headers["cache-control"] == "no-cache"
        # The middleware's headers reach streams too (they are sent by the stream itself).
        assert events.response.headers["x-content-type-options"] == "nosniff"
        assert "x-ratelimit-limit" in events.response.headers
        head = events.subscribed["head"]
        await rpc(http, "task.create", task_definition("s-t1", NOBODY))
        await rpc(http, "task.create", task_definition("s-t2", NOBODY))
        first, second = await events.data(), await events.data()
        assert [first[0], second[0]] == [head + 1, head + 2]
        assert first[1]["event_type"] == "task.created"
        assert [first[1]["data"]["task_id"], second[1]["data"]["task_id"]] == ["s-t1", "s-t2"]
        assert "subscription" not in first[1]


async def test_last_event_id_resumes_after_the_cursor(server: ServerProcess) -> None:
    async with api(server) as http:
        created = []
        async with stream(server, "topics=task.*&task_id=l-t1") as events:
            await rpc(http, "task.create", task_definition("l-t1", NOBODY))
            await rpc(http, "task.cancel", {"task_id": "l-t1"})
            created = [await events.data(), await events.data()]
        cursor = created[0][0]
        async with stream(
            server, "topics=task.*&task_id=l-t1&since=0", last_event_id=cursor
        ) as again:
            assert again.subscribed["since"] == cursor
            assert await again.data() == created[1]  # the cancellation, once
            assert await again.next(wait_s=2) == {"comment": "heartbeat"}  # and nothing else


async def test_heartbeat_comments_keep_a_quiet_stream_alive(server: ServerProcess) -> None:
    async with stream(server, "topics=nothing.matches") as events:
        assert await events.next(wait_s=2) == {"comment": "heartbeat"}
        assert await events.next(wait_s=2) == {"comment": "heartbeat"}


async def test_bad_stream_requests_are_400(server: ServerProcess) -> None:
    async with api(server) as http:
        for query in ("since=soon", "topics=a%20b", "colour=red"):
            response = await http.get(f"{STREAM}?{query}")
            assert response.status_code == 400, query
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["type"] == "invalid_request"


async def test_a_cursor_beyond_64_bits_is_400(server: ServerProcess) -> None:
    """Event ids are 64-bit: a larger cursor, in the query or ``Last-Event-ID``, is 400
    JSON, not a stream that ends mid-chunk when the store cannot take it."""
    async with api(server) as http:
        for query, headers in (
            ("since=99999999999999999999999", {}),
            (f"since={2**63}", {}),
            ("since=-1", {}),
            ("", {"Last-Event-ID": "99999999999999999999999"}),
            ("since=0", {"Last-Event-ID": "-5"}),
        ):
            response = await http.get(f"{STREAM}?{query}", headers=headers)
            assert response.status_code == 400, (query, headers)
            assert response.headers["content-type"] == "application/json"
            error = response.json()["error"]
            assert error["type"] == "invalid_request" and "since" in error["message"]
    async with stream(server, last_event_id=2**63 - 1) as events:  # the largest id is a cursor
        assert events.subscribed["since"] == 2**63 - 1
        assert await events.next(wait_s=2) == {"comment": "heartbeat"}


async def test_streams_do_not_count_as_requests_in_flight(server: ServerProcess) -> None:
    async with stream(server), stream(server), api(server) as http:
        metrics = (await http.get("/metrics")).text
        assert 'agentcore_stream_connections{transport="sse"} 2.0' in metrics
        assert "agentcore_http_requests_in_flight 1.0" in metrics  # this scrape only


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, str]]:
    """A server with API keys: (server, an acme key, a globex key)."""
    data = tmp_path / "data"
    acme, globex = create_key(data, "acme"), create_key(data, "globex")
    server = start(tmp_path, AGENTCORE_AUTH__MODE="api_key")
    yield server, acme, globex
    server.stop()


async def test_authentication_and_tenants(keyed: tuple[ServerProcess, str, str]) -> None:
    server, acme, globex = keyed
    async with api(server) as anonymous:
        assert (await anonymous.get(STREAM)).status_code == 401
    async with (
        stream(server, key=acme) as acme_events,
        stream(server, key=globex) as globex_events,
        api(server, acme) as acme_api,
        api(server, globex) as globex_api,
    ):
        await rpc(acme_api, "task.create", task_definition("a-t1", NOBODY))
        await rpc(globex_api, "task.create", task_definition("g-t1", NOBODY))
        assert (await acme_events.data())[1]["data"]["task_id"] == "a-t1"
        assert (await globex_events.data())[1]["data"]["task_id"] == "g-t1"
        await rpc(acme_api, "task.create", task_definition("a-t2", NOBODY))
        assert (await acme_events.data())[1]["data"]["task_id"] == "a-t2"


@pytest.mark.parametrize("asgi_server", ["granian", "uvicorn"])
async def test_sigterm_ends_streams_with_an_error_event(tmp_path: Path, asgi_server: str) -> None:
    server = start(tmp_path, "--server", asgi_server)
    try:
        async with stream(server) as one, stream(server, "topics=task.*") as two:
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGTERM)
            for events in (one, two):
                end = await events.event()
                assert end["event"] == "error"
                assert json.loads(end["data"]) == {"code": 1001, "reason": "server shutting down"}
                with pytest.raises(EOFError):
                    await events.next()
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
    finally:
        server.stop()


async def test_a_slow_consumer_gets_an_error_event(tmp_path: Path) -> None:
    server = start(tmp_path, AGENTCORE_REALTIME__SEND_QUEUE_SIZE="16")
    try:
        # Not reading: once the socket buffers are full, the server's queue fills.
        async with stream(server) as slow, api(server) as http:
            async with asyncio.timeout(40):
                while not await slow_consumers(http):
                    body = [
                        {
                            "jsonrpc": "2.0",
                            "id": i,
                            "method": "agent.register",
                            "params": {"agent_card": big_card("big"), "override_existing": True},
                        }
                        for i in range(10)
                    ]
                    assert (await http.post("/api/v1/jsonrpc", json=body)).status_code == 200
            async with asyncio.timeout(WAIT_S * 2):
                while "event" not in (found := await slow.event()):
                    pass
            assert found["event"] == "error"
            assert json.loads(found["data"])["code"] == 1013
    finally:
        server.stop()
