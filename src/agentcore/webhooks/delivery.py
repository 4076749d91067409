"""Delivery: outbox -> endpoints, at least once.

:class:`DeliveryWorker` claims due deliveries with a lease (``WebhookRepository.claim``)
and runs each attempt as a task of its own, at most ``concurrency`` at once
per process and ``per_endpoint_concurrency`` per endpoint (a semaphore each).
An endpoint holding that many claims is left out of the next claim, so a
slow receiver holds its own slots and never the others'; a claim waits for
its endpoint's semaphore at most about one attempt, which the lease
(``2 * timeout_s + LEASE_MARGIN_S``) covers. An endpoint's ``rate_limit_per_s`` is a
GCRA limit (per process); over it, the delivery is handed back, uncounted,
for when the limit allows.

Outcome of an attempt (signed fresh, same ``webhook-id`` and body):

- 2xx: ``succeeded``; the endpoint's failure streak ends.
- 410 Gone: ``dead``, and the endpoint is disabled.
- anything else (other status, redirect, timeout, refused address, DNS):
  retried after ``retry_schedule[tries]`` seconds with jitter (or the
  endpoint's ``Retry-After`` when longer, up to a day), ``dead`` after
  ``max_attempts``. An endpoint failing continuously for
  ``disable_after_s`` is disabled. Disabling publishes ``webhook.disabled``.

Dead deliveries stay in the attempt log and can be replayed (``api.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from typing import Any

from agentcore import __version__
from agentcore.clock import Clock
from agentcore.config import WebhooksConfig
from agentcore.events.base import Publisher
from agentcore.metrics import Metrics
from agentcore.ratelimit.base import Limit
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.webhooks import signing
from agentcore.webhooks.repository import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Webhook,
    WebhookRepository,
)
from agentcore.webhooks.sender import Sender

log = logging.getLogger("agentcore.webhooks")

#: Longest Retry-After honoured, in seconds.
MAX_RETRY_AFTER_S = 86_400.0
#: Seconds a lease outlives the attempt timeout (then another worker may take over):
#: covers recording the attempt and clock differences between workers.
LEASE_MARGIN_S = 5.0
USER_AGENT = f"agentcore-webhooks/{__version__}"


class DeliveryWorker:
    def __init__(
        self,
        store: WebhookRepository,
        sender: Sender,
        config: WebhooksConfig,
        clock: Clock,
        publisher: Publisher | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._config = config
        self._clock = clock
        self._publisher = publisher
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._limiter = MemoryRateLimiter(clock)
        #: Lease owner of this process's claims: only it may record their attempts.
        self.owner = f"dw_{secrets.token_hex(8)}"
        self._lease_s = 2 * config.timeout_s + LEASE_MARGIN_S
        #: Claims held (waiting or in flight) per webhook id.
        self._in_flight: dict[str, int] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def wake(self) -> None:
        """New deliveries may be due: claim now rather than at the next poll."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and deliver until ``stop``; then wait for the attempts in flight."""
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    claimed = await self.claim_and_start()
                except Exception:  # boundary: a store hiccup must not end delivery
                    log.exception("claiming webhook deliveries failed")
                    claimed = 0
                if claimed and self.in_flight < self._config.concurrency:
                    continue  # more may be due right away
                await wait_any(stop, self._wakeup, self._config.poll_interval_s)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def claim_and_start(self) -> int:
        """Claim what this process has room for and start an attempt for each."""
        room = self._config.concurrency - self.in_flight
        if room <= 0:
            return 0
        per_endpoint = self._config.per_endpoint_concurrency
        full = [w for w, n in self._in_flight.items() if n >= per_endpoint]
        claimed = await self._store.claim(
            self._clock(), self.owner, self._lease_s, room, per_endpoint, full
        )
        hooks: dict[str, Webhook | None] = {}
        for delivery in claimed:
            if delivery.webhook_id not in hooks:
                hooks[delivery.webhook_id] = await self._store.get(delivery.webhook_id)
            hook = hooks[delivery.webhook_id]
            if hook is None:  # deleted meanwhile, with its outbox rows
                continue
            self._in_flight[hook.id] = self._in_flight.get(hook.id, 0) + 1
            if hook.id not in self._slots:
                self._slots[hook.id] = asyncio.Semaphore(per_endpoint)
            task = asyncio.create_task(self._attempt(delivery, hook))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait for every attempt in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _attempt(self, delivery: Delivery, hook: Webhook) -> None:
        try:
            async with self._slots[hook.id]:
                await self._deliver(delivery, hook)
        except Exception:  # boundary: one attempt's bug must not stop the others
            log.exception("webhook delivery %s failed unexpectedly", delivery.id)
        finally:
            left = self._in_flight.get(hook.id, 1) - 1
            if left > 0:
                self._in_flight[hook.id] = left
            else:
                self._in_flight.pop(hook.id, None)
                self._slots.pop(hook.id, None)
            self._wakeup.set()  # a slot is free

    async def _deliver(self, delivery: Delivery, hook: Webhook) -> None:
        now = self._clock()
        if hook.rate_limit_per_s:
            limit = Limit("webhook", hook.rate_limit_per_s, max(1, int(hook.rate_limit_per_s)))
            decision = self._limiter.hit_now(hook.id, limit)
            if not decision.allowed:
                await self._store.release(delivery, now + decision.retry_after_s)
                return
        body = delivery.payload.encode()
        headers = {
            **hook.headers,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signing.headers(hook.signing_secrets(now), delivery.id, int(now), body),
        }
        result = await self._sender.send(hook.url, headers, body, self._config.timeout_s)
        done = self._clock()
        gone = result.status_code == 410
        max_attempts = hook.max_attempts or self._config.max_attempts
        status: DeliveryStatus
        next_at = done
        if result.ok:
            status, outcome = "succeeded", "succeeded"
        elif gone or delivery.tries >= max_attempts:
            status, outcome = "dead", "gone" if gone else "dead"
        else:
            status, outcome = "pending", "retry"
            next_at = done + self.retry_delay(delivery.tries, result.retry_after_s)
        attempt = Attempt(
            delivery_id=delivery.id,
            attempt=delivery.attempts,
            webhook_id=hook.id,
            at=now,
            status_code=result.status_code,
            ok=result.ok,
            duration_ms=round(result.duration_ms, 3),
            error=result.error,
        )
        if not await self._store.record(delivery, attempt, status, next_at):
            log.warning("webhook delivery %s: lease lost, attempt not recorded", delivery.id)
            return
        self._observe(outcome, result.duration_ms / 1000)
        if result.ok:
            await self._store.succeeded(hook.id)
            return
        disabled = await self._store.failed(hook.id, done, self._config.disable_after_s, gone)
        if disabled is not None:
            await self._announce_disabled(disabled)

    def retry_delay(self, tries: int, retry_after_s: float | None) -> float:
        """Seconds before the next attempt after ``tries`` failed ones in this round."""
        schedule = self._config.retry_schedule
        base = schedule[min(tries, len(schedule) - 1)]
        jitter = self._config.jitter
        delay = base * self._rng.uniform(1 - jitter, 1 + jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
        return delay

    async def _announce_disabled(self, hook: Webhook) -> None:
        log.warning("webhook %s (%s) disabled: %s", hook.id, hook.url, hook.disabled_reason)
        if self._metrics is not None:
            reason = "gone" if "410" in (hook.disabled_reason or "") else "failing"
            self._metrics.webhook_disabled.labels(reason).inc()
        if self._publisher is not None:
            data: dict[str, Any] = {
                "webhook_id": hook.id,
                "url": hook.url,
                "reason": hook.disabled_reason,
            }
            await self._publisher.publish(
                "webhook.disabled", data, tenant=hook.tenant, source="webhooks"
            )

    def _observe(self, outcome: str, seconds: float) -> None:
        if self._metrics is None:
            return
        self._metrics.webhook_deliveries.labels(outcome).inc()
        self._metrics.webhook_attempt_seconds.observe(seconds)
        if outcome in ("dead", "gone"):
            self._metrics.webhook_dead_letters.inc()


async def wait_any(stop: asyncio.Event, wakeup: asyncio.Event, timeout_s: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        for waiter in waiters:
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
