"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with a lean request path.

uvicorn spends about 22 µs of CPU on an empty request on the project machine
(``benchmarks/floor_asgi.py``), where the same httptools parser on uvloop
answering from a bare ``asyncio.Protocol`` spends about 8: the difference is
per-request machinery, not parsing. Per request uvicorn builds its scope in
``on_message_begin``, parses every URL with ``httptools.parse_url``, makes an
``asyncio.Event`` and a cycle with a dozen fields, writes the head and the
body of the response with two ``send()`` system calls, checks every response
header with two regular expressions, and arms a keep-alive timer after the
response that the next request cancels (a libuv timer started and stopped
per request). This protocol keeps uvicorn's server, its configuration, its
lifespan, workers and signal handling, and its WebSocket upgrade, and
replaces that request path for the common case:

- the scope is built once, in ``on_headers_complete``; a URL with no query and
  no escapes is its own path (``parse_url`` only for the rest);
- a :class:`Cycle` has slots and no Event: ``receive()`` makes a future only
  when it has to wait for the body;
- the app starts after the bytes received have been parsed, so a small POST
  finds its body already there instead of waiting a loop turn for it, and it
  starts *eagerly*: its first step runs right there, and an app that answers
  without waiting for anything (health, a heartbeat) is done before
  ``data_received`` returns, with no task and no loop turn; an app that does
  wait goes on as a task from where it stopped (:func:`start_eagerly`, the
  behaviour of Python 3.12's eager tasks, which it uses there);
- the head of a response is held until the first body bytes and written with
  them, one ``send()`` for a small answer, and a loop turn's answers go to
  their sockets together in one callback after the turn (:class:`WriteBatch`;
  writing from inside ``data_received`` measured slower); heads are built
  from checked header lines remembered per server (:func:`response_head`);
- idle keep-alive connections are closed by one sweep per server
  (:class:`KeepAliveSweeper`, every quarter of uvicorn's ``timeout_keep_alive``)
  instead of a timer per response: a connection is closed after between one
  and one and a quarter timeouts without a request, and, unlike uvicorn, a
  connection that never sends one is closed too;
- request heads are bounded, which httptools (llhttp) does not do itself: a
  head above ``max_head_bytes`` or with more than ``max_headers`` lines is
  answered 431, one not complete ``head_timeout_s`` after its first byte 408
  (the same sweep, so no timer per connection either), each with a JSON body,
  and the connection is closed (:meth:`GatewayHttpProtocol.refuse_head`).

Everything out of the ordinary takes uvicorn's own path, request by request:
HTTP/1.0, ``HEAD``, ``Expect: 100-continue``, upgrades (WebSockets), a request
pipelined behind an unfinished one, ``root_path``, ``limit_concurrency`` and
the access log. What reaches the socket is byte for byte what uvicorn writes
(tests/test_http_protocol.py runs both on the same requests).

``agentcore serve`` runs uvicorn with it; any uvicorn command line can too:
``uvicorn --http agentcore.http_protocol:GatewayHttpProtocol``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import sys
import urllib.parse
from asyncio import tasks as asyncio_tasks
from collections.abc import Coroutine, Generator, Iterable
from typing import TYPE_CHECKING, Any

import httptools
import msgspec
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

from agentcore.errors import AgentCoreError, HeadersTooLarge, RequestTimeout

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application, ASGIReceiveEvent, ASGISendEvent
    from uvicorn.config import Config
    from uvicorn.server import ServerState

#: Distinct checked header lines remembered (past it, the oldest are checked again).
HEADER_LINES = 4096
#: Headers that frame the message: the general path handles them.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
#: Response bytes waiting for the write batch past which they go to the socket at once.
FLUSH_BYTES = 64 * 1024
#: Sweeps per keep-alive timeout (or head timeout, the shorter); an idle connection
#: closes after this many.
SWEEPS_PER_TIMEOUT = 4
#: Defaults of ``server.max_head_bytes``, ``max_headers`` and ``head_timeout_s``
#: (config.py): the limits under a plain ``uvicorn --http ...GatewayHttpProtocol``.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0
#: Seconds a refused connection's input is still read and dropped before it is
#: closed: closing with unread input makes the kernel send a reset, which can
#: destroy the answer before the client reads it.
LINGER_S = 1.0

log = logging.getLogger("uvicorn.error")


@functools.lru_cache(maxsize=HEADER_LINES)
def header_line(name: bytes, value: bytes) -> bytes | None:
    """``name: value\\r\\n`` as uvicorn writes it; None for a header uvicorn would
    refuse (a bad name or value) or act on (framing), which take the general path."""
    if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
        return None
    lowered = name.lower()
    if lowered in _FRAMING:
        return None
    return lowered + b": " + value + b"\r\n"


def response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]], lines: dict[tuple[bytes, bytes], bytes]
) -> tuple[bytes, int] | None:
    """The status line and headers of a response with exactly one numeric
    Content-Length and nothing uvicorn treats specially, and that length;
    None otherwise.

    ``lines`` remembers the checked line of each ``(name, value)`` pair (the
    first :data:`HEADER_LINES` distinct ones): most of a gateway's response
    headers repeat from one response to the next, and a dict lookup on the
    pair costs a third of a call to :func:`header_line`.
    """
    status_line = STATUS_LINE.get(status)
    if status_line is None:
        return None
    parts = [status_line]
    length: bytes | None = None
    try:
        for pair in headers:
            line = lines.get(pair)
            if line is None:
                name, value = pair
                if name == b"content-length":
                    if length is not None or not value.isdigit():
                        return None
                    length = value
                    parts.append(b"content-length: " + value + b"\r\n")
                    continue
                line = header_line(name, value)
                if line is None:
                    return None
                if len(lines) < HEADER_LINES:
                    lines[pair] = line
            parts.append(line)
    except TypeError:  # a header given as a list (unhashable): the general path
        return None
    if length is None:
        return None
    parts.append(b"\r\n")
    return b"".join(parts), int(length)


class TaskStandIn:
    """What ``asyncio.current_task()`` returns while an app runs its eager first step.

    Code that keeps the current task to cancel it later (the gateway's
    deadlines, ``asyncio.timeout``, aiohttp's timers, ``TaskGroup``) gets this
    object; it passes ``cancel``, ``cancelling`` and ``uncancel`` on to the task
    that continues the app once it waits for something. Until then nothing else
    runs, so nothing can cancel it before that task exists.
    """

    __slots__ = ("__weakref__", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def cancel(self, msg: Any = None) -> bool:
        return self.task.cancel(msg) if self.task is not None else False

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else 0

    def uncancel(self) -> int:
        return self.task.uncancel() if self.task is not None else 0

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "eager-start"

    def __getattr__(self, name: str) -> Any:
        # Anything else a library asks of the current task: the task's, once there is one.
        task = object.__getattribute__(self, "task")
        if task is None:
            raise AttributeError(f"{name!r}: the request has not waited for anything yet")
        return getattr(task, name)


class _Resume:
    """Awaits what a coroutine stopped on and drives it on from there (inside a Task)."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, None]:
        coro = self.coro
        waiting_on = self.waiting_on  # a future, or None (a bare yield: one loop turn)
        while True:
            try:
                yield waiting_on
            except BaseException as exc:  # the task was cancelled: the coroutine sees it
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _Resume(coro, waiting_on)


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first wait now; the task running the rest, or None
    when it finished.

    Python 3.12's eager tasks, for 3.11 (3.12 and later use the real thing):
    the first step runs in a copy of the current context, with a
    :class:`TaskStandIn` as the current task; if the coroutine waits, a task
    created in the same context takes it on from the future it waits on. Called
    from a running task (which cannot lend its place), it is an ordinary task.
    """
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        return None if task.done() else task
    standin = TaskStandIn()
    try:
        asyncio_tasks._enter_task(loop, standin)  # type: ignore[arg-type]
    except RuntimeError:  # another task is running here
        return loop.create_task(coro)
    context = contextvars.copy_context()
    try:
        waiting_on = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        asyncio_tasks._leave_task(loop, standin)  # type: ignore[arg-type]
    task = loop.create_task(_resume(coro, waiting_on), context=context)
    standin.task = task
    return task


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

    def __init__(self, protocol: GatewayHttpProtocol, scope: dict[str, Any], keep_alive: bool):
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


class KeepAliveSweeper:
    """Closes a server's idle keep-alive connections and refuses its overdue request
    heads: one timer per server, not one per response or connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        state: ServerState,
        timeout_s: float,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ):
        self.loop = loop
        self.state = state
        self.interval_s = min(timeout_s, head_timeout_s) / SWEEPS_PER_TIMEOUT
        #: Sweeps without a request before an idle connection is closed...
        self.idle_sweeps = max(round(timeout_s / self.interval_s), 1)
        #: ...and sweeps a head may stay incomplete (refused at the one after).
        self.head_sweeps = max(round(head_timeout_s / self.interval_s), 1)
        self._handle: asyncio.TimerHandle | None = None

    def ensure(self) -> None:
        """Sweep from now on (until a sweep finds no connection)."""
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval_s, self.sweep)

    def sweep(self) -> None:
        self._handle = None
        found = False
        for connection in list(self.state.connections):
            if isinstance(connection, GatewayHttpProtocol):
                found = True
                connection.idle_tick()
        if found:
            self.ensure()


class WriteBatch:
    """The responses of one loop turn, passed to their sockets in one callback after it.

    Measured with wrk on the project machine, answering from inside
    ``data_received`` and writing there cost about 10 µs more per request than
    writing in a later callback (agent.ping 20,000 against 29,500 req/s): the
    gateway handles a turn's requests first and writes their answers after.
    One batch per server (:class:`ServerShared`); a connection joins it with
    its first pending write of the turn.
    """

    __slots__ = ("_scheduled", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[GatewayHttpProtocol] = []
        self._scheduled = False

    def add(self, protocol: GatewayHttpProtocol) -> None:
        self.pending.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending = self.pending
        self.pending = []
        for protocol in pending:
            protocol.flush()


class ServerShared:
    """What one server's connections share: the keep-alive sweeper, the write
    batch and the checked header lines. Kept on uvicorn's ``ServerState``
    (one per server), made by the server's first connection."""

    __slots__ = ("batch", "lines", "loop", "sweeper")

    def __init__(self, loop: asyncio.AbstractEventLoop, sweeper: KeepAliveSweeper):
        self.loop = loop
        self.sweeper = sweeper
        self.batch = WriteBatch(loop)
        #: Checked header lines by ``(name, value)`` (see :func:`response_head`).
        self.lines: dict[tuple[bytes, bytes], bytes] = {}

    @classmethod
    def of(
        cls,
        loop: asyncio.AbstractEventLoop,
        state: ServerState,
        timeout_s: float,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> ServerShared:
        shared: ServerShared | None = getattr(state, "agentcore_shared", None)
        if shared is None or shared.loop is not loop:
            shared = cls(loop, KeepAliveSweeper(loop, state, timeout_s, head_timeout_s))
            state.agentcore_shared = shared  # type: ignore[attr-defined]
        return shared


class _Discard:
    """The parser of a connection whose head was refused: input is dropped unparsed."""

    def feed_data(self, data: bytes) -> None:
        pass


DISCARD = _Discard()


class GatewayHttpProtocol(HttpToolsProtocol):
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
        #: Response bytes waiting for the batch (see :class:`WriteBatch`), and their size.
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


#: The name earlier releases documented for ``uvicorn --http``.
CoalescingHttpToolsProtocol = GatewayHttpProtocol
