"""The real transport: HTTP/1.1 over pooled keep-alive connections (aiohttp).

aiohttp's client (C parser) costs several times less CPU per call than
httpx (docs/performance.md, "Outbound HTTP client"), and the outbound call is
a large part of what one worker spends on a completion.

One ``ClientSession`` per endpoint, created on the first call (aiohttp binds
it to the running event loop, and nothing is created at import or in
``create_app``), set up by :func:`agentcore.outbound.open_session`: at most
``max_connections`` connections (a call beyond waits for a free one, within
its read timeout), no proxies from the environment, certifi's certificates,
no cookie jar, idle connections closed after ``outbound.KEEPALIVE_S``.
Redirects are not followed (``allow_redirects=False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from agentcore.errors import ProviderError, ProviderTimeout
from agentcore.llm.transport.base import Endpoint, Reply, remaining_s, split_lines
from agentcore.outbound import open_session

#: The connection errors translated into ProviderError (a timeout is checked first:
#: aiohttp's timeout errors are OSErrors too).
_FAILURES = (aiohttp.ClientError, OSError)


class HttpTransport:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._base = URL(endpoint.base_url.rstrip("/") + "/")
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        endpoint = self.endpoint
        self._session = open_session(endpoint.max_connections, endpoint.headers)
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._base.join(URL(path))
        return url

    def _timeout(self, deadline: float) -> aiohttp.ClientTimeout:
        """Per-call timeouts, never past the deadline; ``connect`` bounds the wait
        for a pooled connection plus the connect itself."""
        left = remaining_s(deadline)
        read = min(self.endpoint.timeout_s, left)
        return aiohttp.ClientTimeout(
            total=None,
            connect=read,
            sock_connect=min(self.endpoint.connect_timeout_s, left),
            sock_read=read,
        )

    async def post(self, path: str, body: bytes, deadline: float) -> Reply:
        session = self._session or self._open()
        try:
            async with session.post(
                self._url(path), data=body, allow_redirects=False, timeout=self._timeout(deadline)
            ) as response:
                return Reply(response.status, response.headers, await response.read())
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"provider {self.endpoint.provider} did not answer in time"
            ) from exc
        except _FAILURES as exc:
            raise ProviderError(
                f"provider {self.endpoint.provider} unreachable: {type(exc).__name__}"
            ) from exc

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: bytes, deadline: float) -> AsyncIterator[HttpStream]:
        session = self._session or self._open()
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    session.post(
                        self._url(path),
                        data=body,
                        allow_redirects=False,
                        timeout=self._timeout(deadline),
                    )
                )
            except TimeoutError as exc:
                raise ProviderTimeout(
                    f"provider {self.endpoint.provider} did not answer in time"
                ) from exc
            except _FAILURES as exc:
                raise ProviderError(
                    f"provider {self.endpoint.provider} connection failed: {type(exc).__name__}"
                ) from exc
            # Leaving releases the response: its connection goes back to the pool
            # when the body was read to its end, and is closed otherwise.
            yield HttpStream(response, self.endpoint.provider)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpStream:
    __slots__ = ("_provider", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, provider: str) -> None:
        self._response = response
        self._provider = provider
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError as exc:
            raise ProviderTimeout(f"provider {self._provider} stopped sending in time") from exc
        except _FAILURES as exc:
            raise ProviderError(
                f"provider {self._provider} connection failed: {type(exc).__name__}"
            ) from exc

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in split_lines(self._response.content.iter_any()):
                yield line
        except TimeoutError as exc:
            raise ProviderTimeout(f"provider {self._provider} stopped sending in time") from exc
        except _FAILURES as exc:
            raise ProviderError(
                f"provider {self._provider} connection failed: {type(exc).__name__}"
            ) from exc
