"""HTTP request and response primitives over raw ASGI.

Deliberately small: the hot path (health, JSON-RPC) has to answer at least
three times as fast as a FastAPI app (issue 2's goal; the latest ratio is in
docs/performance.md, "HTTP throughput"), so a request is a thin view over the
ASGI scope and a response is an ASGI callable.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl

import msgspec

from agentcore.errors import (
    AgentCoreError,
    InvalidParams,
    InvalidRequest,
    ParseError,
    PayloadTooLarge,
)
from agentcore.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")
JSON = b"application/json"
_QUOTED = re.compile(r"(['`])([^'`]{48,})\1")


def safe_message(exc: Exception) -> str:
    """msgspec's message without long input values (it quotes bad enum values and keys)."""
    return _QUOTED.sub(lambda m: f"{m[1]}{m[2][:32]}...{m[1]}", str(exc))


#: Scope key of the headers the protection checks add to the response (security headers,
#: rate-limit headers): a list that every sender of ``http.response.start`` appends
#: (:func:`start`), instead of each check wrapping ``send`` per request.
RESPONSE_HEADERS = "agentcore.response_headers"

#: Statuses that carry neither a body nor Content-Length (RFC 9110 sections 6.4.1, 8.6).
NO_BODY_STATUSES = frozenset({204, 304})
_encoder = msgspec.json.Encoder()


def add_response_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    """Have the response to ``scope`` carry ``headers`` too (the protection checks call this)."""
    extra: list[tuple[bytes, bytes]] | None = scope.get(RESPONSE_HEADERS)
    if extra is None:
        scope[RESPONSE_HEADERS] = list(headers)
    else:
        extra.extend(headers)


def start(scope: Scope, status: int, headers: list[tuple[bytes, bytes]]) -> Message:
    """The ``http.response.start`` message: ``headers`` and then the protection checks'."""
    extra = scope.get(RESPONSE_HEADERS)
    if extra:
        headers.extend(extra)
    return {"type": "http.response.start", "status": status, "headers": headers}


class Request:
    __slots__ = ("_body", "path_params", "receive", "scope", "task")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params: dict[str, str] = {}
        self._body: bytes | None = None
        #: The task serving this request (deadlines cancel it).
        self.task: asyncio.Task[Any] | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def path(self) -> str:
        path: str = self.scope["path"]
        return path

    def header(self, name: bytes) -> bytes | None:
        """First value of a header; ``name`` in lower case."""
        for key, value in self.scope["headers"]:
            if key == name:
                found: bytes = value
                return found
        return None

    @property
    def query_params(self) -> dict[str, str]:
        """The query string, last value of each name winning."""
        raw: bytes = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))

    async def json(self, kind: type[T], limit: int) -> T:
        """The body decoded into ``kind``; 400 naming the field when it does not fit."""
        body = await self.body(limit)
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"invalid body: {safe_message(exc)}") from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ParseError("body is not valid JSON") from exc

    def query(self, kind: type[T]) -> T:
        """The query parameters converted into ``kind`` (strings to numbers)."""
        try:
            return msgspec.convert(self.query_params, kind, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"invalid query: {safe_message(exc)}") from exc

    @property
    def client_host(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def body(self, limit: int) -> bytes:
        """The whole body; 413 as soon as it is known to exceed ``limit`` bytes.

        The read deadline (408) is the caller's: see ``limits.Deadlines``.
        """
        if self._body is not None:
            return self._body
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        self._body = await self._read(limit)
        return self._body

    async def stream(self, limit: int) -> AsyncIterator[bytes]:
        """The body chunk by chunk as it arrives, never buffered whole.

        413 as soon as it is known to exceed ``limit`` bytes (the declared
        Content-Length, else the running total); :class:`InvalidRequest` when
        the client disconnects before the body is complete, so a consumer never
        mistakes a cut-off body for a whole one.
        """
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("the client disconnected before the body was complete")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def _read(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.status in NO_BODY_STATUSES:
            headers: list[tuple[bytes, bytes]] = []
            body = b""
        else:
            headers = [
                (b"content-type", self.content_type),
                (b"content-length", str(len(self.body)).encode()),
            ]
            # HEAD: the headers GET would send, without the body.
            body = b"" if scope.get("method") == "HEAD" else self.body
        if self.headers:
            headers.extend(self.headers)
        await send(start(scope, self.status, headers))
        await send({"type": "http.response.body", "body": body})


class StreamingResponse(Response):
    """A response whose body is sent as ``chunks`` yields it (downloads).

    ``content_length``, when known, is sent so clients see progress and can
    tell a cut-off body from a whole one; the iterator is closed in every case
    (HEAD, a client gone mid-body) so the file or connection behind it is freed.
    """

    __slots__ = ("chunks", "content_length")

    def __init__(
        self,
        status: int,
        chunks: AsyncIterator[bytes],
        content_type: bytes = b"application/octet-stream",
        headers: list[tuple[bytes, bytes]] | None = None,
        content_length: int | None = None,
    ) -> None:
        super().__init__(status, b"", content_type, headers)
        self.chunks = chunks
        self.content_length = content_length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self.content_type)]
        if self.content_length is not None:
            headers.append((b"content-length", str(self.content_length).encode()))
        headers.extend(self.headers or ())
        try:
            await send(start(scope, self.status, headers))
            if scope.get("method") != "HEAD":
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(self.chunks, "aclose", None)
            if close is not None:
                await close()


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, _encoder.encode(data))


JSONRPC_PATH = "/api/v1/jsonrpc"


def error_response(exc: AgentCoreError, path: str | None = None) -> Response:
    """The JSON error response: a JSON-RPC error object (id null) on the JSON-RPC
    path, ``{"error": {"code", "message", "type", "data"?}}`` everywhere else."""
    if path == JSONRPC_PATH:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.data:
            error["data"] = exc.data
        body = _encoder.encode({"jsonrpc": "2.0", "error": error, "id": None})
    else:
        body = _encoder.encode({"error": exc.to_dict()})
    return Response(exc.status, body, headers=list(exc.headers) or None)


#: What a check's ``admit`` gives (protection.py): None (go on), the ASGI app that
#: answers instead (a refusal), or, when deciding has to wait, a coroutine giving one of those.
Admission: TypeAlias = "ASGIApp | Coroutine[Any, Any, ASGIApp | None] | None"


def refusal(
    scope: Scope, exc: AgentCoreError, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    """The answer to a request refused before it reached its handler (the protection chain)."""
    response = error_response(exc, scope.get("path"))
    if headers:
        response.headers = [*(response.headers or ()), *headers]
    return response


async def reject(
    scope: Scope,
    send: Send,
    exc: AgentCoreError,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a request refused before it reached its handler (the protection chain)."""
    await refusal(scope, exc, headers)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
