"""Credentials that end while a stream is open: real servers, ``websockets`` and httpx streaming.

A stream authenticates once, at its start; these tests hold that an API key
revoked (``agentcore keys revoke``) or a JWT whose ``exp`` passes ends the
WebSocket (1008) and the SSE stream (a terminal ``event: error``) on its own,
within ``auth.cache_s``-scale time, and that an ``rpc`` over the socket is
checked as an HTTP request is. ``auth.cache_s`` is short so they run in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from agentcore.cli import main as cli
from tests.realtime.test_sse import STREAM, Stream
from tests.realtime.test_websocket import (
    NOBODY,
    WAIT_S,
    create_key,
    start,
    task_definition,
    ws,
)
from tests.support import RpcError, ServerProcess, rpc

pytestmark = pytest.mark.server

SECRET = "a-test-secret-of-at-least-32-bytes!"
CACHE_S = "0.3"


@contextlib.asynccontextmanager
async def sse(server: ServerProcess, credential: str) -> AsyncIterator[Stream]:
    """An open SSE stream (past ``event: subscribed``) authenticated with ``credential``."""
    headers = {"Authorization": f"Bearer {credential}"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client,
        client.stream("GET", STREAM, headers=headers) as response,
    ):
        assert response.status_code == 200, await response.aread()
        opened = Stream(response)
        assert (await opened.event())["event"] == "subscribed"
        yield opened


async def ended(events: Stream) -> dict[str, object]:
    """The stream's terminal ``event: error`` data; asserts that nothing follows it."""
    while True:
        found = await events.next()
        if found.get("event") == "error":
            break
        assert "comment" in found or "id" in found, found
    with pytest.raises(EOFError):
        await events.next(wait_s=2)
    data: dict[str, object] = json.loads(found["data"])
    return data


def api(server: ServerProcess, credential: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {credential}"}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=WAIT_S)


# -- API keys ------------------------------------------------------------------------------


@pytest.fixture(params=["uvicorn", "granian"])
def keyed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[ServerProcess, Path, str, str]]:
    """(server, its data directory, a key to revoke, a key that stays) with a 0.3 s
    cache, under each ASGI server (they differ in how a close reaches a socket)."""
    data = tmp_path / "data"
    doomed, kept = create_key(data, "acme"), create_key(data, "acme")
    server = start(
        tmp_path,
        "--server",
        request.param,
        AGENTCORE_AUTH__MODE="api_key",
        AGENTCORE_AUTH__CACHE_S=CACHE_S,
    )
    yield server, data, doomed, kept
    server.stop()


def revoke(data: Path, key: str) -> None:
    """``agentcore keys revoke`` against the running server's database."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli(["keys", "revoke", key.split("_")[1], "--data-dir", str(data)]) == 0


async def test_a_revoked_key_ends_its_open_streams(
    keyed: tuple[ServerProcess, Path, str, str],
) -> None:
    server, data, doomed, kept = keyed
    async with (
        ws(server, doomed) as by_header,
        ws(server) as by_message,
        sse(server, doomed) as events,
        ws(server, kept) as unaffected,
        api(server, kept) as http,
    ):
        await by_message.send(type="auth", token=doomed)
        await by_message.expect("authenticated")
        for client in (by_header, by_message, unaffected):
            await client.subscribe(topics=["task.*"])
        await rpc(http, "task.create", task_definition("rv-1", NOBODY))
        for client in (by_header, by_message, unaffected):
            assert (await client.expect("event"))["data"]["task_id"] == "rv-1"
        assert (await events.data())[1]["data"]["task_id"] == "rv-1"

        await asyncio.to_thread(revoke, data, doomed)
        for client in (by_header, by_message):
            assert await client.closed() == (1008, "credential ended: API key revoked")
        assert await ended(events) == {"code": 1008, "reason": "credential ended: API key revoked"}
        async with api(server, doomed) as revoked:
            assert (await revoked.post("/api/v1/jsonrpc", json={})).status_code == 401
        # Another key's stream goes on receiving.
        await rpc(http, "task.create", task_definition("rv-2", NOBODY))
        assert (await unaffected.expect("event"))["data"]["task_id"] == "rv-2"


# -- JWTs ------------------------------------------------------------------------------------


def token(lifetime_s: float) -> str:
    claims = {"sub": "svc", "exp": time.time() + lifetime_s, "tenant": "acme", "scope": "admin"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def jwt_server(directory: Path, cache_s: str) -> ServerProcess:
    return start(
        directory,
        AGENTCORE_AUTH__MODE="jwt",
        AGENTCORE_AUTH__JWT_SECRET=SECRET,
        AGENTCORE_AUTH__CACHE_S=cache_s,
    )


async def test_an_expired_jwt_ends_its_open_streams(tmp_path: Path) -> None:
    server = jwt_server(tmp_path, CACHE_S)
    try:
        short = token(1.5)
        async with (
            ws(server, short) as socket,
            sse(server, short) as events,
            ws(server, token(60)) as unaffected,
        ):
            await socket.subscribe()
            await unaffected.subscribe()
            expired = (1008, "credential ended: invalid token: expired")
            assert await socket.closed() == expired
            assert await ended(events) == dict(zip(("code", "reason"), expired, strict=True))
            await unaffected.send(type="ping")
            await unaffected.expect("pong")
    finally:
        server.stop()


async def test_every_rpc_checks_the_credential_again(tmp_path: Path) -> None:
    """With a 30 s cache only the ``rpc`` itself can notice the expiry in time."""
    server = jwt_server(tmp_path, "30")
    try:
        short = token(1.5)
        expires = jwt.decode(short, options={"verify_signature": False})["exp"]
        async with ws(server, short) as socket, api(server, token(60)) as http:
            await socket.send(type="rpc", id=1, method="task.create", params=task("ex-1"))
            assert (await socket.expect("rpc_result"))["result"]["task_id"] == "ex-1"
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.1)
            await socket.send(type="rpc", id=2, method="task.create", params=task("ex-2"))
            assert await socket.closed() == (1008, "credential ended: invalid token: expired")
            assert (await rpc(http, "task.get", {"task_id": "ex-1"}))["task_id"] == "ex-1"
            with pytest.raises(RpcError) as missing:
                await rpc(http, "task.get", {"task_id": "ex-2"})
            assert missing.value.code == -32002
    finally:
        server.stop()


def task(task_id: str) -> dict[str, Any]:
    return task_definition(task_id, NOBODY)
