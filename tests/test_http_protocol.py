"""The gateway's HTTP protocol: uvicorn's behaviour on the wire, less work per request.

uvicorn's own protocol runs beside it on the same requests, through a transport
that records every write, so each claim is checked against what uvicorn would
have done. The real servers in test_server.py and tests/realtime run on it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agentcore.http_server import GatewayHttpProtocol
from agentcore.http_server.headers import header_line, response_head
from agentcore.http_server.keepalive import SWEEPS_PER_TIMEOUT, KeepAliveSweeper
from agentcore.http_server.protocol import HEAD_TIMEOUT_S
from agentcore.http_server.shared import ServerShared
from tests.support import ServerProcess

CHUNK = 64 * 1024
BODY = b'{"status":"ok"}'


class RecordingTransport(asyncio.Transport):
    """A socket stand-in: every write kept as it came."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: Any) -> None:
        assert not self.closing, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8001), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["path"] == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for n in range(3):
            await send(
                {"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True}
            )
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/echo":
        parts = []
        while True:
            message = await receive()
            assert message["type"] == "http.request", message
            parts.append(message["body"])
            if not message["more_body"]:
                break
        body = b"|".join(parts)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", b"%d" % len(body)),
                    (b"x-path", scope["path"].encode()),
                    (b"x-query", scope["query_string"] or b"-"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/fail":
        raise RuntimeError("boom")
    if scope["path"] == "/big":
        chunk = b"x" * CHUNK
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % (3 * len(chunk)))],
            }
        )
        for n in range(3):
            await send({"type": "http.response.body", "body": chunk, "more_body": n < 2})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(BODY)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def connect(
    protocol_class: type[HttpToolsProtocol], asgi: Any = app, **options: Any
) -> tuple[HttpToolsProtocol, RecordingTransport]:
    settings: dict[str, Any] = {
        "server_header": False,
        "date_header": False,
        "access_log": False,
    } | options
    config = uvicorn.Config(
        asgi, http=protocol_class, ws="auto", lifespan="off", log_level="warning", **settings
    )
    config.load()
    state = ServerState()
    state.default_headers = list(config.encoded_headers)  # as uvicorn's Server sets them
    protocol = protocol_class(
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def feed_now(protocol: asyncio.Protocol, data: bytes) -> None:
    protocol.data_received(data)


def feed(protocol: asyncio.Protocol, data: bytes) -> None:
    """Hand ``data`` to the protocol as the event loop does: from a callback, not a task."""
    asyncio.get_running_loop().call_soon(protocol.data_received, data)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: test\r\n\r\n" % path.encode()


async def test_a_small_response_is_one_write_where_uvicorn_makes_two() -> None:
    seen = {}
    for cls in (HttpToolsProtocol, GatewayHttpProtocol):
        protocol, transport = connect(cls)
        feed(protocol, get("/"))
        await settle()
        seen[cls] = transport.writes
        protocol.connection_lost(None)

    plain, lean = seen[HttpToolsProtocol], seen[GatewayHttpProtocol]
    assert len(plain) == 2
    assert lean == [b"".join(plain)]
    assert lean[0].startswith(b"HTTP/1.1 200 OK\r\n") and lean[0].endswith(BODY)


async def test_a_websocket_upgrade_takes_uvicorns_path() -> None:
    protocol, transport = connect(GatewayHttpProtocol)
    feed(protocol, get("/"))
    await settle()
    feed(
        protocol,
        b"GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    await settle()

    ws_protocol: Any = transport.protocol
    assert ws_protocol is not None and ws_protocol is not protocol
    assert ws_protocol.transport is transport
    assert b"HTTP/1.1 101 " in b"".join(transport.writes)


ODD_REQUESTS = [
    # streamed (chunked) response, a long body in several sends, a failing app
    get("/stream"),
    get("/big"),
    get("/fail"),
    # a query and escapes take httptools.parse_url, as uvicorn does
    get("/echo?a=1&b=%20"),
    get("/ech%6F"),
    b"GET http://test/echo?x=1 HTTP/1.1\r\nhost: test\r\n\r\n",
    # bodies: whole, chunked, empty
    b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
    # two pipelined requests in one read, and one asking to close
    get("/") + get("/echo?second"),
    b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    # refused by the parser
    b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", ODD_REQUESTS)
async def test_what_reaches_the_socket_is_what_uvicorn_writes(request_bytes: bytes) -> None:
    expected = await wire(HttpToolsProtocol, app, request_bytes)
    assert expected  # every case answers something
    assert await wire(GatewayHttpProtocol, app, request_bytes) == expected


async def test_a_body_arriving_in_pieces_is_waited_for() -> None:
    protocol, transport = connect(GatewayHttpProtocol)
    feed(protocol, b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhel")
    await settle()
    assert transport.writes == []  # the app waits for the rest
    feed(protocol, b"lo")
    await settle()
    feed(protocol, b"world")
    await settle()

    out = b"".join(transport.writes)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nhel|lo|world") or out.endswith(b"\r\n\r\nhel|loworld")
    assert not transport.closing


async def test_a_client_gone_mid_body_is_a_disconnect_for_the_app() -> None:
    seen: list[dict[str, Any]] = []

    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    protocol, transport = connect(GatewayHttpProtocol, reader)
    feed(protocol, b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nab")
    await settle()
    protocol.connection_lost(None)
    await settle()

    assert seen == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert transport.writes == []


async def test_after_the_body_receive_waits_for_the_end_of_the_response() -> None:
    seen: list[str] = []

    async def watcher(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()

        async def wait_end() -> None:
            seen.append((await receive())["type"])

        task = asyncio.get_running_loop().create_task(wait_end())
        await asyncio.sleep(0)
        assert not task.done()  # nothing more to receive until the response ends
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await task

    protocol, transport = connect(GatewayHttpProtocol, watcher)
    feed(protocol, get("/"))
    await settle()

    assert seen == ["http.disconnect"]
    assert b"".join(transport.writes) == b"HTTP/1.1 204 No Content\r\n\r\n"


async def test_idle_connections_close_after_the_keep_alive_timeout() -> None:
    gate = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await gate.wait()
        await app(scope, receive, send)

    idle, idle_transport = connect(GatewayHttpProtocol, slow)
    busy, busy_transport = connect(GatewayHttpProtocol, slow)
    assert idle.server_state is not busy.server_state  # connect() makes one server each
    busy.server_state = idle.server_state
    idle.server_state.connections.update({idle, busy})
    loop = asyncio.get_running_loop()
    sweeper = ServerShared.of(loop, idle.server_state, 5.0, HEAD_TIMEOUT_S).sweeper
    assert sweeper.interval_s == 5.0 / SWEEPS_PER_TIMEOUT

    feed(idle, get("/"))
    feed(busy, get("/slow"))
    await settle()
    for _ in range(SWEEPS_PER_TIMEOUT):  # the first sweep only clears "seen"
        sweeper.sweep()
    assert not idle_transport.closing and not busy_transport.closing
    sweeper.sweep()  # one timeout without a request
    assert idle_transport.closing
    assert not busy_transport.closing  # still answering: never idle

    gate.set()
    await settle()
    assert b"".join(busy_transport.writes).endswith(BODY)
    for _ in range(SWEEPS_PER_TIMEOUT + 1):
        sweeper.sweep()
    assert busy_transport.closing


async def test_the_sweeper_stops_with_the_last_connection() -> None:
    protocol, _ = connect(GatewayHttpProtocol)
    state = protocol.server_state
    loop = asyncio.get_running_loop()
    shared = ServerShared.of(loop, state, 5.0, HEAD_TIMEOUT_S)
    assert ServerShared.of(loop, state, 5.0, HEAD_TIMEOUT_S) is shared  # one per server
    sweeper = shared.sweeper
    assert sweeper._handle is not None  # armed by the connection
    sweeper.sweep()
    assert sweeper._handle is not None
    protocol.connection_lost(None)
    sweeper.sweep()
    assert sweeper._handle is None


# -- the fast head: byte for byte what uvicorn writes ---------------------------

HEADS: list[list[tuple[bytes, bytes]]] = [
    [(b"content-type", b"application/json"), (b"content-length", b"15")],
    [
        (b"content-length", b"15"),
        (b"x-content-type-options", b"nosniff"),
        (b"ratelimit-policy", b'"control";q=200000;w=2'),
        (b"ratelimit", b'"control";r=1;t=1'),
    ],
    [(b"Content-Type", b"application/json"), (b"X-Mixed-Case", b"Yes"), (b"content-length", b"15")],
    [(b"content-type", b"application/json")],  # no length: chunked
    [(b"content-length", b"15"), (b"content-length", b"15")],
    [(b"content-length", b"+15")],
    [(b"Content-Length", b"15"), (b"connection", b"close")],
    [(b"content-length", b"15"), (b"transfer-encoding", b"chunked")],
    [(b"content-length", b"15"), (b"x-tab", b"a\tb c")],
    [(b"content-length", b"15"), (b"x-bad", b"a\r\nx-injected: 1")],
    [(b"content-length", b"15"), (b"bad name", b"v")],
    [(b"content-length", b"15"), (b"x-empty", b"")],
]


def head_app(headers: list[tuple[bytes, bytes]], status: int = 200) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": BODY})

    return asgi


async def wire(cls: type[HttpToolsProtocol], asgi: Any, request: bytes, **options: Any) -> bytes:
    protocol, transport = connect(cls, asgi, **options)
    feed(protocol, request)
    await settle()
    protocol.connection_lost(None)
    return b"".join(transport.writes)


@pytest.mark.parametrize("headers", HEADS)
@pytest.mark.parametrize("status", [200, 201, 404, 429, 599])
async def test_response_heads_are_what_uvicorn_writes(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    asgi = head_app(headers, status)
    for request in (get("/"), b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"):
        expected = await wire(HttpToolsProtocol, asgi, request)
        assert await wire(GatewayHttpProtocol, asgi, request) == expected
        # uvicorn refuses a bad header (the app's send raises, nothing is written).
        refused = headers in (HEADS[9], HEADS[10])
        assert expected.startswith(b"HTTP/1.1 ") != refused


async def test_default_headers_and_access_log_match_uvicorn_too() -> None:
    asgi = head_app(HEADS[1])
    for options in ({"server_header": True}, {"access_log": True}):
        expected = await wire(HttpToolsProtocol, asgi, get("/"), **options)
        assert await wire(GatewayHttpProtocol, asgi, get("/"), **options) == expected
    assert b"server: uvicorn\r\n" in await wire(
        GatewayHttpProtocol, asgi, get("/"), server_header=True
    )


def test_header_lines_are_checked_once_and_refused_where_uvicorn_refuses() -> None:
    assert header_line(b"X-Frame-Options", b"DENY") == b"x-frame-options: DENY\r\n"
    assert header_line(b"x", b"a\nb") is None
    assert header_line(b"x y", b"v") is None
    assert header_line(b"Connection", b"close") is None
    before = header_line.cache_info().hits
    header_line(b"X-Frame-Options", b"DENY")
    assert header_line.cache_info().hits == before + 1


def test_response_head_needs_exactly_one_numeric_length() -> None:
    lines: dict[tuple[bytes, bytes], bytes] = {}
    found = response_head(200, [(b"content-length", b"2"), (b"x-a", b"b")], lines)
    assert found == (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\n", 2)
    assert lines == {(b"x-a", b"b"): b"x-a: b\r\n"}  # lengths vary: never remembered
    assert response_head(200, [(b"content-length", b"3"), (b"x-a", b"b")], lines) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: b\r\n\r\n",
        3,
    )
    assert response_head(200, [(b"x-a", b"b")], lines) is None
    assert response_head(200, [(b"content-length", b"2")] * 2, lines) is None
    assert response_head(200, [(b"content-length", b"-2")], lines) is None
    assert response_head(99, [(b"content-length", b"2")], lines) is None
    assert response_head(200, [[b"content-length", b"2"]], lines) is None  # type: ignore[list-item]
    assert response_head(200, [(b"content-length", b"2"), (b"bad name", b"v")], lines) is None
    assert len(lines) == 1


async def test_the_server_holds_the_apps_task_until_it_ends() -> None:
    gate = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await gate.wait()
        await app(scope, receive, send)

    protocol, transport = connect(GatewayHttpProtocol, slow)
    feed(protocol, get("/"))
    await settle()
    assert len(protocol.tasks) == 1  # uvicorn's shutdown waits for these
    (task,) = protocol.tasks

    gate.set()
    await settle()
    assert task.done() and protocol.tasks == set()
    assert b"".join(transport.writes).endswith(BODY)


# -- eager start: the app's first step runs inside data_received ----------------

REQUEST_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("request_path")


async def test_an_app_that_waits_for_nothing_is_done_before_data_received_returns() -> None:
    protocol, transport = connect(GatewayHttpProtocol)
    seen: list[tuple[int, int, int]] = []

    def deliver() -> None:  # as the event loop calls a protocol
        feed_now(protocol, get("/"))
        feed_now(protocol, get("/"))
        # Both answered, no task needed; written together after this turn.
        seen.append(
            (len(protocol.tasks), len(transport.writes), protocol.server_state.total_requests)
        )

    asyncio.get_running_loop().call_soon(deliver)
    await settle()

    assert seen == [(0, 0, 2)]
    assert len(transport.writes) == 1 and transport.writes[0].count(BODY) == 2


async def test_answers_go_out_before_a_refusal_that_follows_them() -> None:
    protocol, transport = connect(GatewayHttpProtocol)

    def deliver() -> None:  # an answered request, then garbage, in one loop turn
        feed_now(protocol, get("/"))
        feed_now(protocol, b"GET / HTTP/1.1\r\nbad header\r\n\r\n")

    asyncio.get_running_loop().call_soon(deliver)
    await settle()

    out = b"".join(transport.writes)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.index(BODY) < out.index(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.closing


async def test_an_app_that_waits_goes_on_as_a_task_cancellable_through_current_task() -> None:
    seen: dict[str, Any] = {}

    async def waiting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["current"] = asyncio.current_task()  # kept, as deadlines keep it
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen["cancelling"] = seen["current"].cancelling()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})

    protocol, transport = connect(GatewayHttpProtocol, waiting)
    feed(protocol, get("/"))
    await settle()
    assert len(protocol.tasks) == 1 and transport.writes == []

    # Whatever else is asked of the kept current task is the continuing task's.
    (task,) = protocol.tasks
    assert seen["current"].get_coro() is task.get_coro()
    assert seen["current"].done() is False
    assert seen["current"].cancel() is True
    await settle()

    assert seen["cancelling"] == 1
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 503 ")
    assert protocol.tasks == set()


async def test_a_timeout_entered_before_the_first_wait_still_fires() -> None:
    async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
            status = 200
        except TimeoutError:
            status = 504
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = connect(GatewayHttpProtocol, timed)
    feed(protocol, get("/"))
    await asyncio.sleep(0.1)
    await settle()

    assert b"".join(transport.writes).startswith(b"HTTP/1.1 504 ")


async def test_context_set_by_one_request_is_not_seen_by_the_next() -> None:
    seen: list[str | None] = []

    async def remembering(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(REQUEST_PATH.get(None))
        REQUEST_PATH.set(scope["path"])
        await app(scope, receive, send)

    protocol, transport = connect(GatewayHttpProtocol, remembering)

    def deliver() -> None:  # two requests, one after the other, in one callback
        protocol.data_received(get("/a"))
        protocol.data_received(get("/b"))

    asyncio.get_running_loop().call_soon(deliver)
    await settle()

    assert seen == [None, None]
    assert b"".join(transport.writes).count(BODY) == 2


# -- request heads: bounded in size, header count and time ------------------------


def limited(
    max_head_bytes: int = 1024, max_headers: int = 100
) -> tuple[GatewayHttpProtocol, RecordingTransport]:
    protocol, transport = connect(GatewayHttpProtocol)
    assert isinstance(protocol, GatewayHttpProtocol)
    protocol.max_head_bytes = max_head_bytes
    protocol.max_headers = max_headers
    return protocol, transport


def refusal_of(transport: RecordingTransport) -> tuple[int, dict[str, Any]]:
    """The status and JSON error of the one answer written, the connection closed."""
    assert transport.closing
    head, _, body = b"".join(transport.writes).partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head and b"connection: close" in head
    return int(head.split()[1]), json.loads(body)["error"]


async def test_a_head_past_the_size_limit_is_refused_as_it_arrives() -> None:
    protocol, transport = limited(max_head_bytes=1024)
    feed_now(protocol, b"GET / HTTP/1.1\r\nhost: t\r\nx-big: ")  # 31 bytes
    for _ in range(2):  # one header line that never ends, 400 bytes a read
        feed_now(protocol, b"a" * 400)
    assert not transport.closing  # 831 bytes
    feed_now(protocol, b"a" * 400)  # 1,231: past the limit, still inside the line

    status, error = refusal_of(transport)
    assert status == 431
    assert error["type"] == "headers_too_large" and "1024 bytes" in error["message"]
    feed_now(protocol, b"a" * 100_000)  # what still comes is dropped unparsed
    assert len(transport.writes) == 1


async def test_a_whole_head_past_the_limit_in_one_read_is_refused_too() -> None:
    protocol, transport = limited(max_head_bytes=1024)
    feed_now(protocol, b"GET / HTTP/1.1\r\nhost: t\r\nx-big: %b\r\n\r\n" % (b"a" * 1100))
    assert refusal_of(transport)[0] == 431


async def test_heads_within_the_limit_pass_with_any_body_and_pipelining() -> None:
    protocol, transport = limited(max_head_bytes=1024)
    body = b"x" * 5000  # a large read, but the head in it is small
    post = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n" + body
    near = b"GET / HTTP/1.1\r\nhost: t\r\nx-pad: %b\r\n\r\n" % (b"a" * 950)
    feed(protocol, post + near)  # pipelined in one read
    await settle()
    feed(protocol, near[:500])  # one head in two reads
    feed(protocol, near[500:])
    await settle()
    written = b"".join(transport.writes)
    assert written.count(b"HTTP/1.1 200 OK") == 3 and body in written
    assert not transport.closing


async def test_more_headers_than_the_limit_are_refused() -> None:
    ok, ok_transport = limited(max_headers=5)
    feed(ok, b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: v\r\n" % n for n in range(5)) + b"\r\n")
    await settle()
    assert b"".join(ok_transport.writes).endswith(BODY)

    protocol, transport = limited(max_headers=5)
    feed_now(
        protocol, b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: v\r\n" % n for n in range(6)) + b"\r\n"
    )
    status, error = refusal_of(transport)
    assert status == 431 and "more than 5 headers" in error["message"]


async def test_a_head_not_complete_within_the_head_timeout_is_refused() -> None:
    protocol, transport = connect(GatewayHttpProtocol)
    idle, idle_transport = connect(GatewayHttpProtocol)
    assert isinstance(protocol, GatewayHttpProtocol) and isinstance(idle, GatewayHttpProtocol)
    idle.server_state = protocol.server_state
    protocol.server_state.connections.update({protocol, idle})
    sweeper = KeepAliveSweeper(asyncio.get_running_loop(), protocol.server_state, 5.0, 2.0)
    protocol._sweeper = idle._sweeper = sweeper  # one server, a 2 s head timeout
    protocol.head_timeout_s = 2.0
    assert sweeper.interval_s == 0.5 and sweeper.head_sweeps == 4 and sweeper.idle_sweeps == 10

    feed_now(protocol, b"GET / HTTP/1.1\r\n")
    for _ in range(4):  # a header line every sweep: the connection is never idle
        sweeper.sweep()
        feed_now(protocol, b"x-slow: 1\r\n")
    assert not transport.closing
    sweeper.sweep()  # more than 2 s since the head began

    status, error = refusal_of(transport)
    assert status == 408 and error["type"] == "request_timeout"
    assert "2 s" in error["message"]
    assert not idle_transport.closing  # no head under way: only the keep-alive applies


# -- request heads on a real server -------------------------------------------------

HEALTH_HEAD = b"GET /api/v1/health HTTP/1.1\r\nhost: 127.0.0.1\r\n"


def answer(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """The status and body of what the server writes until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the server takes before it stops reading (it may close midway)."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(data)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.server
def test_a_real_server_refuses_large_many_and_slow_heads(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"AGENTCORE_SERVER__HEAD_TIMEOUT_S": "1"}).start()
    address = ("127.0.0.1", server.port)

    with socket.create_connection(address) as sock:  # within the limits: served
        send_all(sock, HEALTH_HEAD + b"x-pad: %b\r\nconnection: close\r\n\r\n" % (b"a" * 60_000))
        assert answer(sock)[0] == 200

    with socket.create_connection(address) as sock:
        send_all(sock, HEALTH_HEAD + b"x-big: %b\r\n\r\n" % (b"a" * 1_048_576))
        status, body = answer(sock)  # and then the end: the connection is closed
        assert status == 431
        assert json.loads(body)["error"]["message"] == "request head above 65536 bytes"

    with socket.create_connection(address) as sock:
        send_all(sock, HEALTH_HEAD + b"".join(b"x-%d: v\r\n" % n for n in range(10_000)) + b"\r\n")
        assert answer(sock)[0] == 431

    with socket.create_connection(address) as sock:  # one header line every 0.3 s
        started = time.monotonic()
        sock.sendall(HEALTH_HEAD)
        for n in range(20):
            time.sleep(0.3)
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % n)
            except (ConnectionResetError, BrokenPipeError):
                break
            if select.select([sock], [], [], 0)[0]:
                break
        status, body = answer(sock)
        elapsed = time.monotonic() - started
        assert status == 408 and json.loads(body)["error"]["type"] == "request_timeout"
        assert 1.0 <= elapsed < 2.5  # the deadline, within a sweep (0.25 s) and the pacing

    assert httpx.get(f"{server.url}/api/v1/health").status_code == 200


@pytest.mark.server
def test_a_60_mb_header_line_is_cut_off_not_buffered(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory().start()
    assert server.proc is not None
    before = rss_bytes(server.proc.pid)
    line = HEALTH_HEAD + b"x-huge: " + b"a" * (60 * 1024 * 1024)

    def attack() -> int:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            send_all(sock, line)
            return answer(sock, timeout=30)[0]

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: attack(), range(3)))

    assert statuses == [431, 431, 431]
    grown = rss_bytes(server.proc.pid) - before
    assert grown < 20 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"


@pytest.mark.server
def test_granian_is_given_the_head_limits(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(
        "--server", "granian", env={"AGENTCORE_SERVER__HEAD_TIMEOUT_S": "1"}
    ).start()
    address = ("127.0.0.1", server.port)

    with socket.create_connection(address) as sock:  # above 64 KiB, below Granian's 408 KB
        send_all(sock, HEALTH_HEAD + b"x-big: %b\r\n\r\n" % (b"a" * 70_000))
        assert answer(sock)[0] == 431  # hyper's own answer: no body

    with socket.create_connection(address) as sock:  # hyper closes, without an answer
        started = time.monotonic()
        sock.sendall(HEALTH_HEAD)
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for n in range(20):
                time.sleep(0.3)
                sock.sendall(b"x-slow-%d: 1\r\n" % n)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 3.0  # Granian's default is 30 s
