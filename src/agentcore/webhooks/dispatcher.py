"""The dispatcher: event log -> outbox.

Reads the event log after its durable cursor, matches each event against the
active webhooks of the event's tenant (glob patterns, and only webhooks
created before the event), and writes one outbox row per match, moving the
cursor in the same transaction (``WebhookRepository.advance``). So an event
acknowledged by the log is matched exactly once, whatever crashes when; the
outbox row is what delivery retries.

Matching goes through a copy of the active webhooks indexed per tenant by
pattern (:class:`~agentcore.events.patterns.PatternIndex`: exact types,
prefixes such as ``order.*``, suffixes, other globs), not a scan of every
webhook per event: with 10,000 webhooks registered, a batch of events of a
few types costs a few lookups. The copy is checked every round against the
repository's :class:`~agentcore.webhooks.repository.WebhooksVersion`, read
in the same snapshot as the events, so every webhook committed before an
event is in it:

- nothing changed: used as is;
- only registrations: the new ones are added, from this process's own
  registrations when they account for all of them, else found by id;
- anything deleted, disabled or edited: read again in full.

The cursor then moves only if no webhook changed meanwhile (compare-and-set
on ``changes``); otherwise the round is repeated. Reads go to the store's
readers; a round's only write is that compare-and-set with its outbox rows.

The body of a delivery is rendered here, once, and stored: every attempt
sends the same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from agentcore.clock import Clock
from agentcore.events.patterns import PatternIndex
from agentcore.webhooks.repository import (
    Delivery,
    EventRow,
    Webhook,
    WebhookRepository,
)

#: Rounds a dispatcher retries when the cursor or the webhooks moved under it.
MAX_RETRIES = 3
#: Registrations of this process kept for the next round; past it they are found by id.
MAX_FRESH = 10_000


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def render(event_type: str, timestamp: float, data_json: str, **extra: object) -> str:
    """The body: ``{"type", "timestamp" (ISO 8601), ...extra, "data"}`` (Standard Webhooks)."""
    head = msgspec.json.encode({"type": event_type, "timestamp": iso(timestamp), **extra})
    return head[:-1].decode() + ',"data":' + data_json + "}"


class ActiveWebhooks:
    """A copy of the active webhooks, indexed per tenant by pattern."""

    def __init__(self, hooks: list[Webhook], changes: int) -> None:
        self.changes = changes
        self.ids: set[str] = set()
        self._by_tenant: dict[str, PatternIndex[Webhook]] = {}
        self.add(hooks)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, hooks: list[Webhook]) -> None:
        """Add webhooks not already held (a batch in id order; matches come in the order added)."""
        for hook in sorted(hooks, key=lambda w: w.id):
            if hook.id not in self.ids:
                self.ids.add(hook.id)
                self._by_tenant.setdefault(hook.tenant, PatternIndex()).add(hook.events, hook)

    def match(self, tenant: str, event_type: str) -> list[Webhook]:
        index = self._by_tenant.get(tenant)
        return index.match(event_type) if index is not None else []


class WebhookDispatcher:
    def __init__(
        self, store: WebhookRepository, clock: Clock, batch_size: int, first_delay_s: float = 0.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._batch_size = batch_size
        #: Seconds before the first attempt (``retry_schedule[0]``).
        self._first_delay_s = first_delay_s
        self._hooks: ActiveWebhooks | None = None
        #: This process's registrations not yet in ``_hooks``.
        self._fresh: list[Webhook] = []
        #: Outbox rows queued by the last round.
        self.queued = 0
        #: The last round found no active webhook: the next one looks at the version
        #: first, and reads events only once there is one.
        self._idle = False

    async def run_once(self) -> int:
        """Match the next batch of events; returns how many were consumed."""
        self.queued = 0
        for _ in range(MAX_RETRIES):
            consumed = await self._round()
            if consumed is not None:
                return consumed
        return 0  # still contended: the next round (poll or wake-up) tries again

    async def _round(self) -> int | None:
        """Consumed events, or None when the cursor or the webhooks moved meanwhile."""
        self._take_fresh()  # before the events are read: these were committed before them
        if self._idle:
            # Without an active webhook the events are not read at all (in the default
            # setup, a batch of them per commit for nothing). The version is read
            # before the cursor: the events up to its head were committed before any
            # webhook it does not count, so none of them is owed to one.
            idle = await self._store.version()
            if not idle.active:
                return await self._skip(await self._store.cursor(), idle.head, idle.changes)
        batch = await self._store.next_events(self._batch_size)
        if batch is None:
            return 0
        cursor, events, version = batch.cursor, batch.events, batch.version
        self._idle = not version.active
        if not version.active:  # nothing can match: skip to the head
            return await self._skip(cursor, max(version.head, events[-1].id), version.changes)
        hooks = await self._refresh(version.active, version.changes)
        deliveries = self.plan(events, hooks)
        if not await self._store.advance(cursor, events[-1].id, hooks.changes, deliveries):
            return None
        self.queued += len(deliveries)
        return len(events)

    async def _skip(self, cursor: int, head: int, changes: int) -> int | None:
        """Move the cursor to ``head``: how many events it passed, or None when the
        cursor or the webhooks moved meanwhile."""
        if head <= cursor:
            return 0
        moved = await self._store.advance(cursor, head, changes)
        return head - cursor if moved else None

    def _take_fresh(self) -> None:
        self._fresh.extend(self._store.take_created())
        if len(self._fresh) > MAX_FRESH:
            self._fresh.clear()  # found by id instead

    async def _refresh(self, active: int, changes: int) -> ActiveWebhooks:
        """The copy brought up to (at least) the version read: see the module docstring."""
        hooks = self._hooks
        if hooks is not None and hooks.changes == changes and len(hooks) <= active:
            if len(hooks) < active:
                fresh = [w for w in self._fresh if w.id not in hooks.ids]
                if len(hooks) + len({w.id for w in fresh}) == active:
                    hooks.add(fresh)
                else:  # registered by other processes too
                    new = [i for i in await self._store.active_ids() if i not in hooks.ids]
                    hooks.add(await self._store.active(new))
            self._fresh.clear()
            return hooks
        version = await self._store.version()
        hooks = ActiveWebhooks(await self._store.active(), version.changes)
        self._hooks = hooks
        self._fresh.clear()
        return hooks

    def plan(self, events: list[EventRow], hooks: ActiveWebhooks) -> list[Delivery]:
        now = self._clock()
        deliveries: list[Delivery] = []
        for event in events:
            payload: str | None = None
            for hook in hooks.match(event.tenant, event.type):
                if event.id <= hook.after_event_id:
                    continue
                if payload is None:
                    payload = render(
                        event.type,
                        event.timestamp,
                        event.data,
                        event_id=event.id,
                        source=event.source,
                    )
                deliveries.append(
                    Delivery.pending(
                        hook, event.id, event.type, payload, now, delay_s=self._first_delay_s
                    )
                )
        return deliveries
