"""Burst and recovery on a real gateway process: rate limiting first, latency inside the SLO.

The gateway runs with a control-class limit of 200 requests/s (burst 100);
one client drives the seed-like pattern of ``benchmarks/burst_recovery.py``
(open loop, keep-alive connections, 4 JSON-RPC ``agent.ping`` to 1 health
check): 100 req/s for 2 s, then 1,000 req/s (5x the limit) for 3 s on 100
connections, then 100 req/s for 6 s. All of it comes from one address, so
per-client rate limiting answers the burst with 429s before load shedding
(503) could take part; only 200 and 429 may be seen.

Checked: admitted requests during the burst have p95 < 50 ms and p99 <
100 ms (from writing the request to reading the whole answer, with the client
on the same two cores), and within 5 s of the burst's end the gateway is back
to normal: a full second of only 200s with latency near the baseline (see
``recovery_time`` in the benchmark). The figures are printed (``pytest -s``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks.burst_recovery import (
    SLO_P95_S,
    SLO_P99_S,
    SLO_RECOVERY_S,
    format_report,
    run,
    seed_pattern,
)
from tests.support import ServerProcess

pytestmark = pytest.mark.server

ServerFactory = Callable[..., ServerProcess]

LIMIT_RATE = 200
LIMIT_BURST = 100
CLASS_LIMIT = f"{{control={{rate={LIMIT_RATE},burst={LIMIT_BURST}}}}}"


def test_burst_is_rate_limited_within_the_slo_and_recovers(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"AGENTCORE_RATE_LIMIT__CLASSES": CLASS_LIMIT}).start()
    phases = seed_pattern(
        baseline_rate=100,
        baseline_s=2,
        burst_rate=5 * LIMIT_RATE,
        burst_s=3,
        recovery_s=6,
        connections=10,
        burst_connections=100,
    )

    result = run(server.url, phases)
    print("\n" + format_report(result))

    baseline, burst, recovery = (result.phase(p.name) for p in phases)
    for phase in (baseline, burst, recovery):
        assert set(phase.statuses) <= {"200", "429"}, (phase.name, phase.statuses, phase.errors)
        assert set(phase.routes["health"]) == {"200"}, (phase.name, phase.routes)
    assert baseline.statuses == {"200": round(baseline.target_rate * baseline.duration_s)}
    # The client kept to its schedule, so the burst really was 5x the limit.
    assert burst.max_lag_ms < 250, "the client fell behind its schedule"
    # Rate limiting activated and admitted about rate x duration + burst pings.
    assert burst.statuses.get("429", 0) > 0
    admitted_pings = burst.routes["ping"]["200"]
    assert LIMIT_RATE * burst.duration_s <= admitted_pings
    assert admitted_pings <= LIMIT_RATE * burst.duration_s + LIMIT_BURST + 20
    # The SLO for admitted requests, and recovery.
    assert burst.p95_ms is not None and burst.p95_ms < SLO_P95_S * 1000
    assert burst.p99_ms is not None and burst.p99_ms < SLO_P99_S * 1000
    assert result.recovery_s is not None and result.recovery_s < SLO_RECOVERY_S
    assert result.passed, result.slo
    assert "Traceback" not in server.log.read_text()
