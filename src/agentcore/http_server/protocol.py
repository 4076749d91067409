"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with a lean request path.

uvicorn's cost per request is its per-request machinery, not parsing
(docs/performance.md), so this protocol keeps uvicorn's server, its
configuration, its lifespan, workers and signal handling, and its WebSocket
upgrade, and replaces that request path for the common case:

- the scope is built once, in ``on_headers_complete``; a URL with no query and
  no escapes is its own path (``parse_url`` only for the rest);
- the request runs on a :class:`~agentcore.http_server.cycle.Cycle` (cycle.py);
- the app starts after the bytes received have been parsed, so a small POST
  finds its body already there instead of waiting a loop turn for it, and it
  starts eagerly (eager.py);
- a loop turn's answers go to their sockets together after the turn
  (writes.py);
- idle keep-alive connections are closed by one sweep per server
  (keepalive.py) instead of a timer per response;
- request heads are bounded, which httptools (llhttp) does not do itself: a
  head above ``max_head_bytes`` or with more than ``max_headers`` lines is
  answered 431, one not complete ``head_timeout_s`` after its first byte 408
  (the same sweep, so no timer per connection either), each with a JSON body,
  and the connection is closed (:meth:`GatewayHttpProtocol.refuse_head`).

Everything out of the ordinary takes uvicorn's own path, request by request:
HTTP/1.0, ``HEAD``, ``Expect: 100-continue``, upgrades (WebSockets), a request
pipelined behind an unfinished one, ``root_path``, ``limit_concurrency`` and
the access log. What reaches the socket is byte for byte what uvicorn writes
(tests/test_http_protocol.py runs both on the same requests). The uvicorn
internals this relies on are imported and checked in uvicorn_internals.py.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING, Any

import httptools
import msgspec

from agentcore.errors import AgentCoreError, HeadersTooLarge, RequestTimeout
from agentcore.http_server.cycle import Cycle
from agentcore.http_server.eager import start_eagerly
from agentcore.http_server.keepalive import SweptConnection
from agentcore.http_server.shared import ServerShared
from agentcore.http_server.uvicorn_internals import STATUS_LINE, HttpToolsProtocol
from agentcore.http_server.writes import FLUSH_BYTES

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

#: Defaults of ``server.max_head_bytes``, ``max_headers`` and ``head_timeout_s``
#: (config.py): the limits under a plain ``uvicorn --http ...GatewayHttpProtocol``.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0
#: Seconds a refused connection's input is still read and dropped before it is
#: closed: closing with unread input makes the kernel send a reset, which can
#: destroy the answer before the client reads it.
LINGER_S = 1.0


class _Discard:
    """The parser of a connection whose head was refused: input is dropped unparsed."""

    def feed_data(self, data: bytes) -> None:
        pass


DISCARD = _Discard()


class GatewayHttpProtocol(HttpToolsProtocol, SweptConnection):
    """uvicorn's httptools protocol, common requests on :class:`Cycle` (module docstring).

    The head limits are keyword arguments (``agentcore serve`` passes the
    ``server.*`` settings with ``functools.partial``); their defaults are the
    settings' defaults.
    """

    #: A :class:`Cycle`, or uvicorn's own for a request on its path.
    cycle: Any

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_headers: int = MAX_HEADERS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._lean = not self.access_log and self.limit_concurrency is None and not self.root_path
        self._start: Cycle | None = None
        self._seen = True
        self._idle_sweeps = 0
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.head_timeout_s = head_timeout_s
        #: Sweeps since the head under way began; None while no head is under way.
        self._head: int | None = None
        #: Bytes of the head under way received in earlier reads, and the size of
        #: the read being parsed (0 once a request ended in it: see data_received).
        self._head_bytes = 0
        self._fed = 0
        shared = ServerShared.of(self.loop, server_state, self.timeout_keep_alive, head_timeout_s)
        self._sweeper = shared.sweeper
        self._batch = shared.batch
        self.lines = shared.lines
        #: Response bytes waiting for the batch (see writes.py), and their size.
        self._out: list[bytes] = []
        self._out_size = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._sweeper.ensure()

    # -- writing (lean path) ----------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` with the turn's batch (at once past :data:`FLUSH_BYTES`)."""
        out = self._out
        if not out:
            self._batch.add(self)
        out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_BYTES:
            self.flush()  # a large or streamed body: let the socket's backpressure act

    def flush(self) -> None:
        """Pass what waits to the socket now (dropped if it is closing)."""
        out = self._out
        if out:
            self._out = []
            self._out_size = 0
            if not self.transport.is_closing():
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Close the connection after what waits to be sent."""
        self.flush()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.flush()  # answers to earlier requests go first
        super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self.flush()
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        self.flush()
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._out = []
        self._out_size = 0
        cycle = self.cycle
        if type(cycle) is Cycle:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
            self.cycle = None
            self._start = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, less its keep-alive timer (never armed here), with the head limits.
        self._seen = True
        self._fed = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if not isinstance(self.parser, _Discard):  # else refused by a head limit, answered
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return
        if self._head is not None:
            # A head still incomplete after this read: the read counts whole, so
            # a head is cut off once its bytes pass the limit, however it is sent
            # (httptools buffers an unfinished header line itself, unbounded).
            # The read in which a pipelined head began after the previous
            # request ended (``_fed`` 0) is not counted: its share is unknown.
            self._head_bytes += self._fed
            if self._head_bytes > self.max_head_bytes:
                self.refuse_head(self._too_large())
                return
        cycle = self._start
        if cycle is not None:
            self._start = None
            if not self.transport.is_closing():
                self._run(cycle)

    # -- parser callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._head = 0
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head = None
        if len(self.headers) > self.max_headers:
            self._refuse_in_parser(
                HeadersTooLarge(f"request head with more than {self.max_headers} headers")
            )
        fed = self._fed
        # The reads this head spans bound its size; measured only past the limit.
        if (fed == 0 or self._head_bytes + fed > self.max_head_bytes) and (
            self._head_size() > self.max_head_bytes
        ):
            self._refuse_in_parser(self._too_large())
        parser = self.parser
        cycle = self.cycle
        method: bytes = parser.get_method()
        if (
            not self._lean
            or method == b"HEAD"
            or self.expect_100_continue
            or parser.should_upgrade()
            or (cycle is not None and not cycle.response_complete)
            or parser.get_http_version() != "1.1"
        ):
            self._uvicorn_request()
            return
        url: bytes = self.url
        if b"?" in url or b"%" in url or url[:1] != b"/":
            parsed = httptools.parse_url(url)
            raw_path: bytes = parsed.path
            query: bytes = parsed.query or b""
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
        else:
            raw_path = url
            query = b""
            path = url.decode("ascii")
        scope = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": "",
            "headers": self.headers,
            "state": self.app_state.copy(),
            "method": method.decode("ascii"),
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
        }
        self.scope = scope  # type: ignore[assignment]
        cycle = Cycle(self, scope, parser.should_keep_alive())
        self.cycle = cycle
        self._start = cycle  # the app starts once the bytes at hand are parsed

    def _uvicorn_request(self) -> None:
        """This request on uvicorn's own path (its scope as uvicorn makes it)."""
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Cycle:
            if not cycle.response_complete:
                cycle.feed(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._fed = 0  # a head that follows in this read: see data_received
        cycle = self.cycle
        if type(cycle) is Cycle:
            if not cycle.response_complete:
                cycle.complete()
        else:
            super().on_message_complete()

    # -- head limits ----------------------------------------------------------------

    def _head_size(self) -> int:
        """The head's size as parsed: request line, header lines, blank line."""
        size = len(self.parser.get_method()) + len(self.url) + 14
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def _too_large(self) -> AgentCoreError:
        return HeadersTooLarge(f"request head above {self.max_head_bytes} bytes")

    def _refuse_in_parser(self, exc: AgentCoreError) -> None:
        """Refuse from a parser callback: the raise stops the parser."""
        self.refuse_head(exc)
        raise exc

    def refuse_head(self, exc: AgentCoreError) -> None:
        """Answer ``exc`` (431 or 408) with its JSON body and close the connection.

        Answers to earlier requests go first; one still being handled is treated
        as a client gone. Further input is read and dropped for up to
        :data:`LINGER_S` after the answer (half-closed: the client sees it and
        the end), so the close does not reset it away.
        """
        self._head = None
        self.parser = DISCARD  # type: ignore[assignment]
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            if type(cycle) is Cycle:
                cycle.wake()
            else:
                cycle.message_event.set()
        self._start = None
        self.flush()
        body = msgspec.json.encode({"error": exc.to_dict()})
        transport = self.transport
        transport.write(
            b"".join(
                [
                    STATUS_LINE[exc.status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    # -- running ------------------------------------------------------------------

    def _run(self, cycle: Cycle) -> None:
        task = start_eagerly(self.loop, cycle.run(self.app))
        if task is not None:
            cycle.task = task
            self.tasks.add(task)

    def on_response_complete(self) -> None:
        # uvicorn's, without arming a keep-alive timer (the sweeper closes idle connections).
        self.server_state.total_requests += 1
        self._seen = True
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)

    def idle_tick(self) -> None:
        """One sweep: refuse a head under way for longer than the head timeout (408),
        close the connection after a keep-alive timeout without a request."""
        sweeper = self._sweeper
        head = self._head
        if head is not None:
            if head >= sweeper.head_sweeps:  # this sweep is the one after the timeout
                self.refuse_head(
                    RequestTimeout(f"request head not received within {self.head_timeout_s:g} s")
                )
                return
            self._head = head + 1
        cycle = self.cycle
        if self._seen or (cycle is not None and not cycle.response_complete) or self.pipeline:
            self._seen = False
            self._idle_sweeps = 0
            return
        self._idle_sweeps += 1
        if self._idle_sweeps >= sweeper.idle_sweeps and not self.transport.is_closing():
            self.close()
