"""The webhook API: ``/api/v1/integration/webhooks`` (docs/webhooks.md).

Every route needs the ``webhooks`` scope and sees only the caller's tenant's
webhooks (another tenant's id is a 404). The signing secret is returned by
creation and rotation only.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from agentcore.clock import Clock
from agentcore.config import WebhooksConfig
from agentcore.errors import InvalidParams, WebhookNotFound
from agentcore.http import Request, Response, json_response
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.models import MAX_INT64
from agentcore.routing import Doc, Router
from agentcore.webhooks import signing
from agentcore.webhooks.dispatcher import render
from agentcore.webhooks.repository import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Secret,
    Webhook,
    WebhookRepository,
    WebhookStatus,
    new_webhook_id,
)
from agentcore.webhooks.ssrf import AddressPolicy

BASE = "/api/v1/integration/webhooks"
ITEM = f"{BASE}/{{webhook_id}}"

Pattern = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.*?\[\]!-]+$(?!\n)")
]
Patterns = Annotated[list[Pattern], Meta(min_length=1, max_length=64)]
#: The SSRF policy may still refuse a URL of this shape (422 ``unsafe_url``).
Url = Annotated[str, Meta(min_length=8, max_length=2048, pattern=r"^https?://[^\s@/?#]+[^\s]*$")]
#: ``whsec_`` + base64 of 24 to 64 bytes.
SigningSecret = Annotated[
    str,
    Meta(
        pattern=r"^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
        r"|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/]{2}==)?)$"
    ),
]
HeaderName = Annotated[str, Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")]
HeaderValue = Annotated[str, Meta(max_length=1024, pattern=r"^[^\r\n\x00]*$")]
Name = Annotated[str, Meta(max_length=200)]
Description = Annotated[str, Meta(max_length=2000)]
Headers = Annotated[dict[HeaderName, HeaderValue], Meta(max_length=20)]
MaxAttempts = Annotated[int, Meta(ge=1, le=50)]
RatePerS = Annotated[float, Meta(gt=0, le=10_000)]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
#: Headers the gateway sets itself; a webhook may not override them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)


class WebhookCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url
    #: Glob patterns on event types (``order.*``, ``task.completed``, ``*``).
    events: Patterns
    name: Name = ""
    description: Description = ""
    #: ``whsec_`` + base64 of 24 to 64 bytes; generated when absent.
    secret: SigningSecret | None = None
    #: Extra headers sent with every attempt.
    headers: Headers = {}
    #: Attempts per delivery (default ``webhooks.max_attempts``).
    max_attempts: MaxAttempts | None = None
    #: Most attempts per second to this endpoint (per delivering process).
    rate_limit_per_s: RatePerS | None = None


class WebhookPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    events: Patterns | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    headers: Headers | UnsetType = UNSET
    max_attempts: MaxAttempts | UnsetType | None = UNSET
    rate_limit_per_s: RatePerS | UnsetType | None = UNSET
    #: ``active`` re-enables a disabled webhook (its failure streak starts over).
    status: WebhookStatus | UnsetType = UNSET


class WebhookView(msgspec.Struct, kw_only=True):
    id: str
    url: str
    events: list[str]
    name: str
    description: str
    headers: dict[str, str]
    max_attempts: int | None
    rate_limit_per_s: float | None
    status: str
    disabled_reason: str | None
    failing_since: float | None
    created_at: float
    updated_at: float


class WebhookCreated(WebhookView, kw_only=True):
    #: The signing secret; shown here and on rotation only.
    secret: str


class WebhookPage(msgspec.Struct, kw_only=True):
    data: list[WebhookView]
    total: int
    limit: int
    offset: int
    has_more: bool


class WebhookQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    #: Bounded by the stores' signed 64-bit integers.
    offset: Annotated[int, Meta(ge=0, le=MAX_INT64)] = 0
    status: WebhookStatus | None = None
    #: An event type: only webhooks whose patterns match it.
    event: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class WebhookRotate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: The new secret; generated when absent.
    secret: SigningSecret | None = None
    #: Seconds the old secret keeps signing (default ``webhooks.secret_grace_s``).
    grace_s: Annotated[float, Meta(ge=0, le=30 * 86400)] | None = None


class WebhookRotated(msgspec.Struct, kw_only=True):
    id: str
    secret: str
    previous_secret_expires_at: float


class WebhookLatency(msgspec.Struct, kw_only=True):
    p50: float | None
    p95: float | None
    p99: float | None


class WebhookStats(msgspec.Struct, kw_only=True):
    webhook_id: str
    status: str
    disabled_reason: str | None
    failing_since: float | None
    attempts: int
    successes: int
    failures: int
    #: successes / attempts; None before the first attempt.
    success_rate: float | None
    #: Over the latest 1000 attempts.
    latency_ms: WebhookLatency
    last_success_at: float | None
    last_failure_at: float | None
    #: Outbox rows by status (pending, delivering, succeeded, dead).
    deliveries: dict[str, int]


class WebhookAttempt(msgspec.Struct, kw_only=True):
    attempt: int
    at: float
    status_code: int | None
    duration_ms: float
    error: str | None


class WebhookDelivery(msgspec.Struct, kw_only=True):
    #: The ``webhook-id`` header of every attempt.
    id: str
    event_id: int | None
    event_type: str
    status: str
    attempts: int
    #: Epoch seconds; None once succeeded or dead.
    next_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    attempt_log: list[WebhookAttempt]


class WebhookDeliveryPage(msgspec.Struct, kw_only=True):
    data: list[WebhookDelivery]
    limit: int
    offset: int
    has_more: bool


class WebhookDeliveryQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=200)] = 50
    offset: Annotated[int, Meta(ge=0, le=MAX_INT64)] = 0
    status: DeliveryStatus | None = None


class WebhookReplay(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Events at or after this time (epoch seconds).
    since: float | None = None
    #: Events before this time (epoch seconds).
    until: float | None = None
    #: Events after this event id (a cursor).
    after_event_id: Annotated[int, Meta(ge=0, le=MAX_INT64)] | None = None
    #: Only deliveries that are dead (attempts exhausted), in [since, until).
    only_failed: bool = False
    #: Most events re-sent.
    limit: Annotated[int, Meta(ge=1, le=100_000)] = 10_000


class WebhookReplayed(msgspec.Struct, kw_only=True):
    queued: int


class WebhookTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data: dict[str, Any] = {}


class WebhookTestQueued(msgspec.Struct, kw_only=True):
    delivery_id: str
    event_type: str
    status: str


def _view(w: Webhook) -> WebhookView:
    return WebhookView(
        id=w.id,
        url=w.url,
        events=w.events,
        name=w.name,
        description=w.description,
        headers=w.headers,
        max_attempts=w.max_attempts,
        rate_limit_per_s=w.rate_limit_per_s,
        status=w.status,
        disabled_reason=w.disabled_reason,
        failing_since=w.failing_since,
        created_at=w.created_at,
        updated_at=w.updated_at,
    )


def _delivery_view(d: Delivery, attempts: list[Attempt]) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status in ("pending", "delivering") else None,
        last_status=d.last_status,
        last_error=d.last_error,
        created_at=d.created_at,
        updated_at=d.updated_at,
        attempt_log=[
            WebhookAttempt(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
            )
            for a in attempts
        ],
    )


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _check_secret(secret: str) -> str:
    try:
        signing.secret_key(secret)
    except ValueError as exc:
        raise InvalidParams(f"invalid body: secret: {exc}") from exc
    return secret


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise InvalidParams(f"invalid body: headers: bad header name {name[:64]!r}")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidParams(f"invalid body: headers: {name!r} is set by the gateway")
        if len(value) > 1024 or any(c in value for c in "\r\n\x00"):
            raise InvalidParams(f"invalid body: headers: bad value for {name!r}")
    return headers


class WebhookApi:
    def __init__(
        self,
        store: WebhookRepository,
        policy: AddressPolicy,
        config: WebhooksConfig,
        clock: Clock,
        max_body_bytes: int,
    ) -> None:
        self._store = store
        self._policy = policy
        self._config = config
        self._clock = clock
        self._max_body = max_body_bytes

    async def _find(self, request: Request) -> tuple[Identity, Webhook]:
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("webhooks")
        webhook_id = request.path_params["webhook_id"]
        webhook = await self._store.get(webhook_id, identity.tenant)
        if webhook is None:
            raise WebhookNotFound(f"no webhook {webhook_id[:64]!r}")
        return identity, webhook

    async def _optional_body(self, request: Request, kind: type[Any]) -> Any:
        body = await request.body(self._max_body)
        if not body.strip():
            return kind()
        return await request.json(kind, self._max_body)

    async def create(self, request: Request) -> Response:
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("webhooks")
        body = await request.json(WebhookCreate, self._max_body)
        secret = _check_secret(body.secret) if body.secret else signing.generate_secret()
        await self._policy.check_registration(body.url)
        now = self._clock()
        webhook = await self._store.create(
            Webhook(
                id=new_webhook_id(),
                tenant=identity.tenant,
                url=body.url,
                events=list(dict.fromkeys(body.events)),
                name=body.name,
                description=body.description,
                secrets=[Secret(secret)],
                headers=_check_headers(body.headers),
                max_attempts=body.max_attempts,
                rate_limit_per_s=body.rate_limit_per_s,
                created_at=now,
                updated_at=now,
            )
        )
        view = msgspec.structs.asdict(_view(webhook))
        return json_response(WebhookCreated(**view, secret=secret), 201)

    async def index(self, request: Request) -> Response:
        identity: Identity = request.scope.get(IDENTITY, ANONYMOUS)
        identity.require("webhooks")
        query = request.query(WebhookQuery)
        if query.event is None:  # paged in SQL
            page, total = await self._store.page(
                identity.tenant, query.status, query.limit, query.offset
            )
        else:  # glob patterns are matched here, so this filter reads every webhook
            found = [
                w
                for w in await self._store.for_tenant(identity.tenant, query.status)
                if w.matches(query.event)
            ]
            page, total = found[query.offset : query.offset + query.limit], len(found)
        return json_response(
            WebhookPage(
                data=[_view(w) for w in page],
                total=total,
                limit=query.limit,
                offset=query.offset,
                has_more=query.offset + len(page) < total,
            )
        )

    async def get(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        return json_response(_view(webhook))

    async def patch(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        body = await request.json(WebhookPatch, self._max_body)
        changes: dict[str, Any] = {
            f: getattr(body, f)
            for f in body.__struct_fields__
            if getattr(body, f) is not UNSET and f != "status"
        }
        if "url" in changes:
            await self._policy.check_registration(changes["url"])
        if "headers" in changes:
            _check_headers(changes["headers"])
        if "events" in changes:
            changes["events"] = list(dict.fromkeys(changes["events"]))
        if body.status == "active" and webhook.status != "active":
            changes.update(status="active", disabled_reason=None, failing_since=None)
        elif body.status == "disabled" and webhook.status != "disabled":
            changes.update(status="disabled", disabled_reason="disabled through the API")
        updated = msgspec.structs.replace(webhook, **changes, updated_at=self._clock())
        if not await self._store.replace(updated):
            raise WebhookNotFound(f"no webhook {webhook.id!r}")
        return json_response(_view(updated))

    async def delete(self, request: Request) -> Response:
        identity, webhook = await self._find(request)
        if not await self._store.delete(webhook.id, identity.tenant):
            raise WebhookNotFound(f"no webhook {webhook.id!r}")
        return Response(204)

    async def rotate(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        body: WebhookRotate = await self._optional_body(request, WebhookRotate)
        secret = _check_secret(body.secret) if body.secret else signing.generate_secret()
        now = self._clock()
        grace = self._config.secret_grace_s if body.grace_s is None else body.grace_s
        expires = now + grace
        kept = [
            Secret(s.secret, expires if s.expires_at is None else min(s.expires_at, expires))
            for s in webhook.secrets
            if s.expires_at is None or s.expires_at > now
        ]
        # The new one first; at most two older ones keep signing.
        rotated = msgspec.structs.replace(
            webhook, secrets=[Secret(secret), *kept[:2]], updated_at=now
        )
        if not await self._store.replace(rotated):
            raise WebhookNotFound(f"no webhook {webhook.id!r}")
        return json_response(
            WebhookRotated(id=webhook.id, secret=secret, previous_secret_expires_at=expires)
        )

    async def stats(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        stats = await self._store.stats(webhook.id)
        durations = sorted(stats.recent_durations_ms)
        return json_response(
            WebhookStats(
                webhook_id=webhook.id,
                status=webhook.status,
                disabled_reason=webhook.disabled_reason,
                failing_since=webhook.failing_since,
                attempts=stats.attempts,
                successes=stats.successes,
                failures=stats.failures,
                success_rate=(
                    round(stats.successes / stats.attempts, 4) if stats.attempts else None
                ),
                latency_ms=WebhookLatency(
                    p50=_percentile(durations, 0.50),
                    p95=_percentile(durations, 0.95),
                    p99=_percentile(durations, 0.99),
                ),
                last_success_at=stats.last_success_at,
                last_failure_at=stats.last_failure_at,
                deliveries=stats.deliveries,
            )
        )

    async def deliveries(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        query = request.query(WebhookDeliveryQuery)
        rows = await self._store.deliveries(webhook.id, query.status, query.limit + 1, query.offset)
        page = rows[: query.limit]
        attempts = await self._store.attempts([d.id for d in page])
        return json_response(
            WebhookDeliveryPage(
                data=[_delivery_view(d, attempts[d.id]) for d in page],
                limit=query.limit,
                offset=query.offset,
                has_more=len(rows) > query.limit,
            )
        )

    async def replay(self, request: Request) -> Response:
        identity, webhook = await self._find(request)
        body = await request.json(WebhookReplay, self._max_body)
        now = self._clock()
        if body.only_failed:
            queued = await self._store.requeue_dead(webhook.id, now, body.since, body.until)
            return json_response(WebhookReplayed(queued=queued), 202)
        if body.since is None and body.after_event_id is None:
            raise InvalidParams("invalid body: give since, after_event_id or only_failed")
        cursor = body.after_event_id or 0
        queued = 0
        seen = 0
        while seen < body.limit:
            events = await self._store.events(
                identity.tenant, cursor, min(1000, body.limit - seen), body.since, body.until
            )
            if not events:
                break
            seen += len(events)
            cursor = events[-1].id
            batch = [
                Delivery.pending(
                    webhook,
                    e.id,
                    e.type,
                    render(e.type, e.timestamp, e.data, event_id=e.id, source=e.source),
                    now,
                )
                for e in events
                if webhook.matches(e.type)
            ]
            queued += await self._store.requeue(batch)
        return json_response(WebhookReplayed(queued=queued), 202)

    async def test(self, request: Request) -> Response:
        _, webhook = await self._find(request)
        body: WebhookTest = await self._optional_body(request, WebhookTest)
        now = self._clock()
        data = {"webhook_id": webhook.id, "message": "test event from agentcore", **body.data}
        payload = render("webhook.test", now, msgspec.json.encode(data).decode())
        delivery = Delivery.pending(webhook, None, "webhook.test", payload, now)
        await self._store.enqueue(delivery)
        return json_response(
            WebhookTestQueued(delivery_id=delivery.id, event_type="webhook.test", status="pending"),
            202,
        )


def add_routes(
    router: Router,
    store: WebhookRepository,
    policy: AddressPolicy,
    config: WebhooksConfig,
    clock: Clock,
    max_body_bytes: int,
) -> WebhookApi:
    api = WebhookApi(store, policy, config, clock, max_body_bytes)
    tags = ("webhooks",)
    auth = {401: "missing or invalid credentials", 403: "missing webhooks scope"}
    missing = {**auth, 404: "no such webhook (for this tenant)"}
    router.add(
        "POST",
        BASE,
        api.create,
        Doc(
            "Register a webhook (the response holds its signing secret)",
            body=WebhookCreate,
            response=WebhookCreated,
            status=201,
            tags=tags,
            errors={**auth, 400: "invalid body", 422: "URL refused (SSRF policy)"},
        ),
    )
    router.add(
        "GET",
        BASE,
        api.index,
        Doc("List webhooks", query=WebhookQuery, response=WebhookPage, tags=tags, errors=auth),
    )
    router.add(
        "GET", ITEM, api.get, Doc("Get a webhook", response=WebhookView, tags=tags, errors=missing)
    )
    router.add(
        "PATCH",
        ITEM,
        api.patch,
        Doc(
            "Change a webhook (status active re-enables it)",
            body=WebhookPatch,
            response=WebhookView,
            tags=tags,
            errors={**missing, 400: "invalid body", 422: "URL refused (SSRF policy)"},
        ),
    )
    router.add(
        "DELETE",
        ITEM,
        api.delete,
        Doc("Delete a webhook, its outbox and attempt log", status=204, tags=tags, errors=missing),
    )
    router.add(
        "POST",
        f"{ITEM}/rotate-secret",
        api.rotate,
        Doc(
            "Rotate the signing secret (the old one signs too for a grace period)",
            body=WebhookRotate,
            response=WebhookRotated,
            tags=tags,
            errors=missing,
        ),
    )
    router.add(
        "GET",
        f"{ITEM}/stats",
        api.stats,
        Doc("Delivery statistics", response=WebhookStats, tags=tags, errors=missing),
    )
    router.add(
        "GET",
        f"{ITEM}/deliveries",
        api.deliveries,
        Doc(
            "Deliveries with their attempt log, newest first",
            query=WebhookDeliveryQuery,
            response=WebhookDeliveryPage,
            tags=tags,
            errors=missing,
        ),
    )
    router.add(
        "POST",
        f"{ITEM}/replay",
        api.replay,
        Doc(
            "Re-send events since/until a time or after an event id, or the dead deliveries",
            body=WebhookReplay,
            response=WebhookReplayed,
            status=202,
            tags=tags,
            errors={**missing, 400: "invalid body"},
        ),
    )
    router.add(
        "POST",
        f"{ITEM}/test",
        api.test,
        Doc(
            "Send a webhook.test event",
            body=WebhookTest,
            response=WebhookTestQueued,
            status=202,
            tags=tags,
            errors=missing,
        ),
    )
    return api
