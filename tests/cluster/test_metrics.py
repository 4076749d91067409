"""/metrics of a many-instance deployment: the instances' totals add up to what was sent.

Each instance counts only what it served; nginx spreads requests over them
(round robin), so a deployment's total is the sum over the instances
(Prometheus: ``sum(agentcore_http_requests_total)`` over the scraped
targets). A known number of health checks through nginx shows up, summed,
exactly once each, and every instance served some.
"""

from __future__ import annotations

import time

import httpx
import pytest

from benchmarks.cluster import Cluster
from tests.cluster.calls import WAIT_S, counter

pytestmark = pytest.mark.server

REQUESTS = 30
HEALTH = {"route": "/api/v1/health", "method": "GET", "status": "200"}


def served(cluster: Cluster) -> list[int]:
    """Health checks each instance has counted."""
    return [
        int(counter(i.url, "agentcore_http_requests_total", **HEALTH)) for i in cluster.instances
    ]


def test_request_counters_summed_over_the_instances_match_what_was_sent(
    cluster: Cluster,
) -> None:
    before = served(cluster)
    with httpx.Client(base_url=cluster.url, timeout=WAIT_S) as http:
        for _ in range(REQUESTS):
            assert http.get("/api/v1/health").status_code == 200

    # An instance counts a request just after answering it: wait for the last ones.
    deadline = time.monotonic() + WAIT_S
    while sum(served(cluster)) - sum(before) < REQUESTS:
        assert time.monotonic() < deadline, (before, served(cluster))
        time.sleep(0.05)
    time.sleep(0.2)  # a request counted twice would show by now
    delta = [n - b for n, b in zip(served(cluster), before, strict=True)]
    assert sum(delta) == REQUESTS, delta
    assert all(n > 0 for n in delta), f"nginx did not spread the requests: {delta}"
