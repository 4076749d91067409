"""The rate-limiter contract, written once and run over every backend; and GCRA itself.

The in-process backend runs on a :class:`ManualClock` and the Redis backend on
Redis's own clock (``TIME`` inside the script), so each test either uses a
rate slow enough that nothing refills while it runs (0.001/s: one request per
1000 s) or, for refill, waits: the manual clock is moved, Redis gets a short
real sleep. Redis on ``AGENTCORE_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), each test under its own key prefix, deleted
afterwards; unreachable means skipped (failed with ``AGENTCORE_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentcore.clock import ManualClock
from agentcore.ratelimit.base import Decision, Limit, RateLimiter, gcra
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.ratelimit.redis import RedisRateLimiter
from tests.support import unavailable

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: One request per 1000 s: nothing refills while a test runs, on any clock.
SLOW = 0.001


@dataclass
class Backend:
    limiter: RateLimiter
    #: Let ``seconds`` pass: moves the manual clock, or sleeps for Redis.
    wait: Callable[[float], Awaitable[None]]
    #: Seconds the backend's clock may move on its own during a test (0: manual clock).
    drift_s: float


async def _redis_backend() -> AsyncIterator[Backend]:
    prefix = f"agentcore-test:rl:{secrets.token_hex(6)}:"
    admin: aioredis.Redis = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await admin.ping()
    except (RedisError, OSError) as exc:
        await admin.aclose()
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    limiter = RedisRateLimiter(REDIS_URL, prefix=prefix)
    try:
        yield Backend(limiter, asyncio.sleep, drift_s=5.0)
    finally:
        await limiter.close()
        async for name in admin.scan_iter(match=prefix + "*"):
            await admin.delete(name)
        await admin.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = ManualClock()

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        limiter = MemoryRateLimiter(clock)
        yield Backend(limiter, advance, drift_s=0.0)
        await limiter.close()
    else:
        async for b in _redis_backend():
            yield b


async def hits(limiter: RateLimiter, key: str, limit: Limit, n: int) -> list[Decision]:
    return [await limiter.hit(key, limit) for _ in range(n)]


# -- the contract ----------------------------------------------------------------------


async def test_burst_is_admitted_then_refused(backend: Backend) -> None:
    limit = Limit("burst", SLOW, 5)

    decisions = await hits(backend.limiter, "client", limit, 7)

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert all(d.limit == limit for d in decisions)


async def test_remaining_counts_down(backend: Backend) -> None:
    decisions = await hits(backend.limiter, "client", Limit("countdown", SLOW, 4), 6)

    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0, 0]


async def test_retry_after_is_positive_only_on_refusal(backend: Backend) -> None:
    limit = Limit("retry", SLOW, 2)

    first, second, refused = await hits(backend.limiter, "client", limit, 3)

    assert first.retry_after_s == second.retry_after_s == 0.0
    assert not refused.allowed
    # The next request is allowed one interval (1000 s) after the first one.
    assert limit.interval_s - backend.drift_s <= refused.retry_after_s <= limit.interval_s
    assert refused.retry_after_s > 0


async def test_reset_is_the_time_until_the_quota_is_full(backend: Backend) -> None:
    limit = Limit("reset", SLOW, 3)
    interval = limit.interval_s

    decisions = await hits(backend.limiter, "client", limit, 4)

    for used, decision in zip([1, 2, 3, 3], decisions, strict=True):
        assert used * interval - backend.drift_s <= decision.reset_s <= used * interval


async def test_keys_are_independent(backend: Backend) -> None:
    limit = Limit("keys", SLOW, 2)
    await hits(backend.limiter, "a", limit, 3)

    b = await backend.limiter.hit("b", limit)
    a = await backend.limiter.hit("a", limit)

    assert (b.allowed, b.remaining) == (True, 1)
    assert not a.allowed


async def test_limit_names_are_independent(backend: Backend) -> None:
    """The same identity is counted apart per limit (route class, tenant, key)."""
    control, llm = Limit("control", SLOW, 2), Limit("llm", SLOW, 2)
    await hits(backend.limiter, "client", control, 3)

    other = await backend.limiter.hit("client", llm)
    again = await backend.limiter.hit("client", control)

    assert (other.allowed, other.remaining) == (True, 1)
    assert not again.allowed


async def test_cost_above_one(backend: Backend) -> None:
    limit = Limit("cost", SLOW, 5)

    first = await backend.limiter.hit("client", limit, cost=3)
    too_much = await backend.limiter.hit("client", limit, cost=3)
    rest = await backend.limiter.hit("client", limit, cost=2)
    after = await backend.limiter.hit("client", limit)

    assert (first.allowed, first.remaining) == (True, 2)
    # A refused request consumes nothing.
    assert (too_much.allowed, too_much.remaining) == (False, 2)
    assert (rest.allowed, rest.remaining) == (True, 0)
    assert not after.allowed


async def test_quota_refills_over_time(backend: Backend) -> None:
    limit = Limit("refill", 2.0, 2)  # one request back every 0.5 s
    assert [d.allowed for d in await hits(backend.limiter, "client", limit, 3)] == [
        True,
        True,
        False,
    ]

    await backend.wait(0.55)
    one_back = await hits(backend.limiter, "client", limit, 2)

    assert [d.allowed for d in one_back] == [True, False]
    await backend.wait(1.05)
    full = await hits(backend.limiter, "client", limit, 3)
    assert [d.allowed for d in full] == [True, True, False]


async def test_retry_after_is_when_the_next_request_passes(backend: Backend) -> None:
    limit = Limit("retry-refill", 5.0, 1)  # one request every 0.2 s
    await backend.limiter.hit("client", limit)
    refused = await backend.limiter.hit("client", limit)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= limit.interval_s + 1e-6  # float error at epoch times

    await backend.wait(refused.retry_after_s + 0.01)

    assert (await backend.limiter.hit("client", limit)).allowed


async def test_reset_gives_the_whole_quota_back(backend: Backend) -> None:
    limit = Limit("cleared", SLOW, 2)
    await hits(backend.limiter, "client", limit, 3)
    await hits(backend.limiter, "other", limit, 2)

    await backend.limiter.reset("client")

    assert (await backend.limiter.hit("client", limit)).remaining == 1
    assert not (await backend.limiter.hit("other", limit)).allowed


async def test_concurrent_hits_admit_exactly_the_burst(backend: Backend) -> None:
    """Check and consume are one step: 200 hits at once against a burst of 50."""
    limit = Limit("concurrent", SLOW, 50)

    decisions = await asyncio.gather(*(backend.limiter.hit("client", limit) for _ in range(200)))

    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 50
    assert sorted(d.remaining for d in admitted) == list(range(50))
    assert all(d.retry_after_s > 0 for d in decisions if not d.allowed)


async def test_shared_says_whether_workers_share_the_count(backend: Backend) -> None:
    assert backend.limiter.shared is isinstance(backend.limiter, RedisRateLimiter)


# -- GCRA itself -----------------------------------------------------------------------

ONE_PER_S = Limit("t", 1.0, 3)  # interval 1 s, burst 3: tolerance 3 s


@pytest.mark.parametrize(
    ("tat", "now", "cost", "allowed", "remaining", "reset_s", "retry_s", "new_tat"),
    [
        # fresh key (the TAT of an absent key is "now")
        (100.0, 100.0, 1, True, 2, 1.0, 0.0, 101.0),
        # a TAT in the past is a full quota
        (50.0, 100.0, 1, True, 2, 1.0, 0.0, 101.0),
        (101.0, 100.0, 1, True, 1, 2.0, 0.0, 102.0),
        # the last request of the burst
        (102.0, 100.0, 1, True, 0, 3.0, 0.0, 103.0),
        # burst spent: refused, next one in 1 s, nothing stored
        (103.0, 100.0, 1, False, 0, 3.0, 1.0, None),
        (103.0, 100.5, 1, False, 0, 2.5, 0.5, None),
        # exactly one interval later: allowed again
        (103.0, 101.0, 1, True, 0, 3.0, 0.0, 104.0),
        # two intervals later: one left after this one
        (103.0, 102.0, 1, True, 1, 2.0, 0.0, 104.0),
        # cost > 1 consumes several
        (100.0, 100.0, 2, True, 1, 2.0, 0.0, 102.0),
        (100.0, 100.0, 3, True, 0, 3.0, 0.0, 103.0),
        (101.0, 100.0, 3, False, 2, 1.0, 1.0, None),
    ],
)
def test_gcra_table(
    tat: float,
    now: float,
    cost: int,
    allowed: bool,
    remaining: int,
    reset_s: float,
    retry_s: float,
    new_tat: float | None,
) -> None:
    decision, stored = gcra(tat, now, ONE_PER_S, cost)

    assert decision == Decision(allowed, ONE_PER_S, remaining, reset_s, retry_s)
    assert stored == new_tat


def test_gcra_sub_second_interval() -> None:
    limit = Limit("fast", 4.0, 1)  # one every 0.25 s, no burst beyond one

    first, tat = gcra(10.0, 10.0, limit)
    assert tat is not None
    refused, unchanged = gcra(tat, 10.125, limit)
    later, _ = gcra(tat, 10.25, limit)

    assert (first.allowed, first.remaining, first.reset_s) == (True, 0, 0.25)
    assert (refused.allowed, unchanged) == (False, None)
    assert refused.retry_after_s == pytest.approx(0.125)
    assert refused.reset_s == pytest.approx(0.125)
    assert later.allowed


def test_gcra_sequence_admits_burst_then_one_per_interval() -> None:
    limit = Limit("seq", 1.0, 3)
    tat, admitted = 0.0, []
    for step in range(40):  # a request every 0.25 s for 10 s
        now = 1000.0 + step * 0.25
        decision, new_tat = gcra(tat, now, limit)
        if new_tat is not None:
            tat = new_tat
        admitted.append(decision.allowed)

    # 3 at once, then one per second: 3 + 9 more in the remaining 9.75 s.
    assert sum(admitted) == 3 + 9
    assert admitted[:4] == [True, True, True, False]


@pytest.mark.parametrize(
    ("rate", "burst", "interval_s", "window_s"),
    [(1.0, 3, 1.0, 3), (0.01, 50, 100.0, 5000), (100.0, 1, 0.01, 1), (2.0, 5, 0.5, 3)],
)
def test_limit_interval_and_window(
    rate: float, burst: int, interval_s: float, window_s: int
) -> None:
    limit = Limit("w", rate, burst)

    assert limit.interval_s == interval_s
    assert limit.window_s == window_s
