"""Runs the dispatcher and delivery: inside the gateway, or alone (``agentcore worker``).

Several runners may share one database (gateway workers, ``agentcore
worker`` processes, other machines): the dispatcher's cursor is locked and
compare-and-set, deliveries are claimed with leases (``repository.py``), so no
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
from agentcore.errors import ConfigError
from agentcore.events.base import Publisher
from agentcore.events.log import EventLog
from agentcore.events.memory import MemoryEventBus
from agentcore.lifecycle import Job
from agentcore.metrics import Metrics
from agentcore.repositories import MemoryRepositories, open_repositories
from agentcore.webhooks.delivery import DeliveryWorker, wait_any
from agentcore.webhooks.dispatcher import WebhookDispatcher
from agentcore.webhooks.repository import WebhookRepository
from agentcore.webhooks.secretbox import SecretBox
from agentcore.webhooks.sender import HttpSender, Sender
from agentcore.webhooks.ssrf import AddressPolicy

log = logging.getLogger("agentcore.webhooks")

#: Least seconds between the starts of two dispatch rounds while events keep coming
#: (a backlog of full batches is not paced): bounds the dispatcher's share of the
#: process under a publish load, at the cost of this much delay before a first attempt.
DISPATCH_PACE_S = 0.02


class WebhookWorker:
    def __init__(
        self,
        store: WebhookRepository,
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

    def jobs(self, hub: MemoryEventBus) -> list[Job]:
        """Inside the gateway: :meth:`run`, woken by the events committed to ``hub``."""
        return [lambda stop: self._run_woken(stop, hub)]

    async def _run_woken(self, stop: asyncio.Event, hub: MemoryEventBus) -> None:
        """Match and deliver until ``stop``; committed events wake the dispatcher."""
        committed = hub.subscribe(maxsize=1, policy="drop_oldest")

        async def wake_on_events() -> None:
            async for _ in committed:
                self.wake()

        async with asyncio.TaskGroup() as group:
            waking = group.create_task(wake_on_events())
            await self.run(stop)
            committed.close()
            waking.cancel()

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
    repos = open_repositories(
        config.database_url,
        pool_min_size=config.database.pool_min_size,
        pool_max_size=config.database.pool_max_size,
        statement_timeout_s=config.database.statement_timeout_s,
        box=SecretBox(config.webhook_secrets_key_file),
    )
    if isinstance(repos, MemoryRepositories):
        raise ConfigError(
            "agentcore worker: database.url is memory://, which no other process can see; "
            "use the gateway's SQLite file or PostgreSQL database"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await repos.open()
    await repos.webhooks.seal()  # loads the key: a wrong one stops the worker here
    # webhook.disabled events go through a log of our own (streams replay them from the log).
    events = EventLog(repos, MemoryEventBus(), config.events, system_clock)
    events.open()
    writer = asyncio.create_task(events.run())
    worker = WebhookWorker(repos.webhooks, config.webhooks, system_clock, events)
    log.info("agentcore webhook worker %s running", worker.delivery.owner)
    try:
        await worker.run(stop)
    finally:
        await events.close()
        await writer
        await repos.close()
    log.info("agentcore webhook worker stopped")
