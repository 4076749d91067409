"""Webhooks, the outbox and the attempt log (:class:`WebhookRepository`): in the
gateway's database (:class:`SqlWebhooks`) or in this process's memory
(:class:`MemoryWebhooks`).

SQL tables of migration 4 (``store/schema.py``): ``webhooks``;
``webhook_deliveries``, the outbox, one row per (webhook, event) (unique, so
matching an event twice adds nothing) whose id is the ``webhook-id`` header
of every attempt; ``webhook_attempts``, one row per attempt;
``webhook_cursor``, the last event the dispatcher has matched (row
``dispatcher``) and the number of changes made to webhooks (row
``webhooks``, see :class:`WebhooksVersion`). In memory a
:class:`WebhookTable` holds the same rows, and the dispatcher reads the
event log's :class:`~agentcore.events.repository.EventTable`.

A delivery is ``pending`` (due at ``next_attempt_at``), ``delivering``
(claimed by one worker until ``lease_until``), ``succeeded`` or ``dead``
(attempts exhausted, or the endpoint answered 410). A worker that dies
mid-attempt leaves a lease that expires; another worker then takes the
delivery over. In SQL, claiming is one ``UPDATE ... RETURNING`` whose outer
condition repeats the inner one, so two workers (processes, machines) never
hold the same delivery: on PostgreSQL the second waits for the first's row
lock and then re-checks the row, on SQLite the writer lock serialises them.
In memory, every method reads and writes without awaiting in between, so
each is atomic on the event loop as a statement or transaction is in the
database; only this process sees the rows.

Every method takes ``now`` (epoch seconds) from the caller's clock.
"""

from __future__ import annotations

import asyncio
import heapq
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import msgspec

from agentcore.entropy import random_bytes
from agentcore.errors import ConfigError
from agentcore.events.base import Event
from agentcore.events.patterns import matches
from agentcore.events.repository import EventTable
from agentcore.store.database import Database
from agentcore.store.memory import MemoryDatabase
from agentcore.store.sql import json_text
from agentcore.webhooks.secretbox import SecretBox, is_sealed

WebhookStatus = Literal["active", "disabled"]
DeliveryStatus = Literal["pending", "delivering", "succeeded", "dead"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivering", "succeeded", "dead")


class Secret(msgspec.Struct, frozen=True):
    secret: str
    #: None: the current secret; else epoch seconds after which it stops signing.
    expires_at: float | None = None


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    url: str
    #: Glob patterns on the event type; any may match.
    events: list[str]
    name: str = ""
    description: str = ""
    #: Newest first: the current secret, then rotated ones still in their grace period.
    secrets: list[Secret]
    #: Extra request headers sent with every attempt.
    headers: dict[str, str] = {}
    max_attempts: int | None = None
    rate_limit_per_s: float | None = None
    status: WebhookStatus = "active"
    disabled_reason: str | None = None
    #: Epoch seconds of the first failure since the last success.
    failing_since: float | None = None
    #: Events with a higher id are delivered (the log's head at creation).
    after_event_id: int = 0
    created_at: float
    updated_at: float

    def matches(self, event_type: str) -> bool:
        return matches(event_type, self.events)

    def signing_secrets(self, now: float) -> list[str]:
        return [s.secret for s in self.secrets if s.expires_at is None or s.expires_at > now]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    webhook_id: str
    tenant: str
    event_id: int | None
    event_type: str
    #: The exact request body, the same bytes on every attempt.
    payload: str
    status: DeliveryStatus
    #: Attempts ever made (numbering of the attempt log).
    attempts: int
    #: Attempts since it was last (re)queued; the retry schedule's position.
    tries: int
    next_attempt_at: float
    lease_owner: str | None = None
    last_status: int | None = None
    last_error: str | None = None
    created_at: float
    updated_at: float

    @classmethod
    def pending(
        cls,
        webhook: Webhook,
        event_id: int | None,
        event_type: str,
        payload: str,
        now: float,
        *,
        delay_s: float = 0.0,
    ) -> Delivery:
        """A new outbox row of ``webhook``, not yet attempted, due ``delay_s`` after ``now``.

        ``payload`` is the rendered body every attempt sends; ``event_id`` is
        None for an event that is not in the log (``webhook.test``).
        """
        return cls(
            id=new_delivery_id(now),
            webhook_id=webhook.id,
            tenant=webhook.tenant,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            status="pending",
            attempts=0,
            tries=0,
            next_attempt_at=now + delay_s,
            created_at=now,
            updated_at=now,
        )


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    attempt: int
    webhook_id: str
    at: float
    status_code: int | None
    ok: bool
    duration_ms: float
    error: str | None = None


class EventRow(msgspec.Struct, frozen=True):
    """An event as the dispatcher needs it: ``data`` stays the stored JSON text."""

    id: int
    type: str
    timestamp: float
    source: str
    tenant: str
    data: str


class WebhooksVersion(msgspec.Struct, frozen=True):
    """What a cached copy of the active webhooks is checked against (``dispatcher.py``).

    ``changes`` (row ``webhooks`` of ``webhook_cursor``) counts every change
    that can remove an active webhook or alter what it matches (delete,
    replace, disable), made in the changing transaction. Creation does not
    count there (a registration stays one statement); it shows in
    ``active``, which only creation and re-enabling (a replace) raise. So
    with ``changes`` equal, the active webhooks are those of the copy plus
    ``active - len(copy)`` new ones.
    """

    #: Active webhooks.
    active: int
    changes: int
    #: The event log's head.
    head: int


class Batch(msgspec.Struct, frozen=True):
    """Events for the dispatcher, read in one snapshot with the webhooks' version.

    So the version counts every webhook committed before any of the events;
    ids commit in order, so the events are a gap-free run after ``cursor``.
    """

    cursor: int
    events: list[EventRow]
    version: WebhooksVersion


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int
    successes: int
    failures: int
    last_success_at: float | None
    last_failure_at: float | None
    #: Durations (ms) of the most recent attempts, newest first.
    recent_durations_ms: list[float]
    deliveries: dict[str, int]


#: Webhooks created by one repository kept for its process's dispatcher (the oldest are
#: dropped past it; the dispatcher then finds them by their ids).
CREATED_KEPT = 4096


def new_webhook_id() -> str:
    return "wh_" + random_bytes.take(12).hex()


def new_delivery_id(now: float) -> str:
    """``msg_`` + milliseconds (sortable by creation) + randomness."""
    return f"msg_{int(now * 1000):011x}{random_bytes.take(8).hex()}"


def _disabled_reason(gone: bool, failing_since: float) -> str:
    if gone:
        return "the endpoint answered 410 Gone"
    return f"failing continuously since {failing_since:.0f} (epoch s)"


class WebhookRepository(Protocol):
    # -- webhooks -------------------------------------------------------------

    async def create(self, webhook: Webhook) -> Webhook:
        """Insert ``webhook``; returned as stored, with ``after_event_id`` set to the
        event log's current head (whatever ``webhook`` had)."""

    def take_created(self) -> list[Webhook]:
        """The webhooks this repository created (committed) since the last call, oldest first.

        At most :data:`CREATED_KEPT`; older ones are dropped.
        """

    async def seal(self) -> int:
        """Encrypt signing secrets stored in clear text (by an older version) and check
        that the stored ones open with this process's key; how many webhooks were
        sealed. Run at startup; :class:`ConfigError` names a wrong key."""

    async def active(self, ids: Sequence[str] | None = None) -> list[Webhook]:
        """The active webhooks (of ``ids`` when given), ordered by id."""

    async def active_ids(self) -> list[str]:
        """In no particular order."""

    async def get(self, webhook_id: str, tenant: str | None = None) -> Webhook | None:
        """The webhook; None when unknown or (with ``tenant``) another tenant's."""

    async def for_tenant(self, tenant: str, status: WebhookStatus | None = None) -> list[Webhook]:
        """The tenant's webhooks, oldest first (``created_at``, then id)."""

    async def page(
        self, tenant: str, status: WebhookStatus | None, limit: int, offset: int
    ) -> tuple[list[Webhook], int]:
        """One page of the tenant's webhooks in the order of :meth:`for_tenant`, and how
        many there are in all."""

    async def replace(self, webhook: Webhook) -> bool:
        """Store every field of ``webhook`` but its id, tenant, cursor and creation time;
        False when there is no such webhook of its tenant."""

    async def delete(self, webhook_id: str, tenant: str) -> bool:
        """Delete the webhook with its outbox rows and attempt log."""

    async def failed(
        self, webhook_id: str, now: float, disable_after_s: float, gone: bool
    ) -> Webhook | None:
        """Record a failed attempt; returns the webhook if this call disabled it.

        Disabled when the endpoint answered 410 (``gone``) or has failed
        continuously for ``disable_after_s`` seconds.
        """

    async def succeeded(self, webhook_id: str) -> None:
        """End the webhook's failure streak (``failing_since``)."""

    # -- the dispatcher -------------------------------------------------------

    async def next_events(self, limit: int) -> Batch | None:
        """Up to ``limit`` events after the dispatcher's cursor; None when there are none."""

    async def version(self) -> WebhooksVersion: ...

    async def advance(
        self, cursor: int, position: int, changes: int, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Move the cursor from ``cursor`` to ``position`` and queue ``deliveries``, atomically.

        Refused (False, nothing written) when the cursor is no longer at
        ``cursor`` (another dispatcher went first) or the webhooks changed
        since ``changes`` (the batch was matched against a stale copy). An
        event matched twice adds nothing (unique (webhook, event)).
        """

    async def cursor(self) -> int:
        """The id of the last event the dispatcher has matched."""

    async def events(
        self,
        tenant: str,
        after_id: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[EventRow]:
        """The tenant's stored events after ``after_id``, optionally in [since, until)."""

    # -- the outbox -----------------------------------------------------------

    async def enqueue(self, delivery: Delivery) -> None:
        """Insert ``delivery``. Its id, and its (webhook, event) when it has an event,
        must be new: a duplicate is refused with the database's integrity error
        (``ValueError`` in memory)."""

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        """Insert these (replayed events) or, when already there and finished, queue them again.

        Rows still pending or in flight are left alone; returns the rows queued.
        """

    async def requeue_dead(
        self, webhook_id: str, now: float, since: float | None, until: float | None
    ) -> int:
        """Queue the webhook's dead deliveries created in [since, until) again."""

    async def claim(
        self,
        now: float,
        owner: str,
        lease_s: float,
        limit: int,
        per_endpoint: int,
        exclude: Sequence[str] = (),
    ) -> list[Delivery]:
        """Take up to ``limit`` due deliveries of active webhooks, ``per_endpoint`` at most each.

        Due: ``pending`` with ``next_attempt_at <= now``, or ``delivering``
        with its lease run out. They become ``delivering`` with ``attempts``
        and ``tries`` counted up, leased to ``owner`` until ``now + lease_s``;
        returned by ``next_attempt_at``, then id. ``exclude``: webhook ids
        this worker cannot serve now (its per-endpoint slots are full).
        """

    async def release(self, delivery: Delivery, next_attempt_at: float) -> None:
        """Give back a claimed delivery without an attempt (not counted)."""

    async def record(
        self,
        delivery: Delivery,
        attempt: Attempt,
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        """Store an attempt and the delivery's new state; False when the lease was lost.

        Only the lease holder writes: if the lease expired and another
        worker took the delivery over, this attempt is not recorded.
        """

    # -- reading the log ------------------------------------------------------

    async def deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, limit: int, offset: int
    ) -> list[Delivery]:
        """Newest first (``created_at``, then id)."""

    async def attempts(self, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        """The attempt log of each delivery, oldest attempt first."""

    async def stats(self, webhook_id: str, recent: int = 1000) -> Stats:
        """``recent``: how many of the latest attempts' durations to return."""


# -- SQL ----------------------------------------------------------------------


def _placeholders(start: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


_WEBHOOK_COLUMNS = (
    "id, tenant, url, events, name, description, secrets, headers, max_attempts, "
    "rate_limit_per_s, status, disabled_reason, failing_since, after_event_id, "
    "created_at, updated_at"
)
_DELIVERY_COLUMNS = (
    "id, webhook_id, tenant, event_id, event_type, payload, status, attempts, tries, "
    "next_attempt_at, lease_owner, last_status, last_error, created_at, updated_at"
)
_INSERT_DELIVERY = (
    f"INSERT INTO webhook_deliveries ({_DELIVERY_COLUMNS}, lease_until) VALUES "
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL)"
)
#: The webhook with ``after_event_id`` set to the event log's head, in one statement.
_INSERT_WEBHOOK = (
    f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES ({_placeholders(1, 13)}, "
    "(SELECT n FROM event_seq), $14, $15) RETURNING after_event_id"
)
#: Counts a change to the webhooks (see :class:`WebhooksVersion`); creates the row on first use.
_COUNT_CHANGE = (
    "INSERT INTO webhook_cursor (name, position) VALUES ('webhooks', 1) "
    "ON CONFLICT (name) DO UPDATE SET position = webhook_cursor.position + 1"
)
_VERSION_COLUMNS = (
    "(SELECT COUNT(*) FROM webhooks WHERE status = 'active'), "
    "(SELECT position FROM webhook_cursor WHERE name = 'webhooks'), "
    "(SELECT n FROM event_seq)"
)
#: The next events after the dispatcher's cursor, each with the cursor's position and
#: the webhooks' version as of the same snapshot.
_NEXT_EVENTS = (
    "SELECT e.id, e.type, e.timestamp, e.source, e.tenant, e.data, c.position, "
    f"{_VERSION_COLUMNS} FROM webhook_cursor c JOIN events e ON e.id > c.position "
    "WHERE c.name = 'dispatcher' ORDER BY e.id LIMIT $1"
)
_VERSION = f"SELECT {_VERSION_COLUMNS}"
#: Compare-and-set of the cursor, refused when webhooks changed since the batch was matched.
_ADVANCE = (
    "UPDATE webhook_cursor SET position = $2 WHERE name = 'dispatcher' AND position = $1 "
    "AND COALESCE((SELECT position FROM webhook_cursor WHERE name = 'webhooks'), 0) = $3"
)
#: A tenant's webhook count with the change counter: whether its listing order still holds.
_LISTING_VERSION = (
    "SELECT COUNT(*) AS n, "
    "(SELECT position FROM webhook_cursor WHERE name = 'webhooks') AS changes "
    "FROM webhooks WHERE tenant = $1"
)
_PREFIXED_COLUMNS = ", ".join(f"w.{c.strip()}" for c in _WEBHOOK_COLUMNS.split(","))
_LISTING_ORDER = "SELECT id, status FROM webhooks WHERE tenant = $1 ORDER BY created_at, id"
#: Tenants whose listing order (ids by status, ~150 bytes a webhook) is kept.
LISTINGS_KEPT = 64
#: Claimable: due, or claimed by a worker whose lease ran out.
_CLAIMABLE = (
    "((status = 'pending' AND next_attempt_at <= $1) "
    "OR (status = 'delivering' AND lease_until < $1))"
)

_secrets_decoder = msgspec.json.Decoder(list[Secret])
_labels_decoder = msgspec.json.Decoder(list[str])
_headers_decoder = msgspec.json.Decoder(dict[str, str])


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _sealed(secrets: Sequence[Secret], webhook_id: str, box: SecretBox | None) -> str:
    """The ``secrets`` column: each secret sealed with ``box`` (clear text without one)."""
    if box is not None:
        secrets = [Secret(box.seal(s.secret, webhook_id), s.expires_at) for s in secrets]
    return json_text(secrets)


def _opened(column: str, webhook_id: str, box: SecretBox | None) -> list[Secret]:
    secrets = _secrets_decoder.decode(column)
    if box is not None:
        return [Secret(box.open(s.secret, webhook_id), s.expires_at) for s in secrets]
    if any(is_sealed(s.secret) for s in secrets):
        raise ConfigError(f"webhook {webhook_id}'s secret is encrypted and no key was given")
    return secrets


def _webhook_row(w: Webhook, box: SecretBox | None) -> tuple[Any, ...]:
    return (
        w.id,
        w.tenant,
        w.url,
        json_text(w.events),
        w.name,
        w.description,
        _sealed(w.secrets, w.id, box),
        json_text(w.headers),
        w.max_attempts,
        _opt_float(w.rate_limit_per_s),
        w.status,
        w.disabled_reason,
        _opt_float(w.failing_since),
        int(w.after_event_id),
        float(w.created_at),
        float(w.updated_at),
    )


def _webhook(row: Sequence[Any], box: SecretBox | None) -> Webhook:
    return Webhook(
        id=row[0],
        tenant=row[1],
        url=row[2],
        events=_labels_decoder.decode(row[3]),
        name=row[4],
        description=row[5],
        secrets=_opened(row[6], row[0], box),
        headers=_headers_decoder.decode(row[7]),
        max_attempts=row[8],
        rate_limit_per_s=row[9],
        status=row[10],
        disabled_reason=row[11],
        failing_since=row[12],
        after_event_id=int(row[13]),
        created_at=row[14],
        updated_at=row[15],
    )


def _version(row: Sequence[Any]) -> WebhooksVersion:
    active, changes, head = row
    return WebhooksVersion(int(active), int(changes or 0), int(head))


def _delivery_row(d: Delivery) -> tuple[Any, ...]:
    return (
        d.id,
        d.webhook_id,
        d.tenant,
        d.event_id,
        d.event_type,
        d.payload,
        d.status,
        d.attempts,
        d.tries,
        float(d.next_attempt_at),
        d.lease_owner,
        d.last_status,
        d.last_error,
        float(d.created_at),
        float(d.updated_at),
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        webhook_id=row[1],
        tenant=row[2],
        event_id=None if row[3] is None else int(row[3]),
        event_type=row[4],
        payload=row[5],
        status=row[6],
        attempts=int(row[7]),
        tries=int(row[8]),
        next_attempt_at=row[9],
        lease_owner=row[10],
        last_status=row[11],
        last_error=row[12],
        created_at=row[13],
        updated_at=row[14],
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        delivery_id=row[0],
        attempt=int(row[1]),
        webhook_id=row[2],
        at=row[3],
        status_code=row[4],
        ok=bool(row[5]),
        duration_ms=row[6],
        error=row[7],
    )


class _Listing:
    """A tenant's webhook ids, oldest first, all and by status, as of ``version``."""

    def __init__(self, version: tuple[int, int], rows: Sequence[Sequence[Any]]) -> None:
        self.version = version
        self.ids: dict[WebhookStatus | None, list[str]] = {None: [], "active": [], "disabled": []}
        for webhook_id, status in rows:
            self.ids[None].append(webhook_id)
            self.ids.setdefault(status, []).append(webhook_id)


class SqlWebhooks:
    """The webhooks in the gateway's database, shared by every process using it.

    Signing secrets are stored sealed by ``box`` (``secretbox.py``), whose key
    :meth:`seal` loads; without a box (tests, tools that never touch webhooks)
    they are written in clear text and a sealed one cannot be read.
    """

    def __init__(self, db: Database, box: SecretBox | None = None) -> None:
        self._db = db
        self._box = box
        #: Created here, for this process's dispatcher (:meth:`take_created`).
        self._created: deque[Webhook] = deque(maxlen=CREATED_KEPT)
        #: Per tenant, least recently listed first.
        self._listings: dict[str, _Listing] = {}
        self._listing = asyncio.Lock()

    # -- webhooks -------------------------------------------------------------

    async def create(self, webhook: Webhook) -> Webhook:
        """One statement, no explicit transaction: registration is the hot write of the
        webhook API."""
        row = _webhook_row(webhook, self._box)
        rows = await self._db.fetch(_INSERT_WEBHOOK, *row[:13], *row[14:])
        stored = msgspec.structs.replace(webhook, after_event_id=int(rows[0][0]))
        self._created.append(stored)
        return stored

    def take_created(self) -> list[Webhook]:
        created = list(self._created)
        self._created.clear()
        return created

    async def seal(self) -> int:
        """Load the box's key, check every stored secret against it, and encrypt those
        an older version left in clear text; returns how many webhooks it sealed.

        Each row is rewritten only if unchanged since it was read, so a concurrent
        rotation (or another process sealing too) is never overwritten.
        :class:`ConfigError` when a secret was sealed with another key.
        """
        box = self._box
        if box is None:
            return 0
        box.load()
        sealed = 0
        for webhook_id, column in await self._db.fetch("SELECT id, secrets FROM webhooks"):
            secrets = _opened(column, webhook_id, box)
            if all(is_sealed(s.secret) for s in _secrets_decoder.decode(column)):
                continue
            sealed += await self._db.execute(
                "UPDATE webhooks SET secrets = $2 WHERE id = $1 AND secrets = $3",
                webhook_id,
                _sealed(secrets, webhook_id, box),
                column,
            )
        return sealed

    async def active(self, ids: Sequence[str] | None = None) -> list[Webhook]:
        if ids is None:
            rows = await self._db.fetch(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE status = 'active' ORDER BY id"
            )
            return [_webhook(row, self._box) for row in rows]
        found: list[Webhook] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._db.fetch(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE status = 'active' "
                f"AND id IN ({_placeholders(1, len(chunk))})",
                *chunk,
            )
            found.extend(_webhook(row, self._box) for row in rows)
        return sorted(found, key=lambda w: w.id)

    async def active_ids(self) -> list[str]:
        rows = await self._db.fetch("SELECT id FROM webhooks WHERE status = 'active'")
        return [row[0] for row in rows]

    async def get(self, webhook_id: str, tenant: str | None = None) -> Webhook | None:
        rows = await self._db.fetch(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1", webhook_id
        )
        if not rows:
            return None
        webhook = _webhook(rows[0], self._box)
        return webhook if tenant is None or webhook.tenant == tenant else None

    async def for_tenant(self, tenant: str, status: WebhookStatus | None = None) -> list[Webhook]:
        if status is None:
            rows = await self._db.fetch(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = $1 "
                "ORDER BY created_at, id",
                tenant,
            )
        else:
            rows = await self._db.fetch(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = $1 AND status = $2 "
                "ORDER BY created_at, id",
                tenant,
                status,
            )
        return [_webhook(row, self._box) for row in rows]

    async def page(
        self, tenant: str, status: WebhookStatus | None, limit: int, offset: int
    ) -> tuple[list[Webhook], int]:
        """Paging by offset through the table costs a row per skipped webhook
        (the order, created_at then id, is not one index), which was slow deep
        into 10,000 webhooks (performance-history.md, "Integration layer
        components"). So the order itself, ids and
        statuses, is kept per tenant and checked on every call against the
        tenant's count and the change counter (see :class:`WebhooksVersion`:
        a registration raises the count, anything else counts a change); the
        page's 50 rows are then read by id. Concurrent deletes can leave a
        page a row short, as any offset paging over a changing list can
        skip or repeat one.
        """
        listing = self._listings.get(tenant)
        # Optimistically the page of the kept order, with the version in the same read.
        version, page = await self._page(tenant, listing, status, limit, offset)
        if listing is None or listing.version != version:
            async with self._listing:  # one read of the order at a time; the waiters reuse it
                listing = self._listings.get(tenant)
                if listing is None or listing.version != version:
                    version, _ = await self._page(tenant, None, status, 0, 0)
                    listing = _Listing(version, await self._db.fetch(_LISTING_ORDER, tenant))
                    self._listings[tenant] = listing
            _, page = await self._page(tenant, listing, status, limit, offset)
        self._listings.pop(tenant, None)
        self._listings[tenant] = listing  # most recently used last
        if len(self._listings) > LISTINGS_KEPT:
            del self._listings[next(iter(self._listings))]
        return page, len(listing.ids[status])

    async def _page(
        self,
        tenant: str,
        listing: _Listing | None,
        status: WebhookStatus | None,
        limit: int,
        offset: int,
    ) -> tuple[tuple[int, int], list[Webhook]]:
        """The tenant's version and the webhooks at [offset, offset + limit) of ``listing``."""
        wanted = [] if listing is None else listing.ids[status][offset : offset + limit]
        joined = f"w.id IN ({_placeholders(2, len(wanted))})" if wanted else "1 = 0"
        rows = await self._db.fetch(
            f"SELECT v.n, v.changes, {_PREFIXED_COLUMNS} FROM ({_LISTING_VERSION}) v "
            f"LEFT JOIN webhooks w ON {joined}",
            tenant,
            *wanted,
        )
        version = (int(rows[0][0]), int(rows[0][1] or 0))
        found = {row[2]: _webhook(row[2:], self._box) for row in rows if row[2] is not None}
        return version, [found[i] for i in wanted if i in found]

    async def replace(self, webhook: Webhook) -> bool:
        row = _webhook_row(webhook, self._box)
        async with self._db.transaction() as tx:
            if not await tx.execute(
                "UPDATE webhooks SET url = $3, events = $4, name = $5, description = $6, "
                "secrets = $7, headers = $8, max_attempts = $9, rate_limit_per_s = $10, "
                "status = $11, disabled_reason = $12, failing_since = $13, updated_at = $14 "
                "WHERE id = $1 AND tenant = $2",
                *row[:13],
                row[15],
            ):
                return False
            await tx.execute(_COUNT_CHANGE)
        return True

    async def delete(self, webhook_id: str, tenant: str) -> bool:
        async with self._db.transaction() as tx:
            if not await tx.execute(
                "DELETE FROM webhooks WHERE id = $1 AND tenant = $2", webhook_id, tenant
            ):
                return False
            await tx.execute("DELETE FROM webhook_attempts WHERE webhook_id = $1", webhook_id)
            await tx.execute("DELETE FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
            await tx.execute(_COUNT_CHANGE)
        return True

    async def failed(
        self, webhook_id: str, now: float, disable_after_s: float, gone: bool
    ) -> Webhook | None:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE webhooks SET failing_since = COALESCE(failing_since, $2) "
                "WHERE id = $1 AND status = 'active' RETURNING failing_since",
                webhook_id,
                float(now),
            )
            if not rows:
                return None
            since = float(rows[0][0])
            if not gone and now - since < disable_after_s:
                return None
            rows = await tx.fetch(
                f"UPDATE webhooks SET status = 'disabled', disabled_reason = $2, updated_at = $3 "
                f"WHERE id = $1 AND status = 'active' RETURNING {_WEBHOOK_COLUMNS}",
                webhook_id,
                _disabled_reason(gone, since),
                float(now),
            )
            if rows:
                await tx.execute(_COUNT_CHANGE)
        return _webhook(rows[0], self._box) if rows else None

    async def succeeded(self, webhook_id: str) -> None:
        await self._db.execute(
            "UPDATE webhooks SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            webhook_id,
        )

    # -- the dispatcher -------------------------------------------------------

    async def next_events(self, limit: int) -> Batch | None:
        rows = await self._db.fetch(_NEXT_EVENTS, int(limit))
        if not rows:
            return None
        events = [EventRow(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in rows]
        return Batch(int(rows[0][6]), events, _version(rows[0][7:]))

    async def version(self) -> WebhooksVersion:
        rows = await self._db.fetch(_VERSION)
        return _version(rows[0])

    async def advance(
        self, cursor: int, position: int, changes: int, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        """Without deliveries this is one statement, committed with whatever else the
        database is writing."""
        if not deliveries:
            return bool(await self._db.execute(_ADVANCE, cursor, position, changes))
        async with self._db.transaction() as tx:
            if not await tx.execute(_ADVANCE, cursor, position, changes):
                return False
            await tx.executemany(
                f"{_INSERT_DELIVERY} ON CONFLICT (webhook_id, event_id) DO NOTHING",
                [_delivery_row(d) for d in deliveries],
            )
        return True

    async def cursor(self) -> int:
        rows = await self._db.fetch("SELECT position FROM webhook_cursor WHERE name = 'dispatcher'")
        return int(rows[0][0])

    async def events(
        self,
        tenant: str,
        after_id: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[EventRow]:
        sql = (
            "SELECT id, type, timestamp, source, tenant, data FROM events "
            "WHERE tenant = $1 AND id > $2 AND timestamp >= $3 AND timestamp < $4 "
            "ORDER BY id LIMIT $5"
        )
        rows = await self._db.fetch(
            sql,
            tenant,
            int(after_id),
            float("-inf") if since is None else float(since),
            float("inf") if until is None else float(until),
            int(limit),
        )
        return [EventRow(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in rows]

    # -- the outbox -----------------------------------------------------------

    async def enqueue(self, delivery: Delivery) -> None:
        await self._db.execute(_INSERT_DELIVERY, *_delivery_row(delivery))

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        count = 0
        async with self._db.transaction() as tx:
            for d in deliveries:
                count += await tx.execute(
                    f"{_INSERT_DELIVERY} ON CONFLICT (webhook_id, event_id) DO UPDATE SET "
                    "status = 'pending', tries = 0, next_attempt_at = excluded.next_attempt_at, "
                    "updated_at = excluded.updated_at "
                    "WHERE webhook_deliveries.status IN ('succeeded', 'dead')",
                    *_delivery_row(d),
                )
        return count

    async def requeue_dead(
        self, webhook_id: str, now: float, since: float | None, until: float | None
    ) -> int:
        return await self._db.execute(
            "UPDATE webhook_deliveries SET status = 'pending', tries = 0, next_attempt_at = $2, "
            "updated_at = $2 WHERE webhook_id = $1 AND status = 'dead' "
            "AND created_at >= $3 AND created_at < $4",
            webhook_id,
            float(now),
            float("-inf") if since is None else float(since),
            float("inf") if until is None else float(until),
        )

    async def claim(
        self,
        now: float,
        owner: str,
        lease_s: float,
        limit: int,
        per_endpoint: int,
        exclude: Sequence[str] = (),
    ) -> list[Delivery]:
        skip = ""
        if exclude:
            skip = f"AND d.webhook_id NOT IN ({_placeholders(6, len(exclude))}) "
        sql = (
            "UPDATE webhook_deliveries SET status = 'delivering', lease_until = $2, "
            "lease_owner = $3, attempts = attempts + 1, tries = tries + 1, updated_at = $1 "
            "WHERE id IN (SELECT id FROM ("
            "SELECT d.id, d.next_attempt_at, ROW_NUMBER() OVER "
            "(PARTITION BY d.webhook_id ORDER BY d.next_attempt_at, d.id) AS pos "
            "FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE w.status = 'active' AND ((d.status = 'pending' AND d.next_attempt_at <= $1) "
            f"OR (d.status = 'delivering' AND d.lease_until < $1)) {skip}"
            ") ranked WHERE pos <= $5 ORDER BY next_attempt_at, id LIMIT $4) "
            f"AND {_CLAIMABLE} RETURNING {_DELIVERY_COLUMNS}"
        )
        rows = await self._db.fetch(
            sql, float(now), float(now + lease_s), owner, int(limit), int(per_endpoint), *exclude
        )
        return sorted((_delivery(row) for row in rows), key=lambda d: (d.next_attempt_at, d.id))

    async def release(self, delivery: Delivery, next_attempt_at: float) -> None:
        await self._db.execute(
            "UPDATE webhook_deliveries SET status = 'pending', lease_until = NULL, "
            "lease_owner = NULL, attempts = attempts - 1, tries = tries - 1, "
            "next_attempt_at = $3 WHERE id = $1 AND lease_owner = $2",
            delivery.id,
            delivery.lease_owner,
            float(next_attempt_at),
        )

    async def record(
        self,
        delivery: Delivery,
        attempt: Attempt,
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        async with self._db.transaction() as tx:
            if not await tx.execute(
                "UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4, "
                "lease_until = NULL, lease_owner = NULL, last_status = $5, last_error = $6, "
                "updated_at = $7 WHERE id = $1 AND lease_owner = $2",
                delivery.id,
                delivery.lease_owner,
                status,
                float(next_attempt_at),
                attempt.status_code,
                attempt.error,
                float(attempt.at),
            ):
                return False
            await tx.execute(
                "INSERT INTO webhook_attempts (delivery_id, attempt, webhook_id, at, "
                "status_code, ok, duration_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (delivery_id, attempt) DO NOTHING",
                attempt.delivery_id,
                attempt.attempt,
                attempt.webhook_id,
                float(attempt.at),
                attempt.status_code,
                int(attempt.ok),
                float(attempt.duration_ms),
                attempt.error,
            )
        return True

    # -- reading the log ------------------------------------------------------

    async def deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, limit: int, offset: int
    ) -> list[Delivery]:
        status_filter = "" if status is None else "AND status = $4 "
        args: list[Any] = [webhook_id, int(limit), int(offset)]
        if status is not None:
            args.append(status)
        rows = await self._db.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 "
            f"{status_filter}ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            *args,
        )
        return [_delivery(row) for row in rows]

    async def attempts(self, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        found: dict[str, list[Attempt]] = {d: [] for d in delivery_ids}
        if not delivery_ids:
            return found
        rows = await self._db.fetch(
            "SELECT delivery_id, attempt, webhook_id, at, status_code, ok, duration_ms, error "
            f"FROM webhook_attempts WHERE delivery_id IN ({_placeholders(1, len(delivery_ids))}) "
            "ORDER BY delivery_id, attempt",
            *delivery_ids,
        )
        for row in rows:
            found[row[0]].append(_attempt(row))
        return found

    async def stats(self, webhook_id: str, recent: int = 1000) -> Stats:
        rows = await self._db.fetch(
            "SELECT COUNT(*), COALESCE(SUM(ok), 0), MAX(CASE WHEN ok = 1 THEN at END), "
            "MAX(CASE WHEN ok = 0 THEN at END) FROM webhook_attempts WHERE webhook_id = $1",
            webhook_id,
        )
        total, ok, last_ok, last_failed = rows[0]
        durations = await self._db.fetch(
            "SELECT duration_ms FROM webhook_attempts WHERE webhook_id = $1 "
            "ORDER BY at DESC LIMIT $2",
            webhook_id,
            int(recent),
        )
        counts = await self._db.fetch(
            "SELECT status, COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 GROUP BY status",
            webhook_id,
        )
        by_status: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
        by_status.update({row[0]: int(row[1]) for row in counts})
        return Stats(
            attempts=int(total),
            successes=int(ok),
            failures=int(total) - int(ok),
            last_success_at=last_ok,
            last_failure_at=last_failed,
            recent_durations_ms=[float(row[0]) for row in durations],
            deliveries=by_status,
        )


# -- memory -------------------------------------------------------------------


class WebhookTable:
    """The rows of the four SQL tables, with the indexes :class:`MemoryWebhooks` reads by."""

    def __init__(self) -> None:
        self.webhooks: dict[str, Webhook] = {}
        #: Per tenant, ``(created_at, id)`` of its webhooks, sorted: the listing order.
        self.listings: dict[str, list[tuple[float, str]]] = {}
        #: Active webhooks.
        self.active = 0
        #: Changes that can remove or alter an active webhook (see :class:`WebhooksVersion`).
        self.changes = 0
        #: The id of the last event the dispatcher has matched.
        self.cursor = 0
        self.deliveries: dict[str, Delivery] = {}
        #: Epoch seconds until which each ``delivering`` delivery is leased, by id.
        self.leases: dict[str, float] = {}
        #: The outbox's unique key: delivery id by (webhook id, event id).
        self.by_event: dict[tuple[str, int], str] = {}
        #: Delivery ids by webhook id.
        self.outbox: dict[str, set[str]] = {}
        #: Ids of the pending and delivering deliveries: all that a claim looks through.
        self.open: set[str] = set()
        #: Attempts by delivery id, then attempt number.
        self.attempts: dict[str, dict[int, Attempt]] = {}
        #: Attempts by webhook id, in the order recorded.
        self.attempts_of: dict[str, list[Attempt]] = {}

    def put_webhook(self, webhook: Webhook) -> None:
        """Insert, or overwrite one of the same tenant and creation time."""
        old = self.webhooks.get(webhook.id)
        if old is None:
            insort(self.listings.setdefault(webhook.tenant, []), (webhook.created_at, webhook.id))
        elif old.status == "active":
            self.active -= 1
        if webhook.status == "active":
            self.active += 1
        self.webhooks[webhook.id] = webhook

    def remove_webhook(self, webhook_id: str) -> None:
        """Remove it with its outbox rows and the attempts recorded for it."""
        webhook = self.webhooks.pop(webhook_id)
        if webhook.status == "active":
            self.active -= 1
        listing = self.listings[webhook.tenant]
        del listing[bisect_left(listing, (webhook.created_at, webhook.id))]
        for attempt in self.attempts_of.pop(webhook_id, ()):
            log = self.attempts[attempt.delivery_id]
            del log[attempt.attempt]
            if not log:
                del self.attempts[attempt.delivery_id]
        for delivery_id in self.outbox.pop(webhook_id, ()):
            delivery = self.deliveries.pop(delivery_id)
            if delivery.event_id is not None:
                del self.by_event[(delivery.webhook_id, delivery.event_id)]
            self.open.discard(delivery_id)
            self.leases.pop(delivery_id, None)

    def queued(self, delivery: Delivery) -> Delivery | None:
        """The delivery queued already for ``delivery``'s webhook and event, if any."""
        if delivery.event_id is None:
            return None
        found = self.by_event.get((delivery.webhook_id, delivery.event_id))
        return None if found is None else self.deliveries[found]

    def add_delivery(self, delivery: Delivery) -> bool:
        """Insert, unless its webhook and event have a delivery already (False).

        A duplicate id raises ``ValueError`` (a primary key violation in SQL).
        """
        if self.queued(delivery) is not None:
            return False
        if delivery.id in self.deliveries:
            raise ValueError(f"delivery {delivery.id} exists")
        if delivery.event_id is not None:
            self.by_event[(delivery.webhook_id, delivery.event_id)] = delivery.id
        self.outbox.setdefault(delivery.webhook_id, set()).add(delivery.id)
        self.put_delivery(delivery)
        return True

    def put_delivery(self, delivery: Delivery, lease_until: float | None = None) -> None:
        """Overwrite a delivery (or complete an insert); ``lease_until`` only while claimed."""
        self.deliveries[delivery.id] = delivery
        if delivery.status in ("pending", "delivering"):
            self.open.add(delivery.id)
        else:
            self.open.discard(delivery.id)
        if lease_until is None:
            self.leases.pop(delivery.id, None)
        else:
            self.leases[delivery.id] = lease_until

    def add_attempt(self, attempt: Attempt) -> None:
        """Insert, unless the delivery has an attempt of that number already."""
        log = self.attempts.setdefault(attempt.delivery_id, {})
        if attempt.attempt not in log:
            log[attempt.attempt] = attempt
            self.attempts_of.setdefault(attempt.webhook_id, []).append(attempt)


def _event_row(event: Event) -> EventRow:
    return EventRow(
        event.id,
        event.type,
        float(event.timestamp),
        event.source,
        event.tenant,
        json_text(event.data),
    )


def _window(since: float | None, until: float | None) -> tuple[float, float]:
    """[since, until) with open ends as infinities."""
    return (
        float("-inf") if since is None else float(since),
        float("inf") if until is None else float(until),
    )


class MemoryWebhooks:
    """The webhooks in a :class:`~agentcore.store.memory.MemoryDatabase`.

    The rows are the database's :class:`WebhookTable`, shared by every
    repository of that database; :meth:`take_created` is this repository's
    own, as a SQL one's is. Ids are the caller's: a webhook or delivery id
    that exists raises ``ValueError``.
    """

    def __init__(self, db: MemoryDatabase) -> None:
        self._db = db
        self._table = db.table(WebhookTable)
        self._log = db.table(EventTable)
        self._created: deque[Webhook] = deque(maxlen=CREATED_KEPT)

    # -- webhooks -------------------------------------------------------------

    async def create(self, webhook: Webhook) -> Webhook:
        self._db.check()
        if webhook.id in self._table.webhooks:
            raise ValueError(f"webhook {webhook.id} exists")
        stored = msgspec.structs.replace(webhook, after_event_id=self._log.last_id)
        self._table.put_webhook(stored)
        self._created.append(stored)
        return stored

    def take_created(self) -> list[Webhook]:
        created = list(self._created)
        self._created.clear()
        return created

    async def seal(self) -> int:
        """Nothing to seal: these rows never leave this process's memory."""
        return 0

    async def active(self, ids: Sequence[str] | None = None) -> list[Webhook]:
        self._db.check()
        webhooks = self._table.webhooks
        found: Iterable[Webhook] = (
            webhooks.values() if ids is None else (webhooks[i] for i in set(ids) if i in webhooks)
        )
        return sorted((w for w in found if w.status == "active"), key=lambda w: w.id)

    async def active_ids(self) -> list[str]:
        self._db.check()
        return [w.id for w in self._table.webhooks.values() if w.status == "active"]

    async def get(self, webhook_id: str, tenant: str | None = None) -> Webhook | None:
        self._db.check()
        webhook = self._table.webhooks.get(webhook_id)
        if webhook is None or (tenant is not None and webhook.tenant != tenant):
            return None
        return webhook

    async def for_tenant(self, tenant: str, status: WebhookStatus | None = None) -> list[Webhook]:
        self._db.check()
        return self._listed(tenant, status)

    async def page(
        self, tenant: str, status: WebhookStatus | None, limit: int, offset: int
    ) -> tuple[list[Webhook], int]:
        self._db.check()
        listed = self._listed(tenant, status)
        return listed[offset : offset + limit], len(listed)

    def _listed(self, tenant: str, status: WebhookStatus | None) -> list[Webhook]:
        webhooks = self._table.webhooks
        listed = (webhooks[i] for _, i in self._table.listings.get(tenant, ()))
        return [w for w in listed if status is None or w.status == status]

    async def replace(self, webhook: Webhook) -> bool:
        self._db.check()
        table = self._table
        stored = table.webhooks.get(webhook.id)
        if stored is None or stored.tenant != webhook.tenant:
            return False
        table.put_webhook(
            msgspec.structs.replace(
                webhook, after_event_id=stored.after_event_id, created_at=stored.created_at
            )
        )
        table.changes += 1
        return True

    async def delete(self, webhook_id: str, tenant: str) -> bool:
        self._db.check()
        table = self._table
        stored = table.webhooks.get(webhook_id)
        if stored is None or stored.tenant != tenant:
            return False
        table.remove_webhook(webhook_id)
        table.changes += 1
        return True

    async def failed(
        self, webhook_id: str, now: float, disable_after_s: float, gone: bool
    ) -> Webhook | None:
        self._db.check()
        table = self._table
        stored = table.webhooks.get(webhook_id)
        if stored is None or stored.status != "active":
            return None
        since = stored.failing_since
        if since is None:
            since = float(now)
            stored = msgspec.structs.replace(stored, failing_since=since)
            table.put_webhook(stored)
        if not gone and now - since < disable_after_s:
            return None
        disabled = msgspec.structs.replace(
            stored,
            status="disabled",
            disabled_reason=_disabled_reason(gone, since),
            updated_at=float(now),
        )
        table.put_webhook(disabled)
        table.changes += 1
        return disabled

    async def succeeded(self, webhook_id: str) -> None:
        self._db.check()
        stored = self._table.webhooks.get(webhook_id)
        if stored is not None and stored.failing_since is not None:
            self._table.put_webhook(msgspec.structs.replace(stored, failing_since=None))

    # -- the dispatcher -------------------------------------------------------

    async def next_events(self, limit: int) -> Batch | None:
        self._db.check()
        cursor = self._table.cursor
        start = self._log.after(cursor)
        events = self._log.events[start : start + int(limit)]
        if not events:
            return None
        return Batch(cursor, [_event_row(e) for e in events], self._version())

    async def version(self) -> WebhooksVersion:
        self._db.check()
        return self._version()

    def _version(self) -> WebhooksVersion:
        return WebhooksVersion(self._table.active, self._table.changes, self._log.last_id)

    async def advance(
        self, cursor: int, position: int, changes: int, deliveries: Sequence[Delivery] = ()
    ) -> bool:
        self._db.check()
        table = self._table
        if table.cursor != cursor or table.changes != changes:
            return False
        for delivery in deliveries:
            table.add_delivery(delivery)
        table.cursor = int(position)
        return True

    async def cursor(self) -> int:
        self._db.check()
        return self._table.cursor

    async def events(
        self,
        tenant: str,
        after_id: int,
        limit: int,
        since: float | None = None,
        until: float | None = None,
    ) -> list[EventRow]:
        self._db.check()
        low, high = _window(since, until)
        events = self._log.events
        found: list[EventRow] = []
        for index in range(self._log.after(after_id), len(events)):
            if len(found) >= limit:
                break
            event = events[index]
            if event.tenant == tenant and low <= event.timestamp < high:
                found.append(_event_row(event))
        return found

    # -- the outbox -----------------------------------------------------------

    async def enqueue(self, delivery: Delivery) -> None:
        self._db.check()
        if not self._table.add_delivery(delivery):
            raise ValueError(f"event {delivery.event_id} is queued for {delivery.webhook_id}")

    async def requeue(self, deliveries: Sequence[Delivery]) -> int:
        self._db.check()
        table = self._table
        count = 0
        for delivery in deliveries:
            queued = table.queued(delivery)
            if queued is None:
                table.add_delivery(delivery)
            elif queued.status in ("succeeded", "dead"):
                table.put_delivery(
                    msgspec.structs.replace(
                        queued,
                        status="pending",
                        tries=0,
                        next_attempt_at=float(delivery.next_attempt_at),
                        updated_at=float(delivery.updated_at),
                    )
                )
            else:
                continue
            count += 1
        return count

    async def requeue_dead(
        self, webhook_id: str, now: float, since: float | None, until: float | None
    ) -> int:
        self._db.check()
        table = self._table
        low, high = _window(since, until)
        count = 0
        for delivery_id in tuple(table.outbox.get(webhook_id, ())):
            delivery = table.deliveries[delivery_id]
            if delivery.status == "dead" and low <= delivery.created_at < high:
                table.put_delivery(
                    msgspec.structs.replace(
                        delivery,
                        status="pending",
                        tries=0,
                        next_attempt_at=float(now),
                        updated_at=float(now),
                    )
                )
                count += 1
        return count

    async def claim(
        self,
        now: float,
        owner: str,
        lease_s: float,
        limit: int,
        per_endpoint: int,
        exclude: Sequence[str] = (),
    ) -> list[Delivery]:
        self._db.check()
        table = self._table
        skipped = set(exclude)
        due: list[Delivery] = []
        for delivery_id in table.open:
            delivery = table.deliveries[delivery_id]
            webhook = table.webhooks.get(delivery.webhook_id)
            if webhook is None or webhook.status != "active" or webhook.id in skipped:
                continue
            lease = table.leases.get(delivery_id)
            if (delivery.status == "pending" and delivery.next_attempt_at <= now) or (
                delivery.status == "delivering" and lease is not None and lease < now
            ):
                due.append(delivery)
        due.sort(key=lambda d: (d.next_attempt_at, d.id))
        taken: dict[str, int] = {}
        claimed: list[Delivery] = []
        for delivery in due:
            if len(claimed) >= limit:
                break
            held = taken.get(delivery.webhook_id, 0)
            if held >= per_endpoint:
                continue
            taken[delivery.webhook_id] = held + 1
            claim = msgspec.structs.replace(
                delivery,
                status="delivering",
                lease_owner=owner,
                attempts=delivery.attempts + 1,
                tries=delivery.tries + 1,
                updated_at=float(now),
            )
            table.put_delivery(claim, float(now + lease_s))
            claimed.append(claim)
        return claimed

    def _leased(self, delivery: Delivery) -> Delivery | None:
        """The stored delivery while it is leased to ``delivery.lease_owner``."""
        stored = self._table.deliveries.get(delivery.id)
        if stored is None or stored.lease_owner is None:
            return None
        return stored if stored.lease_owner == delivery.lease_owner else None

    async def release(self, delivery: Delivery, next_attempt_at: float) -> None:
        self._db.check()
        stored = self._leased(delivery)
        if stored is not None:
            self._table.put_delivery(
                msgspec.structs.replace(
                    stored,
                    status="pending",
                    lease_owner=None,
                    attempts=stored.attempts - 1,
                    tries=stored.tries - 1,
                    next_attempt_at=float(next_attempt_at),
                )
            )

    async def record(
        self,
        delivery: Delivery,
        attempt: Attempt,
        status: DeliveryStatus,
        next_attempt_at: float,
    ) -> bool:
        self._db.check()
        stored = self._leased(delivery)
        if stored is None:
            return False
        self._table.put_delivery(
            msgspec.structs.replace(
                stored,
                status=status,
                next_attempt_at=float(next_attempt_at),
                lease_owner=None,
                last_status=attempt.status_code,
                last_error=attempt.error,
                updated_at=float(attempt.at),
            )
        )
        self._table.add_attempt(attempt)
        return True

    # -- reading the log ------------------------------------------------------

    async def deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, limit: int, offset: int
    ) -> list[Delivery]:
        self._db.check()
        table = self._table
        found = [table.deliveries[i] for i in table.outbox.get(webhook_id, ())]
        found = [d for d in found if status is None or d.status == status]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found[offset : offset + limit]

    async def attempts(self, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
        self._db.check()
        found: dict[str, list[Attempt]] = {}
        for delivery_id in delivery_ids:
            log = self._table.attempts.get(delivery_id, {})
            found[delivery_id] = [log[n] for n in sorted(log)]
        return found

    async def stats(self, webhook_id: str, recent: int = 1000) -> Stats:
        self._db.check()
        table = self._table
        attempts = table.attempts_of.get(webhook_id, [])
        succeeded = [a.at for a in attempts if a.ok]
        failed = [a.at for a in attempts if not a.ok]
        latest = heapq.nlargest(recent, attempts, key=lambda a: a.at)
        by_status: dict[str, int] = dict.fromkeys(DELIVERY_STATUSES, 0)
        for delivery_id in table.outbox.get(webhook_id, ()):
            by_status[table.deliveries[delivery_id].status] += 1
        return Stats(
            attempts=len(attempts),
            successes=len(succeeded),
            failures=len(failed),
            last_success_at=max(succeeded, default=None),
            last_failure_at=max(failed, default=None),
            recent_durations_ms=[float(a.duration_ms) for a in latest],
            deliveries=by_status,
        )
