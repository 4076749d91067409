"""The HTTP surface of the event log: ``POST /api/v1/integration/events/publish``.

A 202 means the event is durable (committed to the log): it reaches every
WebSocket/SSE subscriber of its tenant and every matching webhook, even if
the gateway is killed right after answering.

Published events cannot pass for the gateway's own: types in a system
namespace (``agent.*``, ``task.*``, ``webhook.*``, ``agentcore.*``) are refused
with 403, and the event's ``source`` names the publisher's credential
(:func:`publisher`); a ``source`` in the body is accepted, so clients that send
one keep working, and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentcore.errors import Forbidden
from agentcore.events.base import SYSTEM_TYPE_PREFIXES, is_system_type
from agentcore.events.log import EventLog
from agentcore.http import Request, Response, json_response
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.routing import Doc, Router

EventType = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$(?!\n)")
]
Source = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]

PUBLISH_PATH = "/api/v1/integration/events/publish"


class PublishRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Dotted type, e.g. ``order.created``; subscribers and webhooks match it with globs.
    event_type: EventType
    data: dict[str, Any] = {}
    #: Ignored: the event's source is the publisher's credential (see ``Published.source``).
    source: Source = "api"


class Published(msgspec.Struct, kw_only=True):
    event_id: int
    event_type: str
    timestamp: float
    #: Who published it, as subscribers and webhooks see it: ``api:<key id>``,
    #: ``jwt:<subject>``, or ``api`` with authentication off.
    source: str
    status: str = "accepted"


def publisher(identity: Identity) -> str:
    """The ``source`` of an event published by ``identity``: never one of the gateway's own
    (``registry``, ``tasks``, ``webhooks``), whatever the body says."""
    if identity.kind == "api_key":
        return f"api:{identity.subject}"
    if identity.kind == "jwt":
        return f"jwt:{identity.subject}"
    return "api"


def refuse_system_type(event_type: str) -> None:
    """Raise :class:`Forbidden` for a type in a namespace only the gateway emits."""
    if is_system_type(event_type):
        reserved = [f"{prefix}." for prefix in SYSTEM_TYPE_PREFIXES]
        raise Forbidden(
            f"event type {event_type!r} is reserved: {', '.join(reserved)}* events are "
            "emitted by the gateway only; publish under another namespace",
            data={"event_type": event_type, "reserved_prefixes": reserved},
        )


def add_routes(router: Router, log: EventLog, max_body_bytes: int) -> None:
    async def publish(request: Request) -> Response:
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("events:write")
        body = await request.json(PublishRequest, max_body_bytes)
        refuse_system_type(body.event_type)
        event = await log.publish(
            body.event_type, body.data, tenant=identity.tenant, source=publisher(identity)
        )
        return json_response(
            Published(
                event_id=event.id,
                event_type=event.type,
                timestamp=event.timestamp,
                source=event.source,
            ),
            202,
        )

    router.add(
        "POST",
        PUBLISH_PATH,
        publish,
        Doc(
            "Publish an event (durable when answered)",
            body=PublishRequest,
            response=Published,
            status=202,
            tags=("events",),
            errors={
                401: "missing or invalid credentials",
                403: "missing events:write scope, or a reserved (system) event type",
                413: "body too large",
                429: "rate limited",
            },
        ),
    )
