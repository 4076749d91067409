"""The WebSocket stream over real sockets: ``agentcore serve`` and the ``websockets`` client.

Most tests share one server per configuration (module fixtures) and use
their own agent and task ids; a test that kills, restarts or floods a server
starts its own. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentcore.cli import main as cli
from tests.support import ServerProcess, agent_card, free_port, rpc

pytestmark = pytest.mark.server

ServerFactory = Callable[..., ServerProcess]
WS = "/api/v1/ws/events"
WAIT_S = 5.0
#: A capability no agent has: the task stays pending (no task.assigned event).
NOBODY = "nobody-has-this"


def start(directory: Path, *args: str, **env: str) -> ServerProcess:
    """A gateway on a free port with ``AGENTCORE_*`` settings from ``env`` only."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
    full_env.update(env)
    directory.mkdir(parents=True, exist_ok=True)
    return ServerProcess(
        ["--data-dir", str(directory / "data"), "--log-level", "warning", *args],
        free_port(),
        full_env,
        directory / "server.log",
    ).start()


def create_key(data: Path, tenant: str, *extra: str) -> str:
    """``agentcore keys create`` before the server starts; returns the key."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert cli(["keys", "create", "--tenant", tenant, *extra, "--data-dir", str(data)]) == 0
    return next(line.split()[1] for line in out.getvalue().splitlines() if line.startswith("key:"))


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}{WS}"


class Client:
    """A ``websockets`` connection speaking the gateway protocol; answers server pings."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, **message: Any) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self, wait_s: float = WAIT_S) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), wait_s))
            if message["type"] != "ping":
                return message
            await self.send(type="pong")

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await self.recv()
        assert message["type"] == kind, message
        return message

    async def subscribe(self, **fields: Any) -> dict[str, Any]:
        await self.send(type="subscribe", **fields)
        return await self.expect("subscribed")

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.expect("event") for _ in range(count)]

    async def quiet(self, seconds: float = 0.3) -> None:
        """Nothing but keepalive arrives for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            message = await self.recv(wait_s=seconds)
            raise AssertionError(f"unexpected message {message}")

    async def closed(self) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                while True:
                    await self.conn.recv()
        assert self.conn.protocol.close_rcvd is not None, "closed without a close frame"
        return self.conn.protocol.close_rcvd.code, self.conn.protocol.close_rcvd.reason


@contextlib.asynccontextmanager
async def ws(
    server: ServerProcess,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    if key is not None:
        headers = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with connect(
        ws_url(server),
        additional_headers=headers,
        compression=None,
        ping_interval=None,
        open_timeout=WAIT_S,
        close_timeout=2,
        max_size=None,
        **options,
    ) as conn:
        yield Client(conn)


def http(server: ServerProcess, key: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=WAIT_S * 2)


def task_definition(task_id: str, *capabilities: str, **extra: Any) -> dict[str, Any]:
    return {
        "task_definition": {
            "task_id": task_id,
            "type": "summary",
            "required_capabilities": list(capabilities),
            **extra,
        }
    }


# -- one server, authentication off ----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start(
        tmp_path_factory.mktemp("ws"),
        AGENTCORE_REALTIME__MAX_MESSAGE_BYTES="4096",
        AGENTCORE_REALTIME__CLIENT_MESSAGES_PER_S="5",
        AGENTCORE_REALTIME__CLIENT_MESSAGES_BURST="20",
    )
    yield process
    process.stop()


async def test_events_caused_by_jsonrpc_calls_arrive_in_order(server: ServerProcess) -> None:
    async with ws(server) as client, http(server) as api:
        subscribed = await client.subscribe(id=1, topics=["agent.registered", "task.*"])
        assert subscribed["id"] == 1 and subscribed["subscription"] == "s1"
        head = subscribed["head"]
        await rpc(api, "agent.register", {"agent_card": agent_card("ev-a1", "ev-cap")})
        await rpc(api, "task.create", task_definition("ev-t1", "ev-cap"))

        events = await client.events(3)
        assert [e["id"] for e in events] == [head + 1, head + 2, head + 3]
        assert [e["event_type"] for e in events] == [
            "agent.registered",
            "task.created",
            "task.assigned",
        ]
        registered, created, assigned = events
        assert registered["data"] == {
            "agent_id": "ev-a1",
            "name": "ev-a1",
            "capabilities": ["ev-cap"],
        }
        assert created["data"]["task_id"] == "ev-t1" and created["data"]["status"] == "pending"
        assert assigned["data"] == {"task_id": "ev-t1", "status": "assigned", "agent_id": "ev-a1"}
        assert all(e["subscription"] == "s1" and e["timestamp"] > 0 for e in events)
        assert "task" not in assigned  # the task body goes to the agent's own subscription
        await client.quiet()


async def test_topic_patterns_and_task_and_agent_filters(server: ServerProcess) -> None:
    async with ws(server) as client, http(server) as api:
        assigned = (await client.subscribe(topics=["task.assigned"]))["subscription"]
        one_task = (await client.subscribe(task_id="f-t1"))["subscription"]
        one_agent = (await client.subscribe(agent_id="f-a1", topics=["agent.*"]))["subscription"]
        await rpc(api, "agent.register", {"agent_card": agent_card("f-a1", "f-cap")})
        await rpc(api, "task.create", task_definition("f-t1", "f-cap"))
        await rpc(api, "task.create", task_definition("f-t2", "f-cap"))

        by_subscription: dict[str, list[tuple[str, str]]] = {}
        for event in await client.events(5):
            name = event["data"].get("task_id") or event["data"]["agent_id"]
            by_subscription.setdefault(event["subscription"], []).append(
                (event["event_type"], name)
            )
        assert by_subscription == {
            assigned: [("task.assigned", "f-t1"), ("task.assigned", "f-t2")],
            one_task: [("task.created", "f-t1"), ("task.assigned", "f-t1")],
            one_agent: [("agent.registered", "f-a1")],
        }
        await client.quiet()


async def test_unsubscribe_and_ping(server: ServerProcess) -> None:
    async with ws(server) as client, http(server) as api:
        first = (await client.subscribe(topics=["task.created"]))["subscription"]
        second = (await client.subscribe(topics=["task.*"]))["subscription"]
        await client.send(type="unsubscribe", subscription=first, id="u1")
        assert await client.expect("unsubscribed") == {
            "type": "unsubscribed",
            "id": "u1",
            "subscriptions": [first],
        }
        await rpc(api, "task.create", task_definition("u-t1", NOBODY))
        assert [e["subscription"] for e in await client.events(1)] == [second]
        await client.send(type="unsubscribe", id="all")
        assert (await client.expect("unsubscribed"))["subscriptions"] == [second]
        await rpc(api, "task.create", task_definition("u-t2", NOBODY))
        await client.send(type="ping", id=9)
        assert await client.expect("pong") == {"type": "pong", "id": 9}
        await client.quiet()


async def test_bad_messages_get_errors_and_the_connection_stays(server: ServerProcess) -> None:
    async with ws(server) as client:
        await client.conn.send("{not json")
        assert (await client.expect("error"))["error"]["code"] == -32700
        await client.send(type="shout", id=3)
        error = await client.expect("error")
        assert error["id"] == 3 and error["error"]["code"] == -32600
        assert "expected one of" in error["error"]["message"]
        await client.send(type="subscribe", topic=["task.*"], id=4)
        assert "topic" in (await client.expect("error"))["error"]["message"]
        await client.send(type="subscribe", since=-1)
        assert "since" in (await client.expect("error"))["error"]["message"]
        await client.conn.send(b"\x00binary")
        assert "binary" in (await client.expect("error"))["error"]["message"]
        await client.send(type="rpc", id=5, method="task.get", params={"task_id": "nope"})
        assert (await client.expect("rpc_error"))["error"]["code"] == -32002
        await client.send(type="ping")
        await client.expect("pong")


async def test_a_cursor_beyond_64_bits_is_an_error_and_the_connection_stays(
    server: ServerProcess,
) -> None:
    """Event ids are 64-bit: a larger ``since`` is refused as the message's error, not
    answered ``subscribed`` and then dropped without a close frame by the store."""
    async with ws(server) as client:
        for since in (2**63, 99999999999999999999999, -1):
            await client.send(type="subscribe", since=since, id="big")
            error = await client.expect("error")
            assert error["id"] == "big" and error["error"]["code"] == -32600, error
            assert "since" in error["error"]["message"]
        await client.send(type="ping", id=1)
        assert (await client.expect("pong"))["id"] == 1
        largest = await client.subscribe(since=2**63 - 1)  # the largest id is a cursor
        assert largest["since"] == 2**63 - 1
        await client.quiet()


@pytest.mark.parametrize("asgi_server", ["granian", "uvicorn"])
async def test_an_oversize_message_is_closed_with_1009(tmp_path: Path, asgi_server: str) -> None:
    server = start(tmp_path, "--server", asgi_server, AGENTCORE_REALTIME__MAX_MESSAGE_BYTES="4096")
    try:
        for oversize in (json.dumps({"type": "ping", "padding": "x" * 5000}), b"\x00" * 5000):
            async with ws(server) as client:
                await client.send(type="ping", padding="x" * 4000)  # within the limit:
                await client.expect("error")  # answered (an unknown field), not closed
                await client.conn.send(oversize)
                assert (await client.closed())[0] == 1009
    finally:
        server.stop()


async def test_flooding_gets_errors_then_1008(server: ServerProcess) -> None:
    async with ws(server) as client:
        for _ in range(60):
            await client.send(type="ping")
        kinds: list[str] = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                while True:
                    message = json.loads(await client.conn.recv())
                    kinds.append(message["type"])
                    if message["type"] == "error":
                        assert message["error"]["code"] == -32029
        assert kinds.count("pong") >= 20 and "error" in kinds
        assert client.conn.protocol.close_rcvd is not None
        assert client.conn.protocol.close_rcvd.code == 1008
        assert "rate limit" in client.conn.protocol.close_rcvd.reason


async def test_metrics_count_connections_up_and_down(server: ServerProcess) -> None:
    async def gauges(api: httpx.AsyncClient) -> tuple[float, float]:
        text = (await api.get("/metrics")).text
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("agentcore_stream_")
        }
        return (
            values['agentcore_stream_connections{transport="websocket"}'],
            values["agentcore_stream_subscriptions"],
        )

    async with http(server) as api:
        before = await gauges(api)
        async with ws(server) as a, ws(server) as b, ws(server) as c:
            for client in (a, b, c):
                await client.subscribe()
            assert await gauges(api) == (before[0] + 3, before[1] + 3)
        for _ in range(100):  # the server sees the closes within moments
            if await gauges(api) == before:
                break
            await asyncio.sleep(0.05)
        assert await gauges(api) == before
        text = (await api.get("/metrics")).text
        assert "agentcore_stream_events_sent_total" in text
        assert "agentcore_stream_publish_to_send_seconds_bucket" in text


# -- Origin: which web pages may open a socket -------------------------------------------


async def handshake(server: ServerProcess, **headers: str) -> int:
    """The HTTP status of a WebSocket handshake with ``headers``: 101, or the refusal."""
    try:
        async with ws(server, headers=headers) as client:
            await client.send(type="ping")
            await client.expect("pong")
    except InvalidStatus as refused:
        return refused.response.status_code
    return 101


@pytest.mark.parametrize("asgi_server", ["granian", "uvicorn"])
async def test_a_page_from_another_origin_cannot_open_a_socket(
    tmp_path: Path, asgi_server: str
) -> None:
    """Authentication is off on loopback by default, so the handshake's ``Origin`` is
    what keeps a page the operator visits from replaying every event (refused
    before accept: 403). Clients that send no ``Origin`` are not browsers."""
    server = start(
        tmp_path,
        "--server",
        asgi_server,
        AGENTCORE_SERVER__CORS_ALLOW_ORIGINS='["https://app.example.com"]',
    )
    own = f"http://127.0.0.1:{server.port}"
    try:
        assert await handshake(server) == 101
        assert await handshake(server, Origin=own) == 101
        assert await handshake(server, Origin="https://app.example.com") == 101  # configured
        for origin in (
            "https://evil.example",
            "null",  # sandboxed frames, file:// pages
            f"https://127.0.0.1:{server.port}",  # another scheme is another origin
            f"http://127.0.0.1:{server.port + 1}",
            f"http://localhost:{server.port}",  # another name is another origin
            "http://app.example.com",
            f"{own}.evil.example",
        ):
            assert await handshake(server, Origin=origin) == 403, origin
    finally:
        server.stop()


async def test_the_origin_a_trusted_proxy_forwarded_is_the_sockets_own(tmp_path: Path) -> None:
    """Behind a TLS proxy the page's origin is the proxy's public one; the
    proxy's X-Forwarded-Proto and -Host are believed only from a trusted proxy."""
    trusting = start(tmp_path / "trusting", AGENTCORE_SERVER__TRUSTED_PROXIES='["127.0.0.1"]')
    other = start(tmp_path / "other")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    try:
        assert await handshake(trusting, Origin="https://gw.example.com", **forwarded) == 101
        assert await handshake(trusting, Origin="http://gw.example.com", **forwarded) == 403
        assert await handshake(other, Origin="https://gw.example.com", **forwarded) == 403
        own = f"http://127.0.0.1:{other.port}"
        assert await handshake(other, Origin=own, **forwarded) == 101
    finally:
        trusting.stop()
        other.stop()


# -- one server with API keys ------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    directory = tmp_path_factory.mktemp("ws-auth")
    data = directory / "data"
    keys = {
        "acme": create_key(data, "acme"),
        "globex": create_key(data, "globex"),
        "bot": create_key(data, "acme", "--agent-id", "bot-1"),
        "no-events": create_key(data, "acme", "--scope", "tasks:write"),
    }
    process = start(
        directory, AGENTCORE_AUTH__MODE="api_key", AGENTCORE_REALTIME__AUTH_TIMEOUT_S="0.5"
    )
    yield process, keys
    process.stop()


async def test_header_and_first_message_authentication(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    async with ws(server, keys["acme"]) as client:
        assert (await client.subscribe())["topics"] == ["*"]
    async with ws(server, headers={"X-API-Key": keys["globex"]}) as client:
        await client.subscribe()
    async with ws(server) as client:
        await client.send(type="auth", token=keys["acme"], id="a")
        authenticated = await client.expect("authenticated")
        assert (authenticated["id"], authenticated["tenant"]) == ("a", "acme")
        await client.subscribe()
    async with ws(server) as client:
        await client.send(type="auth", token="ak_bogus_bogus")
        assert (await client.closed())[0] == 1008
    async with ws(server) as client:
        await client.send(type="subscribe")  # before authenticating
        code, reason = await client.closed()
        assert code == 1008 and "authenticate first" in reason
    async with ws(server) as client:
        code, reason = await client.closed()
        assert code == 1008 and "timeout" in reason
    with pytest.raises(InvalidStatus) as refused:
        async with ws(server, "ak_bogus_bogus"):
            pass
    # A close before accept: 403 from uvicorn and Granian alike.
    assert refused.value.response.status_code == 403
    async with ws(server, keys["no-events"]) as client:
        await client.send(type="subscribe", id=1)
        assert (await client.expect("error"))["error"]["code"] == -32007


async def test_a_tenant_only_ever_sees_its_own_events(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    async with (
        ws(server, keys["acme"]) as acme,
        ws(server, keys["globex"]) as globex,
        http(server, keys["acme"]) as acme_api,
        http(server, keys["globex"]) as globex_api,
    ):
        await acme.subscribe(topics=["agent.*", "task.*"])
        await globex.subscribe(topics=["agent.*", "task.*"])
        spy = (await globex.subscribe(task_id="t-acme"))["subscription"]  # acme's task id
        await rpc(acme_api, "agent.register", {"agent_card": agent_card("t-a1", "t-cap")})
        await rpc(acme_api, "task.create", task_definition("t-acme", NOBODY))
        await rpc(globex_api, "task.create", task_definition("t-globex", NOBODY))

        seen = [(e["event_type"], e["data"].get("task_id")) for e in await acme.events(2)]
        assert seen == [("agent.registered", None), ("task.created", "t-acme")]
        theirs = await globex.events(1)
        assert (theirs[0]["data"]["task_id"], theirs[0]["subscription"]) == ("t-globex", "s1")
        assert spy != theirs[0]["subscription"]
        await acme.quiet()
        await globex.quiet()


async def test_push_dispatch_and_progress_over_the_socket(
    keyed: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, keys = keyed
    async with ws(server) as bot, http(server, keys["acme"]) as api:
        await bot.send(type="auth", token=keys["bot"])
        assert (await bot.expect("authenticated"))["agent_id"] == "bot-1"
        await bot.send(type="subscribe", agent_id="someone-else", id="x")
        assert (await bot.expect("error"))["error"]["code"] == -32007
        subscribed = await bot.subscribe(topics=["task.*"])  # pinned to its own agent
        assert subscribed["agent_id"] == "bot-1"
        await bot.send(
            type="rpc",
            id=1,
            method="agent.register",
            params={"agent_card": agent_card("bot-1", "d")},
        )
        assert (await bot.expect("rpc_result"))["result"]["agent_id"] == "bot-1"

        params = {"document": "report.pdf", "pages": [1, 2]}
        await rpc(api, "task.create", task_definition("d-t1", "d", parameters=params))
        assigned = await bot.expect("event")
        assert assigned["event_type"] == "task.assigned"
        assert assigned["task"]["task_id"] == "d-t1"
        assert assigned["task"]["parameters"] == params

        await bot.send(type="rpc", id=2, method="task.start", params={"task_id": "d-t1"})
        await bot.send(
            type="rpc", id=3, method="task.update", params={"task_id": "d-t1", "progress": 50}
        )
        replies: dict[int, dict[str, Any]] = {}
        events: list[str] = []
        while len(replies) < 2 or len(events) < 2:
            message = await bot.recv()
            if message["type"] == "event":
                events.append(message["event_type"])
            else:
                assert message["type"] == "rpc_result", message
                replies[message["id"]] = message["result"]
        assert replies[2]["status"] == "running" and replies[3]["progress"] == 50
        assert events == ["task.started", "task.progress"]

        await rpc(api, "task.create", task_definition("d-t2", NOBODY))
        await bot.send(type="rpc", id=4, method="task.start", params={"task_id": "d-t2"})
        assert (await bot.expect("rpc_error"))["error"]["code"] == -32007
        await bot.quiet()


# -- servers of their own ----------------------------------------------------------------


async def test_resume_after_a_crash_misses_nothing_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    first = start(tmp_path)
    try:
        async with ws(first) as client, http(first) as api:
            await client.subscribe(topics=["task.*"])
            for i in range(3):
                await rpc(api, "task.create", task_definition(f"r-t{i}"))
            cursor = (await client.events(3))[-1]["id"]
        async with http(first) as api:  # while the client is away
            for i in range(3, 5):
                await rpc(api, "task.create", task_definition(f"r-t{i}"))
    finally:
        assert first.signal(signal.SIGKILL) != 0

    second = start(tmp_path)
    try:
        async with http(second) as api:
            for i in range(5, 7):
                await rpc(api, "task.create", task_definition(f"r-t{i}"))
            async with ws(second) as client:
                subscribed = await client.subscribe(topics=["task.*"], since=cursor)
                assert (subscribed["since"], subscribed["truncated"]) == (cursor, False)
                missed = await client.events(4)
                assert [e["id"] for e in missed] == list(range(cursor + 1, cursor + 5))
                assert [e["data"]["task_id"] for e in missed] == [f"r-t{i}" for i in range(3, 7)]
                await client.quiet()
                await rpc(api, "task.create", task_definition("r-t7"))
                live = await client.events(1)
                assert (live[0]["id"], live[0]["data"]["task_id"]) == (cursor + 5, "r-t7")
                await client.quiet()
    finally:
        second.stop()


def big_card(agent_id: str) -> dict[str, Any]:
    """An agent card whose ``agent.registered`` event is about 28 KB."""
    return agent_card(agent_id, *(f"{'c' * 100}{i:03d}" for i in range(256)))


async def test_a_slow_consumer_is_closed_with_1013_and_others_keep_receiving(
    tmp_path: Path,
) -> None:
    server = start(tmp_path, AGENTCORE_REALTIME__SEND_QUEUE_SIZE="16")
    try:
        # A client queue of one message: the client stops reading its socket at once.
        async with ws(server, max_queue=1) as slow, ws(server) as fast:
            await slow.subscribe(topics=["agent.registered"])
            await fast.subscribe(topics=["agent.registered"])
            received = 0
            caught_up = asyncio.Event()
            sent = 0

            async def keep_reading() -> None:
                nonlocal received
                while True:
                    await fast.expect("event")
                    received += 1
                    if sent and received >= sent:
                        caught_up.set()

            reader = asyncio.create_task(keep_reading())
            async with http(server) as api, asyncio.timeout(40):
                while not await slow_consumers(api):
                    body = [
                        {
                            "jsonrpc": "2.0",
                            "id": i,
                            "method": "agent.register",
                            "params": {"agent_card": big_card("big"), "override_existing": True},
                        }
                        for i in range(10)
                    ]
                    assert (await api.post("/api/v1/jsonrpc", json=body)).status_code == 200
                    sent += 10
            if received < sent:
                await asyncio.wait_for(caught_up.wait(), WAIT_S)
            reader.cancel()
            assert received == sent  # the fast client missed nothing meanwhile

            code, reason = await slow.closed()
            assert code == 1013 and "slow consumer" in reason
    finally:
        server.stop()


async def slow_consumers(api: httpx.AsyncClient) -> float:
    for line in (await api.get("/metrics")).text.splitlines():
        if line.startswith("agentcore_stream_slow_consumers_total"):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("asgi_server", ["granian", "uvicorn"])
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_closes_every_websocket_with_1001(
    tmp_path: Path, workers: int, asgi_server: str
) -> None:
    server = start(tmp_path, "--workers", str(workers), "--server", asgi_server)
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(ws(server)) for _ in range(4)]
            for client in clients:
                await client.subscribe()
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGTERM)
            for client in clients:
                assert await client.closed() == (1001, "server shutting down")
        assert await asyncio.to_thread(server.proc.wait, 20) == 0
    finally:
        server.stop()
