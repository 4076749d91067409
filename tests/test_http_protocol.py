"""The coalescing httptools protocol: one socket write per response, nothing else changed.

uvicorn's own protocol runs beside it on the same requests, through a transport
that records every write, so each claim is checked against what uvicorn would
have done. The real servers in test_server.py and tests/realtime run on it too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agentcore.http_protocol import (
    FLUSH_BYTES,
    CoalescingHttpToolsProtocol,
    CoalescingTransport,
    header_line,
    response_head,
)

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
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n,
                        "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/big":
        chunk = b"x" * FLUSH_BYTES
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % (3 * len(chunk)))]})
        for n in range(3):
            await send({"type": "http.response.body", "body": chunk, "more_body": n < 2})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})


def connect(
    protocol_class: type[HttpToolsProtocol], asgi: Any = app, **options: Any
) -> tuple[HttpToolsProtocol, RecordingTransport]:
    settings: dict[str, Any] = {"server_header": False, "date_header": False} | options
    config = uvicorn.Config(asgi, http=protocol_class, ws="auto", lifespan="off",
                            log_level="warning", **settings)
    config.load()
    state = ServerState()
    state.default_headers = list(config.encoded_headers)  # as uvicorn's Server sets them
    protocol = protocol_class(config=config, server_state=state,
                              app_state={}, _loop=asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: test\r\n\r\n" % path.encode()


async def test_a_small_response_is_one_write_where_uvicorn_makes_two() -> None:
    seen = {}
    for cls in (HttpToolsProtocol, CoalescingHttpToolsProtocol):
        protocol, transport = connect(cls)
        protocol.data_received(get("/"))
        await settle()
        seen[cls] = transport.writes
        protocol.connection_lost(None)

    plain, coalesced = seen[HttpToolsProtocol], seen[CoalescingHttpToolsProtocol]
    assert len(plain) == 2
    assert coalesced == [b"".join(plain)]
    assert coalesced[0].startswith(b"HTTP/1.1 200 OK\r\n") and coalesced[0].endswith(BODY)


async def test_pipelined_requests_get_every_response_in_order() -> None:
    protocol, transport = connect(CoalescingHttpToolsProtocol)
    protocol.data_received(get("/a") + get("/b") + get("/c"))
    await settle()

    wire = b"".join(transport.writes)
    assert wire.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert wire.endswith(BODY)
    # Never more writes than uvicorn's two per response.
    assert 1 <= len(transport.writes) <= 6


async def test_a_stream_reaches_the_socket_as_it_is_sent() -> None:
    protocol, transport = connect(CoalescingHttpToolsProtocol)
    protocol.data_received(get("/stream"))
    await settle()

    wire = b"".join(transport.writes)
    assert b"transfer-encoding: chunked" in wire
    for n in range(3):
        assert b"data: %d\n\n" % n in wire
    assert wire.endswith(b"0\r\n\r\n")
    # The app yields between events: each went out in its own turn, not all at the end.
    assert len(transport.writes) >= 3


async def test_a_large_body_is_written_at_once_so_backpressure_still_applies() -> None:
    protocol, transport = connect(CoalescingHttpToolsProtocol)
    protocol.data_received(get("/big"))
    # Past FLUSH_BYTES a write goes straight to the socket, inside the app's own turn:
    # the socket's buffer (and uvicorn's pause_writing) sees every chunk as it comes.
    for _ in range(5):
        await asyncio.sleep(0)
        if len(transport.writes) >= 3:
            break
    assert len(transport.writes) >= 3
    assert all(len(w) >= FLUSH_BYTES for w in transport.writes[:3])
    await settle()
    assert sum(len(w) for w in transport.writes) > 3 * FLUSH_BYTES


async def test_websocket_upgrade_hands_over_the_socket_itself() -> None:
    protocol, transport = connect(CoalescingHttpToolsProtocol)
    assert isinstance(protocol.transport, CoalescingTransport)
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    await settle()

    ws_protocol: Any = transport.protocol
    assert ws_protocol is not None and ws_protocol is not protocol
    assert ws_protocol.transport is transport
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 101 ")


async def test_close_writes_what_was_gathered_first() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"head")
    transport.write(b"body")
    assert real.writes == []
    assert transport.get_write_buffer_size() == 8

    transport.close()

    assert real.writes == [b"headbody"] and real.closing


async def test_writes_once_the_socket_is_closing_are_dropped() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"late")
    real.closing = True  # the peer went away before the next turn
    await settle()

    assert real.writes == []
    assert transport.get_write_buffer_size() == 0


async def test_abort_discards_what_was_gathered() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"never")
    transport.abort()
    await settle()

    assert real.writes == [] and real.closing


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
async def test_empty_writes_schedule_nothing(empty: Any) -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(empty)
    transport.writelines([b"a", b"b"])
    await settle()

    assert real.writes == [b"ab"]


# -- the fast head: byte for byte what uvicorn writes ---------------------------

HEADS: list[list[tuple[bytes, bytes]]] = [
    [(b"content-type", b"application/json"), (b"content-length", b"15")],
    [(b"content-length", b"15"), (b"x-content-type-options", b"nosniff"),
     (b"ratelimit-policy", b'"control";q=200000;w=2'), (b"ratelimit", b'"control";r=1;t=1')],
    [(b"Content-Type", b"application/json"), (b"X-Mixed-Case", b"Yes"),
     (b"content-length", b"15")],
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
    protocol.data_received(request)
    await settle()
    protocol.connection_lost(None)
    return b"".join(transport.writes)


@pytest.mark.parametrize("headers", HEADS)
@pytest.mark.parametrize("status", [200, 201, 404, 429, 599])
async def test_response_heads_are_what_uvicorn_writes(
    headers: list[tuple[bytes, bytes]], status: int
) -> None:
    asgi = head_app(headers, status)
    for request in (get("/"), b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n",
                    b"GET / HTTP/1.0\r\n\r\n"):
        expected = await wire(HttpToolsProtocol, asgi, request)
        assert await wire(CoalescingHttpToolsProtocol, asgi, request) == expected
        # uvicorn refuses a bad header (the app's send raises, nothing is written).
        refused = headers in (HEADS[9], HEADS[10])
        assert expected.startswith(b"HTTP/1.1 ") != refused


async def test_default_headers_and_access_log_match_uvicorn_too() -> None:
    asgi = head_app(HEADS[1])
    for options in ({"server_header": True}, {"access_log": True}):
        expected = await wire(HttpToolsProtocol, asgi, get("/"), **options)
        assert await wire(CoalescingHttpToolsProtocol, asgi, get("/"), **options) == expected
    assert b"server: uvicorn\r\n" in await wire(
        CoalescingHttpToolsProtocol, asgi, get("/"), server_header=True
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
    found = response_head(200, [(b"content-length", b"2"), (b"x-a", b"b")])
    assert found == (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\n", 2)
    assert response_head(200, [(b"x-a", b"b")]) is None
    assert response_head(200, [(b"content-length", b"2")] * 2) is None
    assert response_head(200, [(b"content-length", b"-2")]) is None
    assert response_head(99, [(b"content-length", b"2")]) is None
