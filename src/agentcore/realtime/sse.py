"""The SSE twin of the WebSocket stream: ``GET /api/v1/events/stream`` (docs/realtime.md).

One subscription per request, given in the query: ``topics`` (comma
separated globs, default ``*``), ``task_id``, ``agent_id`` and ``since``;
the ``Last-Event-ID`` header (sent by ``EventSource`` when it reconnects)
wins over ``since``. Authentication, scopes and the tenant are the HTTP
ones; the credential is checked again every ``auth.cache_s`` while the
stream is open, and one that ended (revoked, expired) ends it with ``event:
error`` code 1008 (``connections.py``). The stream opens with ``event:
subscribed``, then sends each event as ``id: <id>`` and ``data: <the
WebSocket event object>``, a ``: heartbeat`` comment after
``realtime.sse_heartbeat_s`` of silence, and ends, when the server has to
end it (shutdown, slow consumer, a credential that ended), with a terminal
``event: error`` whose data carries the WebSocket close code and reason,
never silently.

SSE streams bypass the load shedder and the handler deadline (they are
long-lived by design); the connection's ASGI call waits for the client to
disconnect, and writes happen as for WebSockets (``connections.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

import msgspec

from agentcore.auth import credential_of
from agentcore.config import Config, RealtimeConfig
from agentcore.errors import AgentCoreError, InvalidRequest, Overloaded
from agentcore.events.base import Event
from agentcore.http import reject, safe_message, start
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.realtime.connections import Connection, Connections
from agentcore.realtime.feed import Feed, Subscribe, subscription_filter
from agentcore.types import Message, Receive, Scope, Send

SSE_PATH = "/api/v1/events/stream"
HEARTBEAT = b": heartbeat\n\n"
#: Milliseconds EventSource waits before it reconnects.
RETRY_MS = 3000
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_encoder = msgspec.json.Encoder()


def parse_query(query_string: bytes, last_event_id: bytes | None) -> Subscribe:
    """The subscription a stream request asks for; :class:`InvalidRequest` naming the parameter."""
    params: dict[str, Any] = {"type": "subscribe"}
    topics: list[str] = []
    try:
        pairs = parse_qsl(query_string.decode("latin-1"), strict_parsing=False)
    except ValueError as exc:
        raise InvalidRequest("invalid query string") from exc
    for key, value in pairs:
        if key == "topics":
            topics.extend(t.strip() for t in value.split(",") if t.strip())
        elif key in params:
            raise InvalidRequest(f"query parameter {key!r} given twice")
        else:
            params[key] = value
    if topics:
        params["topics"] = topics
    if last_event_id is not None and last_event_id.strip():
        params["since"] = last_event_id.decode("latin-1").strip()
    try:
        return msgspec.convert(params, Subscribe, strict=False)
    except msgspec.ValidationError as exc:
        message = (
            safe_message(exc)
            .replace("`$.", "`")
            .replace("Object contains unknown field", "unknown query parameter")
        )
        raise InvalidRequest(f"invalid stream request: {message}") from exc


class SseEndpoint:
    def __init__(self, connections: Connections, config: Config) -> None:
        self.connections = connections
        self.config = config.realtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity: Identity = scope.get(IDENTITY, ANONYMOUS)
        last_event_id = next((v for k, v in scope["headers"] if k == b"last-event-id"), None)
        try:
            request = parse_query(scope.get("query_string", b""), last_event_id)
            event_filter = subscription_filter(identity, request)
            if self.connections.closing:
                raise Overloaded("the server is shutting down; reconnect to another instance")
        except AgentCoreError as exc:
            await reject(scope, send, exc)
            return
        await send(start(scope, 200, list(HEADERS)))
        client = scope.get("client")
        conn = SseConnection(
            self.connections,
            identity,
            send,
            str(client[0]) if client else "",
            credential_of(scope) if identity.kind != "anonymous" else None,
        )
        self.connections.open(conn)
        try:
            await conn.serve(receive, Feed("s1", event_filter, conn), request.since)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not conn.killed or task is None:
                raise
            task.uncancel()  # dropped by the sweeper or shutdown: end quietly
        finally:
            self.connections.release(conn)


class SseConnection(Connection):
    transport = "sse"

    __slots__ = ()

    def frame(self, payload: bytes) -> Message:
        return {"type": "http.response.body", "body": payload, "more_body": True}

    def event_payload(self, feed: Feed, event: Event, body: bytes) -> bytes:
        return b'id: %d\ndata: {"type":"event",%s\n\n' % (event.id, body[1:])

    async def finish(self, code: int, reason: str) -> None:
        data = _encoder.encode({"code": code, "reason": reason})
        body = b"event: error\ndata: " + data + b"\n\n"
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def tick(self, now: float, config: RealtimeConfig) -> None:
        super().tick(now, config)
        if (
            not self.closing
            and now - max(self.last_sent, self.last_pinged) >= config.sse_heartbeat_s
        ):
            self.last_pinged = now
            self.push(HEARTBEAT)

    async def serve(self, receive: Receive, feed: Feed, since: int | None) -> None:
        """Subscribe, replay from ``since``, then stay live until the client goes away."""
        self.feeds[feed.sid] = feed
        self.hub.attach(feed)  # live events are held from here on, so none is missed
        head, truncated = await self.hub.position(since)
        if since is not None:
            feed.replayed_to = min(since, head)
        subscribed = {
            "type": "subscribed",
            "topics": list(feed.filter.patterns),
            "task_id": feed.filter.task_id,
            "agent_id": feed.filter.agent_id,
            "since": since,
            "head": head,
            "truncated": truncated,
        }
        await self.write(
            b"retry: %d\nevent: subscribed\ndata: %s\n\n" % (RETRY_MS, _encoder.encode(subscribed))
        )
        if since is not None:
            async for event in feed.replay(self.hub.log, since):
                if not await self.write_event(feed, event, live=False):
                    break
        feed.go_live()
        while (await receive())["type"] != "http.disconnect":
            pass  # the (empty) request body
        self.closed = True
