"""One rate limit across all instances: Redis keeps a single count per client.

Every instance has the control class (JSON-RPC) limited to ``RATE`` per
second with a burst of ``BURST`` (tests/cluster/conftest.py). A burst of
requests from one client, spread over the three instances directly and
through nginx, is admitted at most ``BURST + RATE * t`` times in total, t
being the seconds from the first request sent to the last answer read, and
the rest refused with 429. Counted per instance instead, three instances
would admit three bursts; and nginx's requests are the same client only
because the instances believe its ``X-Forwarded-For``
(``server.trusted_proxies``), else they would be a second one. Each
instance's /metrics counts what it admitted and refused, and the sums agree
with what the client saw.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import httpx
import pytest

from benchmarks.cluster import Cluster
from tests.cluster.calls import async_client, counter
from tests.cluster.conftest import BURST, RATE

pytestmark = pytest.mark.server

REQUESTS = 80
LIST = {"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1}
ADMITTED = {"route": "/api/v1/jsonrpc", "status": "200"}


def totals(cluster: Cluster) -> Counter[str]:
    """JSON-RPC requests admitted and refused, summed over the instances."""
    out: Counter[str] = Counter()
    for instance in cluster.instances:
        out["admitted"] += int(counter(instance.url, "agentcore_http_requests_total", **ADMITTED))
        out["refused"] += int(counter(instance.url, "agentcore_rate_limited_total"))
    return out


async def burst(cluster: Cluster, source: str) -> tuple[Counter[int], float]:
    """``REQUESTS`` at once, round robin over the instances and nginx; statuses and seconds."""
    urls = [i.url for i in cluster.instances] + [cluster.url]
    clients = [async_client(url, source) for url in urls]

    async def one(http: httpx.AsyncClient) -> int:
        return (await http.post("/api/v1/jsonrpc", json=LIST)).status_code

    try:
        started = time.monotonic()
        statuses = await asyncio.gather(*(one(clients[n % len(clients)]) for n in range(REQUESTS)))
        elapsed = time.monotonic() - started
    finally:
        for http in clients:
            await http.aclose()
    return Counter(statuses), elapsed


async def test_a_burst_over_all_instances_is_admitted_once_within_the_limit(
    cluster: Cluster, source: str
) -> None:
    before = await asyncio.to_thread(totals, cluster)
    statuses, elapsed = await burst(cluster, source)

    admitted, refused = statuses[200], statuses[429]
    assert admitted + refused == REQUESTS, statuses
    bound = math.floor(BURST + RATE * elapsed)
    assert BURST <= admitted <= bound, f"{admitted} admitted in {elapsed:.3f} s, bound {bound}"
    assert bound < 2 * BURST, f"the burst took {elapsed:.3f} s: too slow to tell"

    # Each instance counts a request just after answering it: wait for the last ones.
    deadline = time.monotonic() + 5
    while (after := await asyncio.to_thread(totals, cluster)) - before != Counter(
        admitted=admitted, refused=refused
    ):
        assert time.monotonic() < deadline, (after - before, statuses)
        await asyncio.sleep(0.05)
