"""Webhooks in a many-instance deployment: every event delivered, none twice.

The instances do not deliver (``webhooks.run_in_gateway = false``); two
``agentcore worker`` processes do, claiming deliveries from the shared
outbox with a lease, so each delivery is attempted by one worker at a time.
Events published through all three instances reach a receiver that answers
200: each exactly once (one request per ``webhook-id``, one per event), signed
with the webhook's secret.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter

import pytest

from benchmarks.cluster import Cluster
from tests.cluster.calls import WAIT_S, async_client, publish
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.server

EVENTS = 60
#: How long a duplicate is waited for once every event has arrived: far beyond
#: the workers' poll interval (0.05 s) and retry delays (0.2 s, 0.4 s).
QUIET_S = 1.0


async def test_two_workers_deliver_each_event_once(cluster: Cluster) -> None:
    assert cluster.delivery_workers == 2
    own = f"hook{secrets.token_hex(4)}"
    receiver = Receiver()
    try:
        path = f"/{own}"
        async with async_client(cluster.url) as http:
            created = await http.post(
                "/api/v1/integration/webhooks",
                json={"url": receiver.url(path), "events": [f"{own}.*"]},
            )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        clients = [async_client(i.url) for i in cluster.instances]
        try:
            published = [
                await publish(clients[n % len(clients)], f"{own}.item", {"n": n})
                for n in range(EVENTS)
            ]
        finally:
            for http in clients:
                await http.aclose()

        deadline = time.monotonic() + 3 * WAIT_S
        while len(receiver.at(path)) < EVENTS:
            assert time.monotonic() < deadline, f"{len(receiver.at(path))} of {EVENTS} delivered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(QUIET_S)
        got = receiver.at(path)
    finally:
        receiver.close()

    by_event = Counter(json.loads(r.body)["event_id"] for r in got)
    assert sorted(by_event) == sorted(published)
    assert [n for n in by_event.values() if n != 1] == [], by_event
    assert len({r.msg_id for r in got}) == len(got) == EVENTS
    # Signed with the secret the API returned: the workers share the instances' key file.
    assert all(r.verifies(secret) for r in got)
