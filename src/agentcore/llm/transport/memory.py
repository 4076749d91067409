"""The in-memory transport: the provider is an ASGI app called in this process.

For tests that need a provider but not its sockets: the fake provider
(:class:`agentcore.llm.fake.FakeLlm`) or an app written in the test, plugged
in with ``MemoryTransport.connector(app)`` wherever a
:data:`~agentcore.llm.transport.base.Connector` is taken. The contract is
the HTTP transport's (``tests/llm/test_transport.py`` runs the same tests
over both): statuses come back as answers, redirects are not followed, the
read timeout and the deadline are enforced, and an app that raises before
its response is complete is a cut connection
(:class:`~agentcore.errors.ProviderError`).

Each call runs the app as a task of its own. The app's messages reach the
reader through a queue of :data:`QUEUE_SIZE` messages: a full queue holds
the app's ``send`` until the reader catches up, as a full socket would.
Leaving a call before the end of the body cancels the app's task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

from agentcore.errors import ProviderError, ProviderTimeout
from agentcore.llm.transport.base import Connector, Endpoint, Reply, remaining_s, split_lines
from agentcore.types import ASGIApp, Message

#: ASGI messages of one answer buffered between the app and its reader.
QUEUE_SIZE = 16


class Cut(Exception):
    """The app stopped before its response was complete (raised, or returned early)."""


class MemoryTransport:
    def __init__(self, endpoint: Endpoint, app: ASGIApp) -> None:
        self.endpoint = endpoint
        self._app = app
        url = urlsplit(endpoint.base_url)
        self._root = url.path.rstrip("/")
        self._scheme = url.scheme or "http"
        port = url.port or (443 if url.scheme == "https" else 80)
        self._server = (url.hostname or "memory", port)
        self._headers = [
            (b"host", url.netloc.encode("latin-1")),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in endpoint.headers.items()
            ),
        ]
        self._calls: set[asyncio.Task[None]] = set()

    @classmethod
    def connector(cls, app: ASGIApp) -> Connector:
        """A connector whose every endpoint is served by ``app``."""
        return lambda endpoint: cls(endpoint, app)

    def _call(self, path: str, body: bytes, deadline: float) -> Exchange:
        path = f"{self._root}/{path}"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": self._scheme,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [*self._headers, (b"content-length", str(len(body)).encode())],
            "server": self._server,
            "client": ("127.0.0.1", 0),
        }
        exchange = Exchange(self._app, scope, body, self.endpoint.timeout_s, deadline)
        self._calls.add(exchange.task)
        exchange.task.add_done_callback(self._calls.discard)
        return exchange

    async def post(self, path: str, body: bytes, deadline: float) -> Reply:
        exchange = self._call(path, body, deadline)
        try:
            await exchange.start()
            return Reply(exchange.status, exchange.headers, await exchange.read())
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"provider {self.endpoint.provider} did not answer in time"
            ) from exc
        except Cut as exc:
            raise ProviderError(f"provider {self.endpoint.provider} unreachable: {exc}") from exc
        finally:
            exchange.close()

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: bytes, deadline: float) -> AsyncIterator[MemoryStream]:
        exchange = self._call(path, body, deadline)
        try:
            try:
                await exchange.start()
            except TimeoutError as exc:
                raise ProviderTimeout(
                    f"provider {self.endpoint.provider} did not answer in time"
                ) from exc
            except Cut as exc:
                raise ProviderError(
                    f"provider {self.endpoint.provider} connection failed: {exc}"
                ) from exc
            yield MemoryStream(exchange, self.endpoint.provider)
        finally:
            exchange.close()

    async def close(self) -> None:
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


class Exchange:
    """One request to the app and its answer, message by message."""

    def __init__(
        self, app: ASGIApp, scope: Message, body: bytes, read_s: float, deadline: float
    ) -> None:
        self._body: bytes | None = body
        self._read_s = read_s
        self._deadline = deadline
        self._queue: asyncio.Queue[Message | Exception | None] = asyncio.Queue(QUEUE_SIZE)
        self._closed = asyncio.Event()
        self._ended = False
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.task = asyncio.get_running_loop().create_task(self._run(app, scope))

    async def _run(self, app: ASGIApp, scope: Message) -> None:
        try:
            await app(scope, self._receive, self._queue.put)
        except Exception as exc:  # the app crashed: to its reader, a cut connection
            await self._queue.put(exc)
        else:
            await self._queue.put(None)

    async def _receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._closed.wait()
        return {"type": "http.disconnect"}

    async def _next(self) -> Message:
        """The app's next message within the read timeout (TimeoutError), else Cut."""
        async with asyncio.timeout(min(self._read_s, remaining_s(self._deadline))):
            item = await self._queue.get()
        if item is None:
            raise Cut("IncompleteResponse")
        if isinstance(item, Exception):
            raise Cut(type(item).__name__) from item
        return item

    async def start(self) -> None:
        message = await self._next()
        if message["type"] != "http.response.start":
            raise Cut(f"unexpected ASGI message {message['type']!r}")
        self.status = int(message["status"])
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in message.get("headers", ())
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self._ended:
            message = await self._next()
            if message["type"] != "http.response.body":
                continue
            self._ended = not message.get("more_body", False)
            yield bytes(message.get("body", b""))

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        self._closed.set()
        if not self._ended:
            self.task.cancel()


class MemoryStream:
    __slots__ = ("_exchange", "_provider", "headers", "status")

    def __init__(self, exchange: Exchange, provider: str) -> None:
        self._exchange = exchange
        self._provider = provider
        self.status = exchange.status
        self.headers = exchange.headers

    async def read(self) -> bytes:
        try:
            return await self._exchange.read()
        except TimeoutError as exc:
            raise ProviderTimeout(f"provider {self._provider} stopped sending in time") from exc
        except Cut as exc:
            raise ProviderError(f"provider {self._provider} connection failed: {exc}") from exc

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in split_lines(self._exchange.chunks()):
                yield line
        except TimeoutError as exc:
            raise ProviderTimeout(f"provider {self._provider} stopped sending in time") from exc
        except Cut as exc:
            raise ProviderError(f"provider {self._provider} connection failed: {exc}") from exc
