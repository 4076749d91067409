"""Event fan-out over Redis pub/sub: every worker and instance sees every committed event.

Why pub/sub and not streams: the store already is the log. It assigns the
gap-free ids, keeps the retention window and serves replay by cursor, so a
second durable copy in a Redis stream would add trimming, consumer state and
a second source of truth for no gain. Fan-out only has to carry events that
are already durable to the hubs of live processes, and pub/sub does that
with the lowest latency: one ``PUBLISH`` per committed batch, pushed to every
subscriber on the channel, nothing retained.

The price is at-most-once delivery to live subscribers. While a process is
cut off from Redis (its subscriber connection dropped, or Redis down), the
events other processes commit are not pushed to it; they are still in the
store, and a stream that resumes from its cursor (``since``) replays them.
The same holds on the sending side: a batch that cannot be published is
counted and logged, never raised to the publisher, whose event is durable.

Failure handling, in one place each:

- Redis errors become :class:`~agentcore.errors.StoreUnavailable` in
  :func:`agentcore.redisconn.translated`; nothing here catches a redis-py
  exception but the close of a subscription that may already be gone.
- Publishing: after a failed ``PUBLISH`` further batches are skipped (no
  network I/O) for a back-off window that doubles from ``retry_min_s`` to
  ``retry_max_s``, so a hung Redis costs the log writer one socket timeout
  per window instead of one per batch. The outage is logged once when it
  starts and once when publishing works again, with the number of batches
  and events that were not fanned out.
- Receiving: :meth:`RedisFanout.run` subscribes, and when the subscription
  fails (connection killed, Redis restarted, no reply to a keep-alive PING
  within ``KEEPALIVE_S``: a half-open connection), it logs and subscribes
  again with the same doubling back-off. redis-py's own retries are off
  (the pool's default), so no reconnect happens silently.

A message is one JSON object per batch, ``{"sender": <instance id>, "events":
[...]}``; a process ignores its own (its hub already had them). A slow
subscriber that Redis disconnects for exceeding ``client-output-buffer-limit
pubsub`` is just another dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from agentcore import redisconn
from agentcore.clock import Clock, system_clock
from agentcore.errors import StoreUnavailable
from agentcore.events.base import Event

log = logging.getLogger("agentcore.events.fanout")

#: Connections per process: the log writer publishes one batch at a time and
#: the subscriber holds one; the rest is headroom.
POOL_SIZE = 4
#: Seconds to wait for a free pooled connection. A hung Redis delays the log
#: writer by at most :data:`agentcore.redisconn.SOCKET_TIMEOUT_S` per batch.
POOL_WAIT_S = 1.0
#: Seconds of silence on the subscription before a PING is sent; no reply
#: within as long again and the connection is considered dead.
KEEPALIVE_S = 5.0


class _Batch(msgspec.Struct, frozen=True):
    """What goes over the channel: one committed batch and who committed it."""

    sender: str
    events: list[Event]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Batch)
#: Who is unavailable, in :class:`~agentcore.errors.StoreUnavailable` messages.
_USER = "event fan-out"


class _Backoff:
    """A delay that doubles from ``low`` to ``high`` seconds and resets on success."""

    def __init__(self, low: float, high: float) -> None:
        self._low = low
        self._high = high
        self.delay = low

    def step(self) -> float:
        """The delay to wait now; the next one is twice as long (up to ``high``)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self._high)
        return delay

    def reset(self) -> None:
        self.delay = self._low


class RedisFanout:
    """The :class:`~agentcore.events.base.Fanout` of processes that share one Redis.

    ``instance_id`` tells this process's own messages apart; the default is
    random, so every worker of every instance is distinct. ``channel`` lets
    gateways that share a Redis but not a store (or tests) stay apart.
    """

    def __init__(
        self,
        url: str,
        channel: str = "agentcore:events",
        instance_id: str | None = None,
        *,
        clock: Clock = system_clock,
        retry_min_s: float = 0.1,
        retry_max_s: float = 5.0,
    ) -> None:
        self.channel = channel
        self.instance_id = instance_id or secrets.token_hex(8)
        self._client = redisconn.connect(
            url,
            pool_size=POOL_SIZE,
            pool_wait_s=POOL_WAIT_S,
            client_name=f"agentcore:fanout:{self.instance_id}",
        )
        self._clock = clock
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._publish_backoff = _Backoff(retry_min_s, retry_max_s)
        #: Epoch seconds before which publishing is not tried again (after a failure).
        self._publish_resume_at = 0.0
        self._closed = False
        #: Set while the subscription is confirmed by Redis (events from others arrive).
        self.subscribed = asyncio.Event()
        #: Batches (and their events) not fanned out since the last successful publish.
        self.unsent_batches = 0
        self.unsent_events = 0
        #: Events received from other processes and delivered.
        self.received = 0
        #: Attempts to subscribe again after the subscription was lost.
        self.reconnects = 0

    async def publish(self, events: Sequence[Event]) -> None:
        """Send ``events`` (one committed batch) to every other process: one message.

        Never raises for Redis trouble (the events are durable); see the module
        docstring for what is skipped, counted and logged.
        """
        if not events or self._closed:
            return
        if self.unsent_batches and self._clock() < self._publish_resume_at:
            self._count_unsent(events)
            return
        payload = _encoder.encode(_Batch(self.instance_id, list(events)))
        try:
            with redisconn.translated(_USER):
                await self._client.publish(self.channel, payload)
        except StoreUnavailable as exc:  # boundary: record, the publisher already succeeded
            if not self.unsent_batches:
                log.warning(
                    "%s; other workers and instances miss these events live until it is "
                    "back (they are durable: streams resuming from their cursor replay them)",
                    exc.message,
                )
            self._count_unsent(events)
            self._publish_resume_at = self._clock() + self._publish_backoff.step()
            return
        if self.unsent_batches:
            log.warning(
                "event fan-out (Redis) publishing again; %d events in %d batches were not "
                "fanned out",
                self.unsent_events,
                self.unsent_batches,
            )
            self.unsent_batches = self.unsent_events = 0
            self._publish_backoff.reset()

    def _count_unsent(self, events: Sequence[Event]) -> None:
        self.unsent_batches += 1
        self.unsent_events += len(events)

    async def run(self, deliver: Callable[[Event], None]) -> None:
        """Deliver the events other processes publish until cancelled or closed.

        A lost subscription is logged and taken again after a back-off;
        events committed elsewhere in the meantime are not delivered here
        (they are durable in the store; streams replay them by cursor).
        """
        backoff = _Backoff(self._retry_min_s, self._retry_max_s)
        while not self._closed:
            try:
                await self._listen(deliver, backoff)
            except StoreUnavailable as exc:
                if self._closed:
                    return
                delay = backoff.step()
                log.warning(
                    "%s; events from other workers and instances are not delivered here "
                    "until it is back; subscribing again in %.2f s",
                    exc.message,
                    delay,
                )
                await asyncio.sleep(delay)
                self.reconnects += 1
            finally:
                self.subscribed.clear()

    async def _listen(self, deliver: Callable[[Event], None], backoff: _Backoff) -> None:
        """One subscription, until it fails (raises StoreUnavailable) or :meth:`close`."""
        pubsub = self._client.pubsub()
        try:
            with redisconn.translated(_USER):
                await pubsub.subscribe(self.channel)
                pinged = False
                while not self._closed:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=KEEPALIVE_S)
                    if message is None:
                        if pinged:
                            raise redisconn.unavailable(
                                _USER, f"no reply to PING within {KEEPALIVE_S:g} s"
                            )
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    kind = message["type"]
                    if kind == "subscribe":
                        if self.reconnects:
                            log.warning("event fan-out (Redis) subscribed again")
                        backoff.reset()
                        self.subscribed.set()
                    elif kind == "message":
                        self._receive(message["data"], deliver)
        finally:
            with contextlib.suppress(*redisconn.ERRORS):  # the connection may be gone
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis 8

    def _receive(self, payload: bytes, deliver: Callable[[Event], None]) -> None:
        try:
            batch = _decoder.decode(payload)
        except msgspec.DecodeError as exc:  # boundary: a stranger on the channel
            log.warning("event fan-out: ignoring a message that is not a batch: %s", exc)
            return
        if batch.sender == self.instance_id:
            return
        for event in batch.events:
            try:
                deliver(event)
            except Exception:  # boundary: one bad delivery must not end the subscription
                log.exception("event fan-out: delivering event %d failed", event.id)
            else:
                self.received += 1

    async def close(self) -> None:
        """Stop publishing and end :meth:`run` (within one keep-alive wait at most)."""
        self._closed = True
        await self._client.aclose()
