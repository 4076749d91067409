"""Request limits: load shedding, JSON nesting depth, and request deadlines.

Load shedding bounds the requests one worker handles at once. Past
``limits.max_in_flight`` a request is answered 503 with ``Retry-After: 1``
immediately, instead of queueing into latency collapse. Per-client rate limits
sit in front of it, so one client's burst meets 429s first; shedding is the
last line for overload that no single client causes. WebSockets and SSE
streams are not counted (they are long-lived by design): the protection
chain (protection.py) asks :meth:`LoadShedder.enter` for other HTTP
requests only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

from agentcore.errors import (
    AgentCoreError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from agentcore.http import Response, refusal
from agentcore.lifecycle import Job, every
from agentcore.metrics import Metrics
from agentcore.types import Scope

RETRY_AFTER = [(b"retry-after", b"1")]
#: Limit errors counted in agentcore_rejected_total, by reason.
REJECTED: dict[type[AgentCoreError], str] = {
    PayloadTooLarge: "body_too_large",
    RequestTimeout: "read_timeout",
}


class LoadShedder:
    """The last check of the protection chain: :meth:`enter` before a request,
    :meth:`leave` after it."""

    def __init__(
        self,
        max_in_flight: int,
        metrics: Metrics | None = None,
        *,
        streams: Collection[str] = (),
    ) -> None:
        #: Paths of long-lived HTTP streams (SSE): passed through, never counted.
        self.streams = frozenset(streams)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._metrics = metrics

    def enter(self, scope: Scope) -> Response | None:
        """Count one more request in flight (the caller calls :meth:`leave` when it
        ends); the 503 answer instead when the worker is at its limit."""
        if self.in_flight >= self.max_in_flight:
            if self._metrics is not None:
                self._metrics.shed.inc()
            return refusal(
                scope,
                Overloaded(
                    f"the gateway is at its limit of {self.max_in_flight} requests in flight; "
                    "retry after 1 s"
                ),
                RETRY_AFTER,
            )
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Raise InvalidRequest when arrays/objects nest deeper than ``max_depth``.

    Counting brackets first (in C) makes the common case free: a body with
    fewer opening brackets than the limit cannot be too deep.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise InvalidRequest(f"invalid request: JSON nested deeper than {max_depth} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


class Deadlines:
    """One watchdog per worker instead of a timer per request.

    ``asyncio.timeout`` schedules and cancels a timer handle per use, a large
    share of a small request's cost (docs/performance-history.md, "HTTP
    throughput"); here a request only writes its deadline into a dict. :meth:`tick` runs every
    ``resolution_s`` and cancels the tasks whose deadline has passed,
    remembering why (``expired``), so the request's own code can turn the
    cancellation into a 408 or 503 answer. A deadline is therefore honoured
    within ``resolution_s`` of its time (the app calls :meth:`tick` that often).
    """

    def __init__(self, resolution_s: float) -> None:
        self.resolution_s = resolution_s
        self._armed: dict[asyncio.Task[Any], tuple[float, str]] = {}
        #: Tasks cancelled by the watchdog -> the kind of deadline they missed.
        self.expired: dict[asyncio.Task[Any], str] = {}

    def arm(
        self, seconds: float, kind: str, task: asyncio.Task[Any] | None = None
    ) -> asyncio.Task[Any] | None:
        """Give the current (or the given) task ``seconds`` more; returns the task."""
        if task is None:
            task = asyncio.current_task()
        if task is not None:
            self._armed[task] = (time.monotonic() + seconds, kind)
        return task

    def disarm(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._armed.pop(task, None)

    def missed(self, task: asyncio.Task[Any] | None) -> str | None:
        """The kind of deadline ``task`` was cancelled for (and un-cancel it), or None."""
        if task is None:
            return None
        kind = self.expired.pop(task, None)
        if kind is not None:
            task.uncancel()
        return kind

    def sweep(self) -> int:
        now = time.monotonic()
        late = [(t, kind) for t, (deadline, kind) in self._armed.items() if deadline <= now]
        for task, kind in late:
            del self._armed[task]
            self.expired[task] = kind
            task.cancel()
        return len(late)

    async def tick(self) -> None:
        """One sweep (:meth:`jobs` runs it every ``resolution_s``)."""
        self.sweep()

    def jobs(self) -> list[Job]:
        """The watchdog: :meth:`tick` every ``resolution_s``."""
        return [every(self.resolution_s, self.tick)]
