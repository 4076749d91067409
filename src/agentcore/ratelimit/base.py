"""Rate limiting: one algorithm (GCRA), one small interface, several backends.

GCRA (the generic cell rate algorithm) is a token bucket stored as a single
number per key, the *theoretical arrival time* (TAT). A limit of ``rate``
requests per second with a ``burst`` lets ``burst`` requests through at once
and then one every ``1/rate`` seconds. The check and the consume are one
step: the in-process backend does both without an ``await`` in between, the
Redis backend in one Lua script, so concurrent requests cannot overshoot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import msgspec


@dataclass(frozen=True, slots=True, eq=False)
class Limit:
    """``rate`` requests per second, up to ``burst`` at once.

    Compared and hashed by identity: each configured limit is one object for
    the life of the rate-limit check, and a limit is a dict key on every request,
    where a dataclass's field-wise hash showed in the cost (performance-history.md,
    "HTTP throughput", fourth session).
    """

    name: str
    rate: float
    burst: int

    #: Seconds between requests at the steady rate (derived; read on every check).
    interval_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval_s", 1.0 / self.rate)

    @property
    def window_s(self) -> int:
        """Seconds for an exhausted quota to refill completely (the policy window)."""
        return max(1, math.ceil(self.burst / self.rate))


class Decision(msgspec.Struct, frozen=True):
    """One request's verdict (made per request: a Struct builds in a fraction of a
    frozen dataclass's time)."""

    allowed: bool
    limit: Limit
    #: Requests that could still be made right now.
    remaining: int
    #: Seconds until the quota is full again.
    reset_s: float
    #: Seconds until the next request would be allowed (0 when allowed).
    retry_after_s: float


def gcra(tat: float, now: float, limit: Limit, cost: int = 1) -> tuple[Decision, float | None]:
    """Decide one request; returns the decision and the new TAT to store (None: unchanged).

    Shared by the in-process backend and mirrored line by line in the Redis Lua script.
    """
    interval = limit.interval_s
    tolerance = interval * limit.burst
    if tat < now:
        tat = now
    new_tat = tat + interval * cost
    allow_at = new_tat - tolerance
    if now < allow_at:
        remaining = max(0, int((now - (tat - tolerance)) / interval))
        return Decision(False, limit, remaining, tat - now, allow_at - now), None
    remaining = max(0, int((now - allow_at) / interval))
    return Decision(True, limit, remaining, new_tat - now, 0.0), new_tat


class RateLimiter(Protocol):
    #: True when the limit holds across workers and instances (Redis), False
    #: when each worker process counts on its own (in-process backend).
    shared: bool
    #: Why the backend failed its last command (None: it answered; the in-process
    #: backend never fails), shown in ``/api/v1/health``.
    backend_error: str | None

    async def hit(self, key: str, limit: Limit, cost: int = 1) -> Decision:
        """Check and consume ``cost`` requests of ``key`` under ``limit`` atomically."""

    async def reset(self, key: str) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`~agentcore.errors.StoreUnavailable` when the backend cannot answer."""

    async def close(self) -> None: ...
