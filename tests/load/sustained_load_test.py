"""Sustained load: the HTTP mix for 10+ minutes, checked for degradation and leaks.

    locust -f tests/load/sustained_load_test.py --host=http://localhost:8001 \
        --users=500 --spawn-rate=50 --run-time=10m --headless

Degradation compares the full latency distribution of the first and the last
fifth of the run (p50/p95/p99 from every request, not Locust's buckets);
memory is the gateway's resident set, sampled from its /metrics every 5 s.
The summary (printed, and written to $AGENTCORE_LOADTEST_OUT) says the
degradation in percent and the memory growth; ``agentcore loadtest`` turns
them into verdicts (targets: < 10 % degradation, no leak).
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from common import Recorder, percentile, server_rss_bytes, write_summary
from http_load_test import HttpLoadUser
from locust import between, events
from locust.env import Environment

RECORDER = Recorder()
MEMORY: list[tuple[float, float]] = []


class SustainedUser(HttpLoadUser):
    wait_time = between(0.05, 0.15)


@events.request.add_listener
def _record(
    response_time: float, exception: Exception | None, response: Any = None, **_: Any
) -> None:
    status = getattr(response, "status_code", 0) if exception is None else 599
    RECORDER.add(time.time() - response_time / 1000, response_time, status or 0)


@events.test_start.add_listener
def _sample_memory(environment: Environment, **_: Any) -> None:
    host = environment.host or "http://127.0.0.1:8001"

    def loop() -> None:
        while True:
            rss = server_rss_bytes(host)
            if rss is not None:
                MEMORY.append((time.time(), rss))
            gevent.sleep(5)

    gevent.spawn(loop)


def _phase(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    latencies = [s[1] for s in samples]
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
    }


@events.quitting.add_listener
def _summarise(environment: Environment, **_: Any) -> None:
    samples = sorted(RECORDER.samples)
    if len(samples) < 10:
        write_summary("sustained", {"error": "too few requests to judge"})
        return
    start, end = samples[0][0], samples[-1][0]
    fifth = (end - start) / 5
    first = _phase([s for s in samples if s[0] < start + fifth])
    last = _phase([s for s in samples if s[0] >= end - fifth])
    degradation = {
        k: (last[k] - first[k]) / first[k] * 100 if first[k] else 0.0
        for k in ("p50_ms", "p95_ms", "p99_ms")
    }
    errors = sum(1 for s in samples if s[2] >= 400 or s[2] == 0)
    rss = [m[1] for m in MEMORY]
    write_summary(
        "sustained",
        {
            "duration_s": end - start,
            "first_fifth": first,
            "last_fifth": last,
            "degradation_percent": degradation,
            "error_rate_percent": errors / len(samples) * 100,
            "rss_mb": {"first": rss[0] / 2**20, "last": rss[-1] / 2**20, "max": max(rss) / 2**20}
            if rss
            else None,
            "rss_growth_mb": (rss[-1] - rss[0]) / 2**20 if rss else None,
        },
    )
