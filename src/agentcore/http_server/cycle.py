"""One request and its response on the gateway's lean path.

uvicorn's ``RequestResponseCycle`` makes an ``asyncio.Event`` and a dozen
fields per request and writes a response's head and body with two socket
writes; this cycle has the same ASGI behaviour with less per-request work
(docs/performance.md): slots and no Event (``receive()`` makes a future only
when it has to wait for the body), and the head held back and written with the
first body bytes, from checked header lines (headers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from agentcore.http_server.headers import response_head
from agentcore.http_server.uvicorn_internals import (
    HEADER_RE,
    HEADER_VALUE_RE,
    HIGH_WATER_LIMIT,
    STATUS_LINE,
)

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application, ASGIReceiveEvent, ASGISendEvent
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.server import ServerState

log = logging.getLogger("uvicorn.error")


class Connection(Protocol):
    """What a cycle needs of the connection it answers on (protocol.py)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def flow(self) -> FlowControl: ...
    @property
    def tasks(self) -> set[asyncio.Task[None]]: ...
    @property
    def server_state(self) -> ServerState: ...
    @property
    def lines(self) -> dict[tuple[bytes, bytes], bytes]: ...
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def on_response_complete(self) -> None: ...


class Cycle:
    """One request and its response on the lean path (uvicorn's
    ``RequestResponseCycle``, same ASGI behaviour, less per-request work)."""

    __slots__ = (
        "_waiter",
        "body",
        "chunked",
        "disconnected",
        "final_received",
        "head",
        "keep_alive",
        "more_body",
        "protocol",
        "remaining",
        "response_complete",
        "response_started",
        "scope",
        "task",
    )

    def __init__(self, protocol: Connection, scope: dict[str, Any], keep_alive: bool):
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = b""
        self.more_body = True
        self.final_received = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.head: bytes | None = None
        self.chunked = False
        self.remaining = 0
        self._waiter: asyncio.Future[None] | None = None
        #: The task running the app (in the server's task set until it ends).
        self.task: asyncio.Task[None] | None = None

    # -- from the protocol ----------------------------------------------------

    def feed(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > HIGH_WATER_LIMIT:
            self.protocol.flow.pause_reading()
        self.wake()

    def complete(self) -> None:
        self.more_body = False
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self.protocol.loop.create_future()
        self._waiter = waiter
        await waiter

    # -- running the app ------------------------------------------------------

    async def run(self, app: ASGI3Application) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)  # type: ignore[arg-type,func-returns-value]
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            else:
                self.protocol.close()
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned '%s'.", result)
                self.protocol.close()
            elif not self.response_started and not self.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.protocol.close()
        finally:
            # Here rather than in a done callback: one loop callback less per request.
            if self.task is not None:
                self.protocol.tasks.discard(self.task)

    async def _send_500(self) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    # -- ASGI -----------------------------------------------------------------

    async def receive(self) -> ASGIReceiveEvent:
        if not self.disconnected and not self.response_complete:
            if self.final_received:
                await self._wait()  # nothing more comes but the end
            elif not self.body and self.more_body:
                self.protocol.flow.resume_reading()
                await self._wait()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = self.body
        self.body = b""
        more_body = self.more_body
        if not more_body:
            self.final_received = True
        return {"type": "http.request", "body": body, "more_body": more_body}

    async def send(self, message: ASGISendEvent) -> None:
        protocol = self.protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            status: int = message["status"]
            headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
            default = protocol.server_state.default_headers
            if default:
                headers = [*default, *headers]
            found = response_head(status, headers, protocol.lines) if self.keep_alive else None
            if found is not None:
                self.head, self.remaining = found
            else:
                self.head = self._general_head(status, headers)
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, "
                "after response already completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(
                f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
            )
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if self.chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining -= len(body)
            data = body
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        if data:
            protocol.write(data)
        if not more_body:
            if self.remaining != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                protocol.close()
            protocol.on_response_complete()

    def _general_head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The head as uvicorn builds it, for whatever :func:`response_head` leaves."""
        content = [STATUS_LINE[status]]
        has_connection_close = False
        chunked: bool | None = None
        for raw_name, value in headers:
            if HEADER_RE.search(raw_name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = raw_name.lower()
            if name == b"content-length" and chunked is None:
                self.remaining = int(value.decode())
                chunked = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.remaining = 0
                chunked = True
            elif name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                self.keep_alive = False
                has_connection_close = True
            content.extend([name, b": ", value, b"\r\n"])
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if chunked is None and status not in (204, 304):
            chunked = True
            content.append(b"transfer-encoding: chunked\r\n")
        self.chunked = bool(chunked)
        content.append(b"\r\n")
        return b"".join(content)
