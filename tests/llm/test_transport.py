"""The transport contract, written once and run over both transports: the HTTP one
against the fake provider on a loopback socket, the in-memory one calling it in-process.
Pooling and connection behaviour are checked on the HTTP transport alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentcore.errors import ProviderError, ProviderTimeout
from agentcore.llm.fake import FakeBehavior, FakeLlm, ThreadedServer
from agentcore.llm.transport.base import Endpoint, Transport, split_lines
from agentcore.llm.transport.http import HttpTransport
from agentcore.llm.transport.memory import MemoryTransport
from agentcore.types import ASGIApp, Receive, Scope, Send

Serve = Callable[..., Transport]
HEADERS = {"content-type": "application/json", "authorization": "Bearer test-key"}


def chat(prompt: str, **extra: Any) -> bytes:
    body = {"model": "fake-small", "messages": [{"role": "user", "content": prompt}], **extra}
    return json.dumps(body).encode()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture(params=["http", "memory"])
async def serve(request: pytest.FixtureRequest) -> AsyncIterator[Serve]:
    """``serve(app, **endpoint settings)`` -> a transport to ``app``."""
    transports: list[Transport] = []
    with contextlib.ExitStack() as servers:

        def make(app: ASGIApp, **settings: Any) -> Transport:
            transport: Transport
            if request.param == "http":
                url = servers.enter_context(ThreadedServer(app)).url
                transport = HttpTransport(Endpoint("p", url, HEADERS, **settings))
            else:
                endpoint = Endpoint("p", "http://fake.test/v1", HEADERS, **settings)
                transport = MemoryTransport(endpoint, app)
            transports.append(transport)
            return transport

        yield make
        for transport in transports:
            await transport.close()


async def test_post_answers_status_headers_and_body(serve: Serve) -> None:
    fake = FakeLlm()
    reply = await serve(fake).post("chat/completions", chat("hello"), soon())
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    data = json.loads(reply.body)
    assert data["choices"][0]["message"]["content"] == "echo: hello"
    assert fake.headers[-1]["authorization"] == "Bearer test-key"  # the endpoint's headers


async def test_error_statuses_are_answers(serve: Serve) -> None:
    reply = await serve(FakeLlm()).post("chat/completions", chat("[status:503]"), soon())
    assert reply.status == 503
    assert b"forced status 503" in reply.body


async def test_redirects_are_not_followed(serve: Serve) -> None:
    paths: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        paths.append(scope["path"])
        await receive()
        headers = [(b"location", b"/v1/elsewhere"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    reply = await serve(app).post("chat/completions", chat("x"), soon())
    assert reply.status == 307
    assert paths == ["/v1/chat/completions"]


async def test_read_timeout(serve: Serve) -> None:
    transport = serve(FakeLlm(FakeBehavior(latency_ms=500)), timeout_s=0.05)
    with pytest.raises(ProviderTimeout, match="provider p did not answer in time"):
        await transport.post("chat/completions", chat("x"), soon())


async def test_the_deadline_caps_every_timeout(serve: Serve) -> None:
    transport = serve(FakeLlm(FakeBehavior(latency_ms=500)), timeout_s=30)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await transport.post("chat/completions", chat("x"), time.monotonic() + 0.05)
    assert time.monotonic() - started < 0.4


async def test_stream_lines_arrive_as_they_are_sent(serve: Serve) -> None:
    fake = FakeLlm(FakeBehavior(stream_chunk_delay_ms=100))
    received: list[tuple[float, str]] = []
    body = chat("one two three", stream=True)
    async with serve(fake).stream("chat/completions", body, soon()) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/event-stream"
        async for line in reply.lines():
            received.append((time.monotonic(), line))
    data = [line for _, line in received if line]
    assert data[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in data)
    assert [line for _, line in received if not line]  # the events' blank separators
    words = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in data[:-1]]
    assert "".join(w or "" for w in words) == "echo: one two three"
    assert received[0][0] < fake.sent_at[-1] - 0.2  # the first line came before the last was sent


async def test_a_stream_cut_off_is_a_provider_error(serve: Serve) -> None:
    fake = FakeLlm(FakeBehavior(cut_stream_after=2))
    lines: list[str] = []
    async with serve(fake).stream("chat/completions", chat("a b c d", stream=True), soon()) as r:
        with pytest.raises(ProviderError, match="provider p connection failed"):
            async for line in r.lines():
                lines.append(line)
    assert len([line for line in lines if line]) == 2


async def test_a_streamed_error_answer_is_read_whole(serve: Serve) -> None:
    body = chat("[status:429]", stream=True)
    async with serve(FakeLlm()).stream("chat/completions", body, soon()) as reply:
        assert reply.status == 429
        assert b"forced status 429" in await reply.read()


async def test_stream_read_timeout_between_chunks(serve: Serve) -> None:
    fake = FakeLlm(FakeBehavior(stream_chunk_delay_ms=400))
    transport = serve(fake, timeout_s=0.15)
    lines: list[str] = []
    async with transport.stream("chat/completions", chat("a b", stream=True), soon()) as reply:
        with pytest.raises(ProviderTimeout, match="provider p stopped sending in time"):
            async for line in reply.lines():
                lines.append(line)
    assert lines[0].startswith("data: ")  # the first event came at once, then the gap was too long


# -- the HTTP transport alone -------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_connection_refused() -> None:
    transport = HttpTransport(Endpoint("p", f"http://127.0.0.1:{_unused_port()}/v1"))
    try:
        with pytest.raises(ProviderError, match="provider p unreachable: ClientConnectorError"):
            await transport.post("chat/completions", chat("x"), soon())
    finally:
        await transport.close()


async def test_pool_limit_and_keep_alive() -> None:
    fake = FakeLlm(FakeBehavior(latency_ms=100))
    clients: set[tuple[str, int]] = set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.add(tuple(scope["client"]))
        await fake(scope, receive, send)

    with ThreadedServer(app) as server:
        transport = HttpTransport(Endpoint("p", server.url, HEADERS, max_connections=2))
        try:
            calls = [transport.post("chat/completions", chat("x"), soon()) for _ in range(6)]
            replies = await asyncio.gather(*calls)
            for _ in range(3):
                await transport.post("chat/completions", chat("x"), soon())
        finally:
            await transport.close()
    assert [r.status for r in replies] == [200] * 6
    assert fake.peak_in_flight == 2  # the other calls waited for a pooled connection
    assert len(clients) == 2  # ... and the later calls reused the two


async def test_a_stream_left_half_read_does_not_go_back_to_the_pool() -> None:
    fake = FakeLlm(FakeBehavior(stream_chunk_delay_ms=50))
    clients: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clients.append(tuple(scope["client"]))
        await fake(scope, receive, send)

    with ThreadedServer(app) as server:
        transport = HttpTransport(Endpoint("p", server.url, HEADERS))
        try:
            body = chat("a b c d e f", stream=True)
            async with transport.stream("chat/completions", body, soon()) as reply:
                async for _ in reply.lines():
                    break
            await transport.post("chat/completions", chat("x"), soon())
        finally:
            await transport.close()
    assert len(set(clients)) == 2


# -- line splitting ---------------------------------------------------------------------


async def test_lines_split_anywhere() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in [
            b"data: a\r",
            b"\ndata: b\r\n\r",
            b"\n",
            b"",
            b"data: \xc3",
            b"\xa9\rx\n",
            b"tail",
        ]:
            yield piece

    lines = [line async for line in split_lines(pieces())]
    assert lines == ["data: a", "data: b", "", "data: \u00e9", "x", "tail"]
