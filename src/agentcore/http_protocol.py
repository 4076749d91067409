"""uvicorn's httptools protocol, writing each response to the socket once, its head built fast.

uvicorn writes the status line and headers of a response as soon as the app
sends ``http.response.start``, then the body on ``http.response.body``: two
``send()`` system calls for every small JSON answer, and on loopback the
kernel's share of a request is most of what the gateway costs. This protocol
hands uvicorn a transport that gathers what is written during one turn of the
event loop and passes it to the socket at the start of the next, as one write:
a whole small response, or several pipelined ones. Measured with wrk on the
2-core machine (``benchmarks/http_bench.py``, one worker): agent.ping from
19,400 to about 31,000 requests/s, health from 28,700 to about 47,000.

Nothing else changes. Backpressure still reaches uvicorn's flow control: past
:data:`FLUSH_BYTES` gathered in one turn (a large or streamed body) the write
goes to the socket at once, whose buffer pauses the app as before. ``close()``
writes what was gathered first; once the socket is closing, late writes are
dropped, as the socket would drop them. A WebSocket upgrade takes the socket
itself, so frames keep uvicorn's own path and cost.

The head of a response (status line and headers) is built from lines already
checked: uvicorn checks every header name and value with two regular
expressions and lower-cases the name on every response, about 0.4 µs a header,
and the gateway's answers carry ten (security and rate-limit headers) that
repeat from one response to the next. Each distinct ``(name, value)`` is
checked once and its line remembered (:func:`header_line`, a bounded cache);
anything out of the ordinary (no Content-Length, framing headers, a bad
header, the access log on, a closing connection) takes uvicorn's own path, so
what reaches the socket is byte for byte what uvicorn writes.

``agentcore serve`` runs uvicorn with it; any uvicorn command line can too:
``uvicorn --http agentcore.http_protocol:CoalescingHttpToolsProtocol``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent, HTTPResponseStartEvent

#: Bytes gathered in one loop turn past which they go to the socket at once.
FLUSH_BYTES = 64 * 1024
#: Distinct checked header lines remembered (past it, the oldest are checked again).
HEADER_LINES = 4096
#: Headers that frame the message: uvicorn acts on them, so their responses take its path.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


@functools.lru_cache(maxsize=HEADER_LINES)
def header_line(name: bytes, value: bytes) -> bytes | None:
    """``name: value\\r\\n`` as uvicorn writes it; None for a header uvicorn would
    refuse (a bad name or value) or act on (framing), which must take its path."""
    if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
        return None
    lowered = name.lower()
    if lowered in _FRAMING:
        return None
    return lowered + b": " + value + b"\r\n"


def response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]]
) -> tuple[bytes, int] | None:
    """The status line and headers of a response with exactly one numeric
    Content-Length and nothing uvicorn treats specially, and that length;
    None otherwise."""
    status_line = STATUS_LINE.get(status)
    if status_line is None:
        return None
    parts = [status_line]
    length: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = value
            parts.append(b"content-length: " + value + b"\r\n")
            continue
        line = header_line(name, value)
        if line is None:
            return None
        parts.append(line)
    if length is None:
        return None
    parts.append(b"\r\n")
    return b"".join(parts), int(length)


class FastHeadCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, whose common response heads skip its per-header work."""

    async def send(self, message: ASGISendEvent) -> None:
        if (
            message["type"] == "http.response.start"
            and not self.response_started
            and self.keep_alive
            and not self.access_log
            and not self.disconnected
            and not self.flow.write_paused
        ):
            start: HTTPResponseStartEvent = message
            headers: Iterable[tuple[bytes, bytes]] = start.get("headers", ())
            if self.default_headers:
                headers = [*self.default_headers, *headers]
            found = response_head(start["status"], headers)
            if found is not None:
                self.response_started = True
                self.waiting_for_100_continue = False
                self.expected_content_length = found[1]
                self.chunked_encoding = False
                self.transport.write(found[0])
                return
        await super().send(message)


class CoalescingTransport(asyncio.Transport):
    """A transport that passes writes to ``real`` once per loop turn."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_size", "real")

    def __init__(self, real: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.real = real
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []
        self._size = 0
        self._scheduled = False

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Pass what is gathered to the socket now (dropped if it is closing)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._size = 0
        if self.real.is_closing():
            return
        self.real.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._size + self.real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.real.set_write_buffer_limits(high, low)

    def write_eof(self) -> None:
        self.flush()
        self.real.write_eof()

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        self.flush()
        self.real.close()

    def abort(self) -> None:
        self._pending = []
        self._size = 0
        self.real.abort()

    def is_closing(self) -> bool:
        return self.real.is_closing()

    # -- the rest, as the socket has it --------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.real.get_protocol()

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def is_reading(self) -> bool:
        return self.real.is_reading()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`, its
    request/response cycles :class:`FastHeadCycle`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # uvicorn made the cycle (its task has not run yet); same fields, faster send.
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = FastHeadCycle

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol gets the socket itself: what was gathered goes
        # first, then frames are written as uvicorn writes them.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
            self.transport = transport.real
        super().handle_websocket_upgrade()
