"""JSON-RPC 2.0: parsing, batching and dispatch (no I/O).

Follows https://www.jsonrpc.org/specification exactly, plus an HTTP mapping:

- a single call answers with the HTTP status of its error class (200 on
  success; 400 for -32700/-32600/-32602, 404 for -32601 and unknown agents or
  tasks, 409 for state conflicts), so HTTP clients see a 4xx for bad input;
- a batch answers 200 with a bare array of the responses, notifications left
  out; a batch of only notifications, or a single notification, answers 204;
- an empty batch is one -32600 error, not an array.

Params are by name (a JSON object) and are decoded straight into the method's
msgspec type; a validation failure is -32602 with msgspec's message, which
names the field (``at `$.agent_card.name```) but never echoes the input.

Valid JSON that is not a request object is -32600 with the expected shape
(:data:`SHAPE`), never -32700: a member named twice in the request object
(``"method"`` twice: a proxy may act on the first while msgspec keeps the
last), and an ``id`` number outside what an id may be (an integer beyond
64 bits, ``1e400``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

from agentcore.errors import (
    AgentCoreError,
    Forbidden,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
)
from agentcore.http import safe_message

log = logging.getLogger("agentcore.jsonrpc")

P = TypeVar("P")
#: An id number lies in the 64-bit range (what every client's JSON library
#: round-trips): an integer beyond it is refused, and so is a float, which the
#: published schema then says too (a huge integer literal is a JSON number).
_ID_RANGE = Meta(ge=-(2**63), le=2**63 - 1)
RpcId = Annotated[int, _ID_RANGE] | Annotated[float, _ID_RANGE] | str | None
#: The request object, as every -32600 answer for one explains it.
SHAPE = (
    'expected {"jsonrpc": "2.0", "method": string, "params": object (optional), '
    '"id": string, 64-bit integer, number or null (absent: a notification)}, '
    "each member at most once"
)

#: Invalid UTF-8 inside a string: msgspec before 0.23 raised UnicodeDecodeError,
#: 0.23 raises DecodeError, and only once the string is decoded (a ``Raw`` params
#: value passes the envelope unchecked), so both are caught wherever JSON is decoded.
INVALID_UTF8 = "parse error: body is not valid UTF-8"


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    """Params of a method that takes none."""


class Request(msgspec.Struct):
    jsonrpc: Literal["2.0"]
    method: str
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    id: RpcId | msgspec.UnsetType = msgspec.UNSET


class ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class Success(msgspec.Struct):
    result: Any
    id: RpcId
    jsonrpc: str = "2.0"


class Failure(msgspec.Struct):
    error: ErrorObject
    id: RpcId
    jsonrpc: str = "2.0"


Response = Success | Failure


class Context(msgspec.Struct, frozen=True):
    """What a method knows about the call beyond its params (built per request, and a
    Struct initialises faster than a frozen dataclass: performance-history.md, "HTTP
    throughput", second session)."""

    client: str = ""
    tenant: str = "default"
    #: The agent the caller is authenticated as, when it is one (protection layer).
    agent_id: str | None = None
    #: Scopes of the caller's credential; None: every scope (authentication off).
    scopes: frozenset[str] | None = None

    def require(self, scope: str) -> None:
        if self.scopes is not None and scope not in self.scopes and "admin" not in self.scopes:
            raise Forbidden(f"credential lacks the {scope!r} scope", data={"scope": scope})

    def require_agent(self, agent_id: str | None) -> None:
        """An agent-bound credential may act only as its own agent."""
        if self.agent_id is not None and agent_id != self.agent_id:
            raise Forbidden(
                f"credential of agent {self.agent_id!r} cannot act for agent {agent_id!r}",
                data={"agent_id": agent_id},
            )


@dataclass(frozen=True)
class Method(Generic[P]):
    name: str
    params: type[P]
    handler: Callable[[P, Context], Awaitable[Any]]
    result: Any = Any
    description: str = ""
    #: The credential scope the method needs (see identity.SCOPES).
    scope: str = "admin"
    _decoder: msgspec.json.Decoder[P] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_decoder", msgspec.json.Decoder(self.params))

    def decode(self, raw: msgspec.Raw | msgspec.UnsetType) -> P:
        if raw is msgspec.UNSET:
            raw = msgspec.Raw(b"{}")
        buf = bytes(raw)
        if buf[:1] != b"{":
            raise InvalidParams("params must be a JSON object (by-name parameters)")
        try:
            return self._decoder.decode(buf)
        except msgspec.ValidationError as exc:
            raise InvalidParams(f"invalid params: {safe_message(exc)}") from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ParseError(
                f"parse error: params are not valid JSON: {safe_message(exc)}"
            ) from exc


def _error(exc: AgentCoreError, rpc_id: RpcId) -> Failure:
    return Failure(ErrorObject(exc.code, exc.message, exc.data), rpc_id)


class Dispatcher:
    def __init__(self, methods: list[Method[Any]], *, max_batch_size: int = 100) -> None:
        self.methods: dict[str, Method[Any]] = {m.name: m for m in methods}
        self.max_batch_size = max_batch_size
        self._request = msgspec.json.Decoder(Request)
        self._batch = msgspec.json.Decoder(list[msgspec.Raw])
        self._encoder = msgspec.json.Encoder()

    def error_body(self, exc: AgentCoreError) -> bytes:
        """A JSON-RPC error response for a request that could not be read (id null)."""
        return self._encoder.encode(_error(exc, None))

    async def handle(self, body: bytes, context: Context) -> tuple[int, bytes | None]:
        """Answer one HTTP body: (status, encoded response or None for 204)."""
        stripped = body.lstrip()
        try:
            if stripped[:1] == b"[":
                return await self._handle_batch(stripped, context)
            request = self._decode(stripped)
        except AgentCoreError as exc:
            return exc.status, self._encoder.encode(_error(exc, None))
        status, response = await self._call(request, context)
        if request.id is msgspec.UNSET:
            return 204, None
        return status, self._encoder.encode(response)

    def _decode(self, buf: bytes) -> Request:
        try:
            request = self._request.decode(buf)
        except msgspec.ValidationError as exc:
            _require_json(buf, exc)
            raise InvalidRequest(f"invalid request: {safe_message(exc)}; {SHAPE}") from exc
        except msgspec.DecodeError as exc:
            raise ParseError("parse error: body is not valid JSON") from exc
        except UnicodeDecodeError as exc:
            raise ParseError(INVALID_UTF8) from exc
        if (  # unrolled: a generator expression would cost more than the counts
            buf.count(b'"method"') > 1
            or buf.count(b'"id"') > 1
            or buf.count(b'"params"') > 1
            or buf.count(b'"jsonrpc"') > 1
            or b"\\u00" in buf
        ):
            # Each member name counted in the body (tens of nanoseconds each on
            # a 100-byte ping); only a body naming one twice, or holding a \u00
            # escape that could spell one, is parsed again to find a duplicate.
            name = _duplicate_member(buf)
            if name is not None:
                raise InvalidRequest(f"invalid request: duplicate key `{name}`; {SHAPE}")
        return request

    async def _handle_batch(self, buf: bytes, context: Context) -> tuple[int, bytes | None]:
        try:
            items = self._batch.decode(buf)
        except msgspec.DecodeError as exc:
            err: AgentCoreError = ParseError("parse error: body is not valid JSON")
            if isinstance(exc, msgspec.ValidationError):
                err = InvalidRequest("invalid request: batch must be an array")
            raise err from exc
        if not items:
            raise InvalidRequest("invalid request: empty batch")
        if len(items) > self.max_batch_size:
            raise InvalidRequest(
                f"invalid request: batch of {len(items)} exceeds the limit of {self.max_batch_size}"
            )
        responses: list[Response] = []
        for raw in items:
            try:
                request = self._decode(bytes(raw))
            except AgentCoreError as exc:
                responses.append(_error(exc, None))
                continue
            _, response = await self._call(request, context)
            if request.id is not msgspec.UNSET:
                responses.append(response)
        if not responses:
            return 204, None
        return 200, self._encoder.encode(responses)

    async def _call(self, request: Request, context: Context) -> tuple[int, Response]:
        rpc_id: RpcId = None if request.id is msgspec.UNSET else request.id
        method = self.methods.get(request.method)
        try:
            if method is None:
                raise MethodNotFound(f"method not found: {request.method[:100]!r}")
            context.require(method.scope)
            params = method.decode(request.params)
            result = await method.handler(params, context)
        except AgentCoreError as exc:
            if exc.status >= 500:
                log.error("jsonrpc %s failed: %s", request.method, exc.message)
            return exc.status, _error(exc, rpc_id)
        except Exception:
            log.exception("jsonrpc method %s raised", request.method)
            return 500, _error(AgentCoreError("internal error"), rpc_id)
        return 200, Success(result, rpc_id)


def _require_json(buf: bytes, exc: Exception) -> None:
    """A typed decode can fail on a type before reaching malformed JSON; prefer -32700."""
    try:
        msgspec.json.decode(buf)
    except msgspec.ValidationError:
        # Valid JSON syntax so far, but a number msgspec cannot hold (1e400):
        # the stdlib parser (only on this rare path) tells whether the rest is JSON.
        try:
            json.loads(buf)
        except (ValueError, RecursionError):
            raise ParseError("parse error: body is not valid JSON") from exc
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ParseError("parse error: body is not valid JSON") from exc


def _duplicate_member(buf: bytes) -> str | None:
    """A member named twice in the top-level object of ``buf``, else None.

    The stdlib parser, because msgspec keeps the last of duplicate members
    without telling; called only when the cheap count in ``_decode`` says a
    duplicate is possible. Duplicates inside ``params`` are not looked for:
    params are decoded once, so every check and the handler see the same value.
    """
    top: list[tuple[str, Any]] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        nonlocal top
        top = items  # inner objects first: the last call is the request object

    try:
        json.loads(buf, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None  # msgspec read it; whatever the stdlib minds, the request stands
    seen: set[str] = set()
    for name, _ in top:
        if name in seen:
            return name
        seen.add(name)
    return None
