"""Runs the dispatcher and delivery: inside the gateway, or alone (``agentcore worker``).

Several runners may share one database (gateway workers, ``agentcore
worker`` processes, other machines): the dispatcher's cursor is locked and
compare-and-set, deliveries are claimed with leases (``store.py``), so no
event is matched twice and no delivery is attempted by two runners at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from agentcore.clock import Clock, system_clock
from agentcore.config import Config, WebhooksConfig
from agentcore.events.base import Publisher
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus
from agentcore.metrics import Metrics
from agentcore.store import open_store
from agentcore.store.sql import SqlStore
from agentcore.webhooks.delivery import DeliveryWorker, wait_any
from agentcore.webhooks.dispatcher import WebhookDispatcher
from agentcore.webhooks.sender import HttpSender, Sender
from agentcore.webhooks.ssrf import AddressPolicy
from agentcore.webhooks.store import WebhookStore

log = logging.getLogger("agentcore.webhooks")

#: Least seconds between the starts of two dispatch rounds while events keep coming
#: (a backlog of full batches is not paced): bounds the dispatcher's share of the
#: process under a publish load, at the cost of this much delay before a first attempt.
DISPATCH_PACE_S = 0.02


class WebhookWorker:
    def __init__(
        self,
        store: WebhookStore,
        config: WebhooksConfig,
        clock: Clock,
        publisher: Publisher | None = None,
        metrics: Metrics | None = None,
        sender: Sender | None = None,
    ) -> None:
        self._config = config
        self.sender = sender or HttpSender(
            AddressPolicy(config.allowed_networks), config.concurrency
        )
        self.dispatcher = WebhookDispatcher(
            store, clock, config.batch_size, config.retry_schedule[0]
        )
        self.delivery = DeliveryWorker(store, self.sender, config, clock, publisher, metrics)
        self._events = asyncio.Event()

    def wake(self) -> None:
        """Events were committed: match them now rather than at the next poll."""
        self._events.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch and deliver until ``stop``; closes the sender at the end."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._dispatch(stop))
                group.create_task(self.delivery.run(stop))
        finally:
            await self.sender.close()

    async def _dispatch(self, stop: asyncio.Event) -> None:
        batch = self._config.batch_size
        pace_s = min(DISPATCH_PACE_S, self._config.poll_interval_s)
        while not stop.is_set():
            self._events.clear()
            started = time.monotonic()
            try:
                consumed = await self.dispatcher.run_once()
            except Exception:  # boundary: retried at the next poll
                log.exception("webhook dispatch failed")
                consumed = 0
            if self.dispatcher.queued:
                self.delivery.wake()
            if consumed < batch:
                await wait_any(stop, self._events, self._config.poll_interval_s)
                # Under a stream of commits, let events gather: one round per pace, not per commit.
                rest = pace_s - (time.monotonic() - started)
                if rest > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), rest)


async def run_standalone(config: Config, stop: asyncio.Event | None = None) -> None:
    """``agentcore worker``: deliver against the configured database until SIGTERM/SIGINT."""
    store = open_store(
        config.database_url,
        pool_min_size=config.database.pool_min_size,
        pool_max_size=config.database.pool_max_size,
        statement_timeout_s=config.database.statement_timeout_s,
    )
    if not isinstance(store, SqlStore):  # pragma: no cover - open_store builds SqlStores
        raise TypeError("webhook delivery needs a SQL store")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await store.open()
    # webhook.disabled events go through a log of our own (streams replay them from the store).
    events = EventLog(store, MemoryEventBus(), config.events, system_clock)
    events.open()
    writer = asyncio.create_task(events.run())
    worker = WebhookWorker(WebhookStore(store.db), config.webhooks, system_clock, events)
    log.info("agentcore webhook worker %s running", worker.delivery.owner)
    try:
        await worker.run(stop)
    finally:
        await events.close()
        await writer
        await store.close()
    log.info("agentcore webhook worker stopped")
