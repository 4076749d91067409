"""Calls the cluster tests make: JSON-RPC and event publishing from a source address,
and counters read from an instance's /metrics."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: Seconds any wait on another process may take.
WAIT_S = 10.0


def client(base_url: str, source: str = "127.0.0.1") -> httpx.Client:
    """A client whose connections leave from ``source`` (the rate limiter's identity)."""
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=base_url, transport=transport, timeout=WAIT_S)


def async_client(base_url: str, source: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=WAIT_S)


def rpc(http: httpx.Client, method: str, params: dict[str, Any]) -> Any:
    """Call one method; its result (any error fails the test)."""
    body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    response = http.post("/api/v1/jsonrpc", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert "error" not in data, data
    return data["result"]


async def publish(http: httpx.AsyncClient, event_type: str, data: dict[str, Any]) -> int:
    """Publish one event; its id."""
    response = await http.post(
        "/api/v1/integration/events/publish", json={"event_type": event_type, "data": data}
    )
    assert response.status_code == 202, response.text
    event_id: int = response.json()["event_id"]
    return event_id


def counter(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, on one instance."""
    text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
