"""One 3-instance cluster (benchmarks/cluster.py) for the tests of this package.

It starts once per session: three ``agentcore serve`` instances on one
throwaway PostgreSQL database, Redis fan-out and Redis rate limits, two
``agentcore worker`` processes for webhooks and nginx in front. Every test
isolates itself by names of its own (event types, capabilities, webhook
URLs) and by a loopback source address of its own, which is the identity the
rate limiter counts (authentication is off).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import asyncpg
import pytest
from redis.exceptions import RedisError

from benchmarks.cluster import Cluster
from tests.support import unavailable

#: The control class (JSON-RPC) limit of every instance: burst, then per second.
BURST = 10
RATE = 5.0
#: Laid over the cluster's configuration: that limit, and webhooks to a loopback
#: receiver, retried fast and polled often.
SETTINGS = {
    "rate_limit": {"classes": {"control": {"rate": RATE, "burst": BURST}}},
    "webhooks": {
        "allowed_networks": ["127.0.0.0/8"],
        "retry_schedule": [0.0, 0.2, 0.4],
        "poll_interval_s": 0.05,
        "timeout_s": 2.0,
    },
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(
                Cluster(3, workers=1, delivery_workers=2, settings=SETTINGS)
            )
        except (OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # nginx missing, PostgreSQL or Redis unreachable: skipped, or failed in CI.
            unavailable(f"a service the cluster needs is missing: {exc!r}")
        yield running


@pytest.fixture
def source() -> str:
    """A loopback address of this test's own (Linux routes all of 127/8 to lo)."""
    if os.uname().sysname != "Linux":
        return "127.0.0.1"
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
