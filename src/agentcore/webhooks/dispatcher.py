"""The dispatcher: event log -> outbox.

Reads the event log after its durable cursor, matches each event against the
active webhooks of the event's tenant (glob patterns, and only webhooks
created before the event), and writes one outbox row per match, moving the
cursor in the same transaction (``WebhookStore.dispatch``). So an event
acknowledged by the log is matched exactly once, whatever crashes when; the
outbox row is what delivery retries.

The body of a delivery is rendered here, once, and stored: every attempt
sends the same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from agentcore.clock import Clock
from agentcore.webhooks.store import Delivery, EventRow, Webhook, WebhookStore, new_delivery_id


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def render(event_type: str, timestamp: float, data_json: str, **extra: object) -> str:
    """The body: ``{"type", "timestamp" (ISO 8601), ...extra, "data"}`` (Standard Webhooks)."""
    head = msgspec.json.encode({"type": event_type, "timestamp": iso(timestamp), **extra})
    return head[:-1].decode() + ',"data":' + data_json + "}"


class WebhookDispatcher:
    def __init__(
        self, store: WebhookStore, clock: Clock, batch_size: int, first_delay_s: float = 0.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._batch_size = batch_size
        #: Seconds before the first attempt (``retry_schedule[0]``).
        self._first_delay_s = first_delay_s

    async def run_once(self) -> int:
        """Match the next batch of events; returns how many were consumed."""
        return await self._store.dispatch(self._batch_size, self.plan)

    def plan(self, events: list[EventRow], hooks: list[Webhook]) -> list[Delivery]:
        now = self._clock()
        by_tenant: dict[str, list[Webhook]] = {}
        for hook in hooks:
            by_tenant.setdefault(hook.tenant, []).append(hook)
        deliveries: list[Delivery] = []
        for event in events:
            payload: str | None = None
            for hook in by_tenant.get(event.tenant, ()):
                if event.id <= hook.after_event_id or not hook.matches(event.type):
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
                    Delivery(
                        id=new_delivery_id(now),
                        webhook_id=hook.id,
                        tenant=event.tenant,
                        event_id=event.id,
                        event_type=event.type,
                        payload=payload,
                        status="pending",
                        attempts=0,
                        tries=0,
                        next_attempt_at=now + self._first_delay_s,
                        created_at=now,
                        updated_at=now,
                    )
                )
        return deliveries
