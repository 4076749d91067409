"""Micro-benchmarks of the rate-limit check (pytest-benchmark).

The in-process check runs on every limited request, so it must stay far below
the cost of the request itself: the target is a mean under 5 microseconds.
It is timed in this process's CPU time (``time.process_time``): on a shared
machine, wall-clock rounds also count the time other processes held the core,
which is not the check's cost. The fastest rounds take about 1.6 us a check.
The Redis round trip is measured in wall-clock time, for information only (one
EVALSHA on loopback, dominated by the network and the event loop).

Run: ``python -m pytest benchmarks/bench_ratelimit.py --benchmark-only -q``
(not collected by the default test run, whose testpaths is ``tests``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from pytest_benchmark.fixture import BenchmarkFixture

from agentcore.clock import system_clock
from agentcore.errors import StoreUnavailable
from agentcore.ratelimit.base import Limit, gcra
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.ratelimit.redis import RedisRateLimiter

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The budget for one in-process check.
MAX_MEAN_S = 5e-6
#: High enough that the benchmark never runs out of quota (the allowed path is the common one).
LIMIT = Limit("control", 1e9, 1_000_000_000)
#: Calls per timed round: long rounds keep the timer's own cost out of a 2 us measurement.
ITERATIONS = 1000
ROUNDS = 200

T = TypeVar("T")


def timed(benchmark: BenchmarkFixture, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` timed in ROUNDS rounds of ITERATIONS calls; returns its result."""
    result: T = benchmark.pedantic(  # type: ignore[no-untyped-call]
        fn, args, rounds=ROUNDS, iterations=ITERATIONS
    )
    return result


def mean_s(benchmark: BenchmarkFixture) -> float:
    assert benchmark.stats is not None
    mean: float = benchmark.stats.stats.mean
    return mean


#: For the in-process checks: CPU time of this process (see the module docstring).
cpu_time = pytest.mark.benchmark(timer=time.process_time)


@cpu_time
def test_memory_hit_now(benchmark: BenchmarkFixture) -> None:
    limiter = MemoryRateLimiter(system_clock)

    decision = timed(benchmark, limiter.hit_now, "ip:203.0.113.7", LIMIT)

    assert decision.allowed
    assert mean_s(benchmark) < MAX_MEAN_S


@cpu_time
def test_memory_hit_now_refused(benchmark: BenchmarkFixture) -> None:
    limiter = MemoryRateLimiter(system_clock)
    exhausted = Limit("control", 0.001, 1)
    limiter.hit_now("ip:203.0.113.7", exhausted)

    decision = timed(benchmark, limiter.hit_now, "ip:203.0.113.7", exhausted)

    assert not decision.allowed
    assert mean_s(benchmark) < MAX_MEAN_S


@cpu_time
def test_memory_hit_now_many_keys(benchmark: BenchmarkFixture) -> None:
    """10,000 distinct clients in the table, visited in turn (the lookup stays O(1))."""
    limiter = MemoryRateLimiter(system_clock)
    keys = [f"ip:10.0.{i // 256}.{i % 256}" for i in range(10_000)]
    for key in keys:
        limiter.hit_now(key, LIMIT)
    cursor = itertools.cycle(keys)

    timed(benchmark, lambda: limiter.hit_now(next(cursor), LIMIT))

    assert len(limiter) == 10_000
    assert mean_s(benchmark) < MAX_MEAN_S


@cpu_time
def test_gcra(benchmark: BenchmarkFixture) -> None:
    now = system_clock()

    decision, _ = timed(benchmark, gcra, now, now, LIMIT)

    assert decision.allowed


def test_redis_hit_round_trip(benchmark: BenchmarkFixture) -> None:
    """One check against Redis on loopback, for information (no budget asserted)."""
    prefix = f"agentcore-bench:rl:{secrets.token_hex(6)}:"
    loop = asyncio.new_event_loop()
    limiter = RedisRateLimiter(REDIS_URL, prefix=prefix)
    try:
        try:
            loop.run_until_complete(limiter.ping())
        except StoreUnavailable as exc:
            pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")

        decision = benchmark(lambda: loop.run_until_complete(limiter.hit("ip:bench", LIMIT)))

        assert decision.allowed
    finally:
        loop.run_until_complete(_cleanup(prefix))
        loop.run_until_complete(limiter.close())
        loop.close()


async def _cleanup(prefix: str) -> None:
    admin: aioredis.Redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        async for name in admin.scan_iter(match=prefix + "*"):
            await admin.delete(name)
    finally:
        await admin.aclose()
