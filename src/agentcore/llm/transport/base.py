"""The seam between LLM providers and the network: one small async interface.

A provider POSTs a JSON body to a path under its base URL and gets back the
status, headers and body (:meth:`Transport.post`), or the status and headers
and then the body's lines as they arrive (:meth:`Transport.stream`, for
server-sent events). What the bytes mean (OpenAI or Anthropic format, error
bodies, which statuses fall back) is the provider's business; moving them,
with timeouts and a pool of connections, is the transport's.

Implementations: :class:`~agentcore.llm.transport.http.HttpTransport`
(aiohttp, pooled keep-alive connections: the real one) and
:class:`~agentcore.llm.transport.memory.MemoryTransport` (an ASGI app called
in this process, no sockets: tests).

Every transport keeps the same contract:

- Timeouts: ``Endpoint.connect_timeout_s`` to connect, ``Endpoint.timeout_s``
  for each read (the gap between two pieces of the body, so a slow but live
  stream is not cut), both capped by the call's ``deadline`` (a
  ``time.monotonic()`` instant). The caller bounds the whole call itself.
- Statuses are answers, not errors: a 4xx or 5xx comes back in
  :attr:`Reply.status` for the provider to judge.
- Redirects are never followed: a 3xx comes back like any other status.
- Errors are translated here, once, with ``raise ... from exc``:
  :class:`~agentcore.errors.ProviderTimeout` when a connect or a read timed
  out, :class:`~agentcore.errors.ProviderError` for anything else the
  connection did (refused, reset, cut mid-body, not HTTP). Their messages
  name the provider and the library's error class, never a header (the API
  key is in one).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach one provider; one transport (one pool) per endpoint."""

    #: The provider's configured name (error messages).
    provider: str
    #: E.g. ``https://api.openai.com/v1``; request paths are relative to it.
    base_url: str
    #: Sent with every request (the API key among them: never logged or echoed).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Seconds to wait for each read (and for a free pooled connection).
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    #: Connections kept open to the provider, at most (a call beyond waits).
    max_connections: int = 100


@dataclass(slots=True)
class Reply:
    """A whole answer, whatever its status."""

    status: int
    #: Looked up by lower-case name.
    headers: Mapping[str, str]
    body: bytes


class ReplyStream(Protocol):
    """An answer whose status and headers have arrived; its body is still coming."""

    status: int
    #: Looked up by lower-case name.
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The rest of the body, at once (an error answer's body)."""

    def lines(self) -> AsyncIterator[str]:
        """The body's lines as they arrive, without their ``\\n``, ``\\r\\n`` or ``\\r``;
        raises :class:`~agentcore.errors.ProviderError` when the body is cut off."""


class Transport(Protocol):
    async def post(self, path: str, body: bytes, deadline: float) -> Reply:
        """POST ``body`` (JSON) to ``path`` under the base URL; the whole answer."""

    def stream(
        self, path: str, body: bytes, deadline: float
    ) -> AbstractAsyncContextManager[ReplyStream]:
        """POST ``body`` and hold the answer open; leaving the context before the
        body's end drops the connection (it is not reused half-read)."""

    async def close(self) -> None:
        """Close the pooled connections; the transport is not used afterwards."""


#: Builds the transport of one endpoint (``HttpTransport`` unless a test says otherwise).
Connector = Callable[[Endpoint], Transport]


def remaining_s(deadline: float) -> float:
    """Seconds until ``deadline``; small but positive once past (a zero timeout
    means "none" to some libraries)."""
    return max(0.001, deadline - time.monotonic())


async def split_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Lines out of body pieces cut anywhere, each yielded as soon as it is whole.

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (as server-sent events allow);
    a trailing ``\\r`` is held until the next piece shows whether a ``\\n``
    follows. Bytes that are not UTF-8 are replaced, not fatal. A last line
    without an ending is yielded at the end of the body.
    """
    pending = b""
    async for chunk in chunks:
        if not chunk:
            continue
        lines = (pending + chunk).splitlines(keepends=True)
        # Held back: an unfinished line, or one ending in a "\r" that may be half a "\r\n".
        pending = b"" if lines[-1].endswith(b"\n") else lines.pop()
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
    if pending:
        yield pending.rstrip(b"\r\n").decode("utf-8", "replace")
