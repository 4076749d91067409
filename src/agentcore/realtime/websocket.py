"""The WebSocket event stream, ``/api/v1/ws/events``: a JSON message protocol (docs/realtime.md).

Every message is one JSON object in a text frame with a ``type``. Client:
``auth``, ``subscribe``, ``unsubscribe``, ``ping``, ``pong``, ``rpc``.
Server: ``authenticated``, ``subscribed``, ``unsubscribed``, ``event``,
``pong``, ``ping``, ``rpc_result``, ``rpc_error``, ``error``. A request may
carry an ``id`` (number or string), echoed in its answer. A message the
server cannot use is answered with ``error`` and the connection stays open;
only oversize messages (1009), authentication failures and persistent
flooding (1008) close it.

Authentication is the HTTP one: credential headers (checked by the auth
protection chain), or, when there are none, ``{"type": "auth", "token": ...}`` as
the first message within ``realtime.auth_timeout_s``. The connection acts
with that identity throughout: its tenant bounds every subscription, and
``rpc`` calls go through the JSON-RPC dispatcher with the same scopes and
agent binding as over HTTP. The credential is checked again before every
client message is acted on, and every ``auth.cache_s`` while events flow
(``connections.py``): once it has ended (a revoked key, an expired JWT) the
connection closes with 1008.

While the connection is idle its ASGI call, which reads client messages,
is its only task (see ``connections.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from agentcore.auth import Authenticator, credential_of
from agentcore.config import Config, RealtimeConfig
from agentcore.errors import (
    AgentCoreError,
    ClientError,
    HandlerTimeout,
    InvalidParams,
    InvalidRequest,
    ParseError,
    RateLimited,
    Unauthorized,
)
from agentcore.events.base import Event
from agentcore.http import safe_message
from agentcore.identity import IDENTITY, Identity
from agentcore.jsonrpc import Context, Dispatcher
from agentcore.metrics import Metrics
from agentcore.ratelimit.base import Limit, gcra
from agentcore.realtime.connections import Connection, Connections, close_reason
from agentcore.realtime.feed import Feed, Subscribe, subscription_filter
from agentcore.types import Message, Receive, Scope, Send

log = logging.getLogger("agentcore.realtime")

WS_PATH = "/api/v1/ws/events"
PING = b'{"type":"ping"}'

RpcId = int | str | None


class _ClientMessage(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    id: RpcId = None


class Auth(_ClientMessage, tag="auth", kw_only=True):
    token: str


class Unsubscribe(_ClientMessage, tag="unsubscribe", kw_only=True):
    #: The id from ``subscribed``; None: every subscription.
    subscription: str | None = None


class Ping(_ClientMessage, tag="ping", kw_only=True):
    pass


class Pong(_ClientMessage, tag="pong", kw_only=True):
    pass


class Rpc(_ClientMessage, tag="rpc", kw_only=True):
    method: str
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


ClientMessage = Auth | Subscribe | Unsubscribe | Ping | Pong | Rpc
MESSAGE_TYPES = ("auth", "subscribe", "unsubscribe", "ping", "pong", "rpc")


class _Envelope(msgspec.Struct):
    """Enough of a malformed message to echo its id."""

    id: Any = None


class _JsonRpcCall(msgspec.Struct):
    method: str
    params: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    jsonrpc: str = "2.0"
    id: int = 0


class _JsonRpcReply(msgspec.Struct):
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_decoder = msgspec.json.Decoder(ClientMessage)
_envelope = msgspec.json.Decoder(_Envelope)
_reply = msgspec.json.Decoder(_JsonRpcReply)
_encoder = msgspec.json.Encoder()


def parse(text: str) -> ClientMessage:
    """Decode one client message; :class:`ParseError`, or :class:`InvalidRequest` naming why."""
    try:
        message: ClientMessage = _decoder.decode(text)
    except msgspec.ValidationError as exc:
        why = safe_message(exc)
        if "`$.type`" in why or "missing required field `type`" in why:
            why = f"{why}; expected one of: {', '.join(MESSAGE_TYPES)}"
        raise InvalidRequest(f"invalid message: {why}") from exc
    except msgspec.DecodeError as exc:
        raise ParseError("parse error: a message must be one JSON object") from exc
    return message


def request_id(text: str) -> RpcId:
    """The ``id`` of a message that failed to parse, when it has a usable one."""
    try:
        found = _envelope.decode(text).id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return found if isinstance(found, int | str) and not isinstance(found, bool) else None


def error_message(exc: AgentCoreError, rpc_id: RpcId = None) -> bytes:
    return _encoder.encode({"type": "error", "id": rpc_id, "error": exc.to_dict()})


class WebSocketEndpoint:
    """The ASGI app for :data:`WS_PATH` (authentication already ran in the protection chain)."""

    def __init__(
        self,
        connections: Connections,
        authenticator: Authenticator | None,
        dispatcher: Dispatcher,
        config: Config,
        metrics: Metrics | None = None,
    ) -> None:
        self.connections = connections
        self.authenticator = authenticator
        self.dispatcher = dispatcher
        self.config = config.realtime
        self.handler_timeout_s = config.limits.handler_timeout_s
        self.metrics = metrics
        self.limit = Limit(
            "ws-messages", self.config.client_messages_per_s, self.config.client_messages_burst
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        if self.connections.closing:
            await send({"type": "websocket.close", "code": 1001, "reason": "server shutting down"})
            return
        identity: Identity | None = scope.get(IDENTITY)
        credential = credential_of(scope) if self.authenticator is not None else None
        if identity is None:
            authenticated = await self._authenticate(receive, send)
            if authenticated is None:
                return
            identity, credential = authenticated
        client = scope.get("client")
        conn = WebSocketConnection(
            self, identity, send, str(client[0]) if client else "", credential
        )
        self.connections.open(conn)
        try:
            await conn.serve(receive)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not conn.killed or task is None:
                raise
            task.uncancel()  # dropped by the sweeper or shutdown: end quietly
        finally:
            self.connections.release(conn)

    async def _authenticate(self, receive: Receive, send: Send) -> tuple[Identity, str] | None:
        """First-message authentication: the identity and its credential; closes with
        1008 (1011: store down) and returns None."""
        timeout = self.config.auth_timeout_s
        try:
            async with asyncio.timeout(timeout):
                message = await receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            parsed = parse(text) if text is not None else None
            if not isinstance(parsed, Auth):
                raise Unauthorized(
                    'authenticate first: send {"type": "auth", "token": "<key or JWT>"} '
                    "or credential headers"
                )
            assert self.authenticator is not None  # without one every caller has an identity
            identity = await self.authenticator.authenticate(parsed.token)
        except TimeoutError:
            if self.metrics is not None:
                self.metrics.unauthorized.labels("missing").inc()
            await _close(
                send, 1008, f"authentication timeout: no auth message within {timeout:g} s"
            )
            return None
        except ClientError as exc:
            if self.metrics is not None:
                self.metrics.unauthorized.labels("invalid").inc()
            await _close(send, 1008, exc.message)
            return None
        except AgentCoreError as exc:  # the store is unavailable
            await _close(send, 1011, exc.message)
            return None
        reply = {
            "type": "authenticated",
            "id": parsed.id,
            "tenant": identity.tenant,
            "agent_id": identity.agent_id,
            "scopes": None if identity.scopes is None else sorted(identity.scopes),
        }
        await send({"type": "websocket.send", "text": _encoder.encode(reply).decode()})
        return identity, parsed.token


async def _close(send: Send, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})


class WebSocketConnection(Connection):
    transport = "websocket"

    __slots__ = (
        "_busy",
        "_close_pending",
        "_next_sid",
        "_reading",
        "_refused",
        "_tat",
        "endpoint",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        identity: Identity,
        send: Send,
        client: str,
        credential: str | None = None,
    ) -> None:
        super().__init__(endpoint.connections, identity, send, client, credential)
        self.endpoint = endpoint
        self._next_sid = 1
        #: Rate limit state (GCRA theoretical arrival time) and refusals in a row.
        self._tat = 0.0
        self._refused = 0
        #: True while a message is being answered (a replay, an rpc): not idle.
        self._busy = False
        #: True while the ASGI task waits in ``receive()``.
        self._reading = False
        #: The close the ASGI task is to write once interrupted (see :meth:`finish`).
        self._close_pending: tuple[int, str] | None = None

    # -- framing -------------------------------------------------------------------

    def frame(self, payload: bytes) -> Message:
        return {"type": "websocket.send", "text": payload.decode()}

    def event_payload(self, feed: Feed, event: Event, body: bytes) -> bytes:
        return b'{"type":"event","subscription":"' + feed.sid.encode() + b'",' + body[1:]

    async def finish(self, code: int, reason: str) -> None:
        if self._reading and self.task is not None:
            # Granian (2.8) loses a close written while another task waits in
            # receive(): the wait ends as a disconnect, no close frame is sent and
            # the socket stays open. So the waiting task is interrupted and writes
            # the close itself (serve), which works under any server.
            self._close_pending = (code, reason)
            self.task.cancel()
            return
        await self._write_close(code, reason)

    async def _write_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(OSError):  # gone already
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def tick(self, now: float, config: RealtimeConfig) -> None:
        super().tick(now, config)
        if self.closing or self._busy:
            return
        quiet = now - self.last_heard
        if quiet >= config.idle_timeout_s:
            self.close(1000, f"idle timeout: no message for {config.idle_timeout_s:g} s")
        elif quiet >= config.ping_interval_s and now - self.last_pinged >= config.ping_interval_s:
            self.last_pinged = now
            self.push(PING)

    async def reply(self, message: dict[str, Any]) -> None:
        await self.write(_encoder.encode(message))

    # -- reading -------------------------------------------------------------------

    async def serve(self, receive: Receive) -> None:
        """Read and answer client messages until the connection ends."""
        limit = self.endpoint.config.max_message_bytes
        while True:
            self._reading = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                self._reading = False
                pending = self._close_pending
                task = asyncio.current_task()
                # Not finish()'s interruption alone (a kill, the server): end.
                if pending is None or self.killed or task is None or task.uncancel() > 0:
                    raise
                self._close_pending = None  # write the close, then await the reply
                await self._write_close(*pending)
                continue
            self._reading = False
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return
            self.last_heard = self.hub.now()
            # The size limit holds here whatever the server enforces while reading
            # (uvicorn refuses first; Granian hands over whatever it received).
            text: str | None = message.get("text")
            if text is None:
                if len(message.get("bytes") or b"") > limit:
                    self.close(1009, f"message larger than {limit} bytes")
                else:
                    await self.write(
                        error_message(
                            InvalidRequest("binary frames are not accepted: send JSON text")
                        )
                    )
                continue
            if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
                self.close(1009, f"message larger than {limit} bytes")
                continue
            if self.closing or not await self._allow():
                continue
            self._busy = True
            try:
                await self.handle(text)
            finally:
                self._busy = False
                self.last_heard = self.hub.now()  # client messages waited meanwhile

    async def _allow(self) -> bool:
        """The client message rate limit: an ``error`` when over it, 1008 when it persists."""
        limit = self.endpoint.limit
        decision, tat = gcra(self._tat, self.hub.now(), limit)
        if tat is not None:
            self._tat = tat
            self._refused = 0
            return True
        self._refused += 1
        if self._refused > limit.burst:
            self.close(1008, "message rate limit exceeded")
            return False
        retry = round(decision.retry_after_s, 3)
        await self.write(
            error_message(
                RateLimited(
                    f"over {limit.rate:g} messages/s (burst {limit.burst}); message dropped",
                    data={"retry_after_s": retry},
                )
            )
        )
        return False

    async def handle(self, text: str) -> None:
        """Answer one client message; errors become ``error`` messages."""
        message: ClientMessage | None = None
        try:
            message = parse(text)
            if not await self.hub.authorize(self):
                return  # the credential ended: closing with 1008
            if isinstance(message, Ping):
                await self.reply({"type": "pong", "id": message.id})
            elif isinstance(message, Pong):
                pass  # its arrival is the point (last_heard)
            elif isinstance(message, Subscribe):
                await self.subscribe(message)
            elif isinstance(message, Unsubscribe):
                await self.unsubscribe(message)
            elif isinstance(message, Rpc):
                await self.rpc(message)
            else:
                raise InvalidRequest("already authenticated")
        except AgentCoreError as exc:
            rpc_id = message.id if message is not None else request_id(text)
            await self.write(error_message(exc, rpc_id))

    # -- requests ------------------------------------------------------------------

    async def subscribe(self, request: Subscribe) -> None:
        maximum = self.endpoint.config.max_subscriptions
        if len(self.feeds) >= maximum:
            raise InvalidRequest(f"at most {maximum} subscriptions per connection")
        event_filter = subscription_filter(self.identity, request)
        sid = f"s{self._next_sid}"
        self._next_sid += 1
        feed = Feed(sid, event_filter, self)
        self.feeds[sid] = feed
        self.hub.attach(feed)  # live events are held from here on, so none is missed
        head, truncated = await self.hub.position(request.since)
        if request.since is not None:
            feed.replayed_to = min(request.since, head)
        await self.reply(
            {
                "type": "subscribed",
                "id": request.id,
                "subscription": sid,
                "topics": list(event_filter.patterns),
                "task_id": event_filter.task_id,
                "agent_id": event_filter.agent_id,
                "since": request.since,
                "head": head,
                "truncated": truncated,
            }
        )
        if request.since is not None:
            async for event in feed.replay(self.hub.log, request.since):
                if not await self.write_event(feed, event, live=False):
                    break
        feed.go_live()

    async def unsubscribe(self, request: Unsubscribe) -> None:
        if request.subscription is None:
            ended = list(self.feeds)
        elif request.subscription in self.feeds:
            ended = [request.subscription]
        else:
            raise InvalidParams(f"no subscription {request.subscription[:40]!r}")
        for sid in ended:
            self.hub.detach(self.feeds.pop(sid))
        await self.reply({"type": "unsubscribed", "id": request.id, "subscriptions": ended})

    async def rpc(self, request: Rpc) -> None:
        """One JSON-RPC call through the dispatcher, as this connection's identity."""
        identity = self.identity
        context = Context(
            client=self.client,
            tenant=identity.tenant,
            agent_id=identity.agent_id,
            scopes=identity.scopes,
        )
        body = _encoder.encode(_JsonRpcCall(request.method, request.params))
        timeout = self.endpoint.handler_timeout_s
        try:
            async with asyncio.timeout(timeout):
                _, payload = await self.endpoint.dispatcher.handle(body, context)
        except TimeoutError:
            raise HandlerTimeout(f"the call took longer than {timeout:g} s") from None
        assert payload is not None  # the call has an id, so it is answered
        answer = _reply.decode(payload)
        if answer.error is not msgspec.UNSET:
            await self.reply({"type": "rpc_error", "id": request.id, "error": answer.error})
        else:
            await self.reply({"type": "rpc_result", "id": request.id, "result": answer.result})
