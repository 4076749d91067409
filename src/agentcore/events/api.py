"""The HTTP surface of the event log: ``POST /api/v1/integration/events/publish``.

A 202 means the event is durable (committed to the log): it reaches every
WebSocket/SSE subscriber of its tenant and every matching webhook, even if
the gateway is killed right after answering.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from agentcore.auth import ANONYMOUS, IDENTITY, Identity
from agentcore.events.log import EventLog
from agentcore.http import Request, Response, json_response
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
    source: Source = "api"


class Published(msgspec.Struct, kw_only=True):
    event_id: int
    event_type: str
    timestamp: float
    status: str = "accepted"


def add_routes(router: Router, log: EventLog, max_body_bytes: int) -> None:
    async def publish(request: Request) -> Response:
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("events:write")
        body = await request.json(PublishRequest, max_body_bytes)
        event = await log.publish(
            body.event_type, body.data, tenant=identity.tenant, source=body.source
        )
        return json_response(
            Published(event_id=event.id, event_type=event.type, timestamp=event.timestamp), 202
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
                403: "missing events:write scope",
                413: "body too large",
                429: "rate limited",
            },
        ),
    )
