"""Background work: each feature names its jobs, the app's lifespan runs them all.

A :data:`Job` is a coroutine function given the app's stop event: it runs from
startup until that event is set (or, for a feature that ends its job itself,
until the feature is closed). Features return theirs from a ``jobs()`` method
(the registry's heartbeat flush and sweep, the task deadline sweep, event
trimming and fan-out, the stream router and keepalive, LLM usage, webhook
delivery); :func:`every` turns a periodic call into a job. The app collects
them into one list, and :class:`Background` starts each as a task at startup
and ends them at shutdown, so every task it starts is one it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeAlias

log = logging.getLogger("agentcore")

#: Background work: runs until the stop event it is given is set.
Job: TypeAlias = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def every(seconds: float, job: Callable[[], Awaitable[object]]) -> Job:
    """A job that calls ``job`` every ``seconds`` until stopped; a failing call is
    logged, not fatal (the next one comes at the next interval)."""

    async def periodic(stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            if stop.is_set():
                return
            try:
                await job()
            except Exception:  # boundary: a background loop outlives one failed run
                log.exception("background job %s failed", getattr(job, "__qualname__", job))

    return periodic


class Background:
    """The app's background tasks: one per job, from :meth:`start` to :meth:`join`."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.jobs = list(jobs)
        #: Set when shutdown begins: every job's signal to end.
        self.stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start one task per job."""
        self.stop.clear()
        for job in self.jobs:
            task = asyncio.create_task(job(self.stop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def join(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for every task to end after :attr:`stop` was set
        (and the features closed that end their own jobs); cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
