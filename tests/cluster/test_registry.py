"""The registry of a many-instance deployment is one registry.

An agent registered through one instance is discovered through every other,
talked to directly and through nginx. A discover answer an instance already
gave may be kept for ``registry.query_cache_s`` (docs/api.md, "Kept
answers"): the registration shows there within that time, and no later.
"""

from __future__ import annotations

import secrets
import time

import pytest

from benchmarks.cluster import Cluster
from tests.cluster.calls import client, rpc
from tests.support import agent_card

pytestmark = pytest.mark.server

#: registry.query_cache_s (the default), and the poll interval: slow enough that the
#: polls stay within the control class's rate limit (tests/cluster/conftest.py).
QUERY_CACHE_S = 1.0
POLL_S = 0.25


def discovered(url: str, source: str, capability: str) -> list[str]:
    with client(url, source) as http:
        result = rpc(http, "agent.discover", {"capabilities": [capability]})
    return [agent["agent_id"] for agent in result["agents"]]


def test_an_agent_registered_on_one_instance_is_discovered_on_every_other(
    cluster: Cluster, source: str
) -> None:
    a, b, c = cluster.instances
    capability = f"cluster-{secrets.token_hex(4)}"
    agent_id = f"agent-{capability}"
    # B has already answered this query (empty), so it may keep that answer a while.
    assert discovered(b.url, source, capability) == []

    with client(a.url, source) as http:
        registered = rpc(http, "agent.register", {"agent_card": agent_card(agent_id, capability)})
    assert registered["agent_id"] == agent_id
    registered_at = time.monotonic()

    # C has no kept answer: it sees the agent at once.
    assert discovered(c.url, source, capability) == [agent_id]
    # B: within query_cache_s of the registration.
    while discovered(b.url, source, capability) != [agent_id]:
        assert time.monotonic() - registered_at < QUERY_CACHE_S + POLL_S
        time.sleep(POLL_S)
    # Through nginx, round robin over the three.
    for _ in cluster.instances:
        assert discovered(cluster.url, source, capability) == [agent_id]


def test_a_body_larger_than_nginx_buffers_in_memory_passes_through(
    cluster: Cluster, source: str
) -> None:
    """nginx writes a body past its 8 KB buffer to a temporary file first: a batch of
    100 registrations (about 30 KB) through nginx is answered, every call with a result."""
    capability = f"batch-{secrets.token_hex(4)}"
    batch = [
        {
            "jsonrpc": "2.0",
            "method": "agent.register",
            "params": {"agent_card": agent_card(f"agent-{capability}-{n}", capability)},
            "id": n,
        }
        for n in range(100)
    ]
    with client(cluster.url, source) as http:
        response = http.post("/api/v1/jsonrpc", json=batch)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 100 and all("result" in answer for answer in answers), answers[:2]
