"""The HTTP surface around JSON-RPC: health, metrics, documents, routing errors, lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentcore import __version__
from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.errors import StoreUnavailable
from agentcore.types import Message
from tests.support import agent_card, gateway_client, make_config, rpc

METHODS = [
    "agent.register",
    "agent.get",
    "agent.list",
    "agent.discover",
    "agent.ping",
    "agent.unregister",
    "task.create",
    "task.get",
    "task.query",
    "task.start",
    "task.update",
    "task.complete",
    "task.fail",
    "task.cancel",
    "llm.complete",
]


# -- health --------------------------------------------------------------------------


async def test_health(gateway: Gateway, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["status"] == "healthy"
    assert data["version"] == __version__
    assert isinstance(data["uptime_s"], float | int) and data["uptime_s"] >= 0
    database = data["dependencies"]["database"]
    assert database["status"] == "up"
    assert database["backend"] == gateway.config.database_url.partition(":")[0]
    assert database["latency_ms"] >= 0


async def test_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health/live")

    assert (response.status_code, response.json()) == (200, {"status": "alive"})


async def test_ready(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health/ready")

    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["dependencies"]["database"]["status"] == "up"


async def test_not_ready_when_the_store_check_fails(
    gateway: Gateway, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(gateway.repos, "check", down)
    gateway.endpoints._health = None

    ready = await client.get("/api/v1/health/ready")
    health = await client.get("/api/v1/health")
    live = await client.get("/api/v1/health/live")

    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    database = ready.json()["dependencies"]["database"]
    assert (database["status"], database["error"]) == ("down", "connection refused")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["dependencies"]["database"]["status"] == "down"
    assert live.status_code == 200


async def test_not_ready_when_the_store_is_closed(
    gateway: Gateway, client: httpx.AsyncClient
) -> None:
    await gateway.repos.close()
    gateway.endpoints._health = None

    response = await client.get("/api/v1/health/ready")

    assert response.status_code == 503
    assert response.json()["dependencies"]["database"]["status"] == "down"


async def test_store_status_is_cached_for_a_second(
    gateway: Gateway, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[float] = []
    check = gateway.repos.check

    async def counted() -> None:
        checks.append(time.monotonic())
        await check()

    monkeypatch.setattr(gateway.repos, "check", counted)
    gateway.endpoints._health = None
    for _ in range(3):
        assert (await client.get("/api/v1/health/ready")).status_code == 200
    assert len(checks) == 1

    async def down() -> None:
        raise StoreUnavailable("gone")

    monkeypatch.setattr(gateway.repos, "check", down)
    assert gateway.endpoints._health is not None
    checked_at, status = gateway.endpoints._health
    gateway.endpoints._health = (time.monotonic(), status)
    assert (await client.get("/api/v1/health/ready")).status_code == 200  # still cached
    gateway.endpoints._health = (checked_at - 1.5, status)  # the cached result is now too old
    assert (await client.get("/api/v1/health/ready")).status_code == 503


# -- metrics -------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> Iterator[tuple[dict[str, str], float]]:
    for (sample_name, labels), v in samples.items():
        if sample_name == name:
            yield dict(labels), v


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


async def test_metrics_count_requests_by_route(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        await client.get("/api/v1/health")
    for i in range(3):
        await rpc(client, "agent.register", {"agent_card": agent_card(f"m{i}")})
    await client.get("/no/such/path/12345")
    await client.get("/api/v1/jsonrpc")

    samples = await scrape(client)

    requests = "agentcore_http_requests_total"
    assert value(samples, requests, route="/api/v1/health", method="GET", status="200") == 2
    assert value(samples, requests, route="/api/v1/jsonrpc", method="POST", status="200") == 3
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert sum(v for labels, v in series(samples, requests) if labels["status"] == "405") == 1
    # The path of an unmatched request never becomes a label value.
    assert all("12345" not in labels["route"] for labels, _ in series(samples, requests))


async def test_metrics_latency_histogram(client: httpx.AsyncClient) -> None:
    for _ in range(4):
        await client.get("/api/v1/health/live")

    samples = await scrape(client)

    buckets = sorted(
        (float(labels["le"]), v)
        for labels, v in series(samples, "agentcore_http_request_duration_seconds_bucket")
        if labels["route"] == "/api/v1/health/live"
    )
    assert len(buckets) > 5
    assert buckets[-1] == (float("inf"), 4)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    duration = "agentcore_http_request_duration_seconds_count"
    assert value(samples, duration, route="/api/v1/health/live", method="GET") == 4


async def test_metrics_in_flight_counts_the_scrape_itself(client: httpx.AsyncClient) -> None:
    samples = await scrape(client)

    assert value(samples, "agentcore_http_requests_in_flight") == 1


async def test_metrics_agent_and_task_counts(
    gateway: Gateway, client: httpx.AsyncClient, clock: ManualClock
) -> None:
    for agent_id in ("a", "b", "c"):
        await rpc(client, "agent.register", {"agent_card": agent_card(agent_id, "x")})
    create = {"task_definition": {"required_capabilities": ["x"]}}
    done = await rpc(client, "task.create", create)
    await rpc(client, "task.start", {"task_id": done["task_id"]})
    await rpc(client, "task.complete", {"task_id": done["task_id"]})
    await rpc(client, "task.create", create)
    await rpc(client, "task.create", {"task_definition": {"required_capabilities": ["nobody"]}})

    samples = await scrape(client)

    assert value(samples, "agentcore_agents", status="active") == 3
    assert value(samples, "agentcore_agents", status="inactive") == 0
    tasks = {labels["status"]: v for labels, v in series(samples, "agentcore_tasks")}
    assert tasks == {
        "pending": 1,
        "assigned": 1,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "timed_out": 0,
    }
    registered = value(samples, "agentcore_events_published_total", type="agent.registered")
    assert registered == 3

    clock.advance(gateway.config.registry.heartbeat_ttl_s + 1)
    await rpc(client, "agent.ping", {"agent_id": "c"})
    await gateway.registry.sweep()
    samples = await scrape(client)
    assert value(samples, "agentcore_agents", status="active") == 1
    assert value(samples, "agentcore_agents", status="inactive") == 2


async def test_metrics_disabled_is_404() -> None:
    async with gateway_client(make_config(metrics={"enabled": False})) as (_, client):
        response = await client.get("/metrics")

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


# -- documents ------------------------------------------------------------------------


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, child in node.items():
            if key == "$ref" and isinstance(child, str):
                yield child
            else:
                yield from refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from refs(child)


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix)
    resolved: dict[str, Any] = document["components"]["schemas"][ref.removeprefix(prefix)]
    return resolved


async def test_openapi_document(gateway: Gateway, client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"] == {"title": "AgentCore Gateway", "version": __version__}
    for route in gateway.router.routes():
        assert route.path in doc["paths"], route.path
        for method in route.handlers:
            operation = doc["paths"][route.path][method.lower()]
            assert operation["responses"], (route.path, method)
    schemas = doc["components"]["schemas"]
    for name in ("RegisterParams", "AgentCard", "TaskDefinition", "Task", "TaskQuery", "Error"):
        assert name in schemas
    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    rpc_post = doc["paths"]["/api/v1/jsonrpc"]["post"]
    assert rpc_post["requestBody"]["content"]["application/json"]["schema"]
    assert {"200", "204", "400", "404", "413"} <= set(rpc_post["responses"])
    for name in METHODS:
        assert name in rpc_post["description"]
    definition = schemas["TaskDefinition"]
    assert definition["type"] == "object"
    assert "priority" in definition["properties"]


async def test_method_listing(gateway: Gateway, client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/jsonrpc/methods")

    assert response.status_code == 200
    listing = response.json()
    assert [m["name"] for m in listing["methods"]] == METHODS
    for entry in listing["methods"]:
        assert entry["description"]
        params = resolve(listing, entry["params"])
        assert params["type"] == "object"
        method = gateway.dispatcher.methods[entry["name"]]
        fields = {f.encode_name for f in msgspec.structs.fields(method.params)}
        assert set(params.get("properties", {})) == fields, entry["name"]
        assert resolve(listing, entry["result"])
    for ref in refs(listing):
        assert ref.removeprefix("#/components/schemas/") in listing["components"]["schemas"]
    by_name = {m["name"]: resolve(listing, m["params"]) for m in listing["methods"]}
    assert by_name["agent.get"]["required"] == ["agent_id"]
    assert by_name["task.create"]["required"] == ["task_definition"]
    assert by_name["agent.list"].get("required", []) == []


@pytest.mark.parametrize("path", ["/.well-known/agent-card.json", "/.well-known/agent.json"])
async def test_agent_card(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 200
    card = response.json()
    assert card["name"] == "AgentCore Gateway"
    assert card["version"] == __version__
    assert card["url"] == "http://gateway/api/v1/jsonrpc"
    assert [skill["id"] for skill in card["skills"]] == METHODS
    assert card["endpoints"][0]["protocols"] == ["jsonrpc-2.0"]


async def test_both_agent_card_paths_serve_the_same_card(client: httpx.AsyncClient) -> None:
    new = await client.get("/.well-known/agent-card.json")
    old = await client.get("/.well-known/agent.json")

    assert new.json() == old.json()


# -- routing errors ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/api/v1/nope")])
async def test_unknown_path_is_404_json(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (-32004, "not_found")
    assert path in error["message"]


async def test_long_unknown_path_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    path = "/x" + "y" * 5000

    response = await client.get(path)

    assert response.status_code == 404
    assert len(response.content) < 1000


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/jsonrpc", "POST"),
        ("PUT", "/api/v1/jsonrpc", "POST"),
        ("POST", "/api/v1/health", "GET"),
        ("DELETE", "/metrics", "GET"),
    ],
)
async def test_wrong_method_is_405_json(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    error = body["error"]
    if path == "/api/v1/jsonrpc":  # the JSON-RPC path answers in the JSON-RPC envelope
        assert (body["jsonrpc"], body["id"], error["code"]) == ("2.0", None, -32600)
    else:
        assert error["type"] == "method_not_allowed"
    assert allowed in error["message"]


async def test_405_carries_the_allow_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/jsonrpc")

    assert response.status_code == 405
    assert response.headers.get("allow") == "POST"


async def test_head_is_answered_like_get(client: httpx.AsyncClient) -> None:
    response = await client.head("/api/v1/health/live")

    assert response.status_code == 200
    assert response.content == b""


async def test_unexpected_error_is_500_without_details(
    gateway: Gateway, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> dict[str, int]:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(gateway.repos.agents, "count", broken)

    response = await client.get("/metrics")

    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (-32603, "internal_error")
    assert "secret" not in response.text


async def test_websocket_is_closed(gateway: Gateway) -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await gateway({"type": "websocket", "path": "/ws", "headers": []}, receive, send)

    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]


# -- lifespan -------------------------------------------------------------------------


async def test_lifespan_starts_and_stops_the_gateway() -> None:
    app = create_app(make_config(), clock=ManualClock())
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    server = asyncio.create_task(app({"type": "lifespan"}, to_app.get, from_app.put))

    await to_app.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(from_app.get(), 5)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        await rpc(client, "agent.register", {"agent_card": agent_card("life")})
        ready = await client.get("/api/v1/health/ready")
    await to_app.put({"type": "lifespan.shutdown"})
    stopped = await asyncio.wait_for(from_app.get(), 5)
    await asyncio.wait_for(server, 5)

    assert started["type"] == "lifespan.startup.complete"
    assert ready.status_code == 200
    assert stopped["type"] == "lifespan.shutdown.complete"
    with pytest.raises(StoreUnavailable):
        await app.repos.check()


async def test_lifespan_reports_a_failed_startup() -> None:
    config = make_config(database={"url": "sqlite:////dev/null/not-a-dir/agentcore.db"})
    app = create_app(config, clock=ManualClock())
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    await to_app.put({"type": "lifespan.startup"})

    await asyncio.wait_for(app({"type": "lifespan"}, to_app.get, from_app.put), 5)

    message = from_app.get_nowait()
    assert message["type"] == "lifespan.startup.failed"
    assert message["message"]
