"""The webhook REST API: CRUD, pagination, filters, secrets, SSRF at registration, tenants."""

from __future__ import annotations

from typing import Any

from agentcore import apikeys
from agentcore.app import Gateway
from agentcore.clock import ManualClock
from tests.support import gateway_client, make_config
from tests.webhooks.conftest import Receiver, publish, register, until, webhook_gateway

BASE = "/api/v1/integration/webhooks"
#: API-only gateways: loopback allowed, nobody delivering.
API_ONLY: dict[str, Any] = {"allowed_networks": ["127.0.0.0/8"], "run_in_gateway": False}
SEED_URL = "https://webhook-test.example.com/endpoint"


async def test_create_returns_201_with_id_and_generated_secret_only_once() -> None:
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        response = await client.post(
            BASE,
            json={"url": "http://127.0.0.1:9/h", "events": ["order.*"], "name": "orders"},
        )
        assert response.status_code == 201
        created = response.json()
        assert created["id"].startswith("wh_")
        assert created["secret"].startswith("whsec_")
        assert created["status"] == "active"
        fetched = (await client.get(f"{BASE}/{created['id']}")).json()
        assert "secret" not in fetched
        assert fetched["name"] == "orders"
        listed = (await client.get(BASE)).json()
        assert all("secret" not in w for w in listed["data"])


async def test_the_seed_load_test_url_is_accepted_though_it_does_not_resolve() -> None:
    async with gateway_client(make_config(webhooks={"run_in_gateway": False})) as (_, client):
        response = await client.post(BASE, json={"url": SEED_URL, "events": ["*"]})
        assert response.status_code == 201, response.text


async def test_loopback_is_refused_without_allowed_networks() -> None:
    async with gateway_client(make_config(webhooks={"run_in_gateway": False})) as (_, client):
        for url in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://169.254.169.254/"):
            response = await client.post(BASE, json={"url": url, "events": ["*"]})
            assert response.status_code == 422, url
            assert response.json()["error"]["type"] == "unsafe_url"


async def test_invalid_bodies_are_400() -> None:
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        url = "http://127.0.0.1:9/h"
        for body in (
            {"url": url, "events": []},
            {"url": url},
            {"url": url, "events": ["a b"]},
            {"url": url, "events": ["*"], "secret": "not-a-secret"},
            {"url": url, "events": ["*"], "headers": {"webhook-signature": "x"}},
            {"url": url, "events": ["*"], "headers": {"X-Bad": "a\r\nb"}},
            {"url": url, "events": ["*"], "max_attempts": 0},
            {"url": url, "events": ["*"], "unknown": 1},
        ):
            response = await client.post(BASE, json=body)
            assert response.status_code == 400, body


async def test_a_given_secret_is_kept_and_returned() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        created = await register(client, "http://127.0.0.1:9/h", secret=secret)
        assert created["secret"] == secret


async def test_list_paginates_and_filters_by_event_and_status() -> None:
    clock = ManualClock()
    async with gateway_client(make_config(webhooks=API_ONLY), clock) as (_, client):
        ids = []
        for i in range(5):
            clock.advance(1)
            events = ["order.*"] if i % 2 == 0 else ["task.completed"]
            ids.append((await register(client, f"http://127.0.0.1:9/{i}", events=events))["id"])
        page = (await client.get(BASE, params={"limit": 2})).json()
        assert page["total"] == 5
        assert page["has_more"] is True
        assert [w["id"] for w in page["data"]] == ids[:2]
        last = (await client.get(BASE, params={"limit": 2, "offset": 4})).json()
        assert [w["id"] for w in last["data"]] == ids[4:]
        assert last["has_more"] is False
        orders = (await client.get(BASE, params={"event": "order.created"})).json()
        assert [w["id"] for w in orders["data"]] == [ids[0], ids[2], ids[4]]
        response = await client.patch(f"{BASE}/{ids[1]}", json={"status": "disabled"})
        assert response.status_code == 200
        disabled = (await client.get(BASE, params={"status": "disabled"})).json()
        assert [w["id"] for w in disabled["data"]] == [ids[1]]
        assert (await client.get(BASE, params={"limit": 0})).status_code == 400


async def test_patch_changes_fields_and_delete_removes() -> None:
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        hook = await register(client, "http://127.0.0.1:9/h")
        item = f"{BASE}/{hook['id']}"
        response = await client.patch(
            item, json={"events": ["a.*"], "description": "d", "max_attempts": 3}
        )
        assert response.status_code == 200
        assert response.json()["events"] == ["a.*"]
        assert response.json()["max_attempts"] == 3
        refused = await client.patch(item, json={"url": "http://10.0.0.1/"})
        assert refused.status_code == 422
        assert (await client.delete(item)).status_code == 204
        assert (await client.get(item)).status_code == 404
        assert (await client.delete(item)).status_code == 404
        missing = await client.get(f"{BASE}/wh_nope")
        assert missing.json()["error"]["type"] == "webhook_not_found"


async def test_rotate_secret_returns_the_new_secret() -> None:
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        hook = await register(client, "http://127.0.0.1:9/h")
        response = await client.post(f"{BASE}/{hook['id']}/rotate-secret")
        assert response.status_code == 200
        rotated = response.json()
        assert rotated["secret"].startswith("whsec_")
        assert rotated["secret"] != hook["secret"]
        assert rotated["previous_secret_expires_at"] > 0


async def test_routes_are_in_openapi() -> None:
    async with gateway_client(make_config(webhooks=API_ONLY)) as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "post" in paths[BASE]
        assert "get" in paths[BASE]
        for suffix in ("", "/rotate-secret", "/stats", "/deliveries", "/replay", "/test"):
            assert f"{BASE}/{{webhook_id}}{suffix}" in paths


async def test_tenants_see_only_their_own_webhooks() -> None:
    clock = ManualClock()
    config = make_config(auth={"mode": "api_key"}, webhooks=API_ONLY)
    async with gateway_client(config, clock) as (app, client):
        acme = await _key(app, clock, "acme")
        other = await _key(app, clock, "other")
        no_scope = await _key(app, clock, "acme", scopes=["events:write"])
        created = await client.post(
            BASE, json={"url": "http://127.0.0.1:9/h", "events": ["*"]}, headers=acme
        )
        assert created.status_code == 201
        item = f"{BASE}/{created.json()['id']}"
        assert (await client.get(item, headers=acme)).status_code == 200
        assert (await client.get(item, headers=other)).status_code == 404
        assert (await client.delete(item, headers=other)).status_code == 404
        assert (await client.post(f"{item}/test", headers=other)).status_code == 404
        assert (await client.get(BASE, headers=other)).json()["total"] == 0
        assert (await client.get(BASE, headers=no_scope)).status_code == 403
        assert (await client.get(BASE)).status_code == 401


async def _key(
    app: Gateway, clock: ManualClock, tenant: str, scopes: list[str] | None = None
) -> dict[str, str]:
    full, key = apikeys.generate(tenant=tenant, scopes=scopes or ["webhooks"], now=clock())
    assert await app.repos.api_keys.put(key)
    return {"authorization": f"Bearer {full}"}


async def test_test_endpoint_stats_and_deliveries(receiver: Receiver) -> None:
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url())
        item = f"{BASE}/{hook['id']}"
        response = await client.post(f"{item}/test", json={"data": {"hello": "world"}})
        assert response.status_code == 202
        delivery_id = response.json()["delivery_id"]
        (got,) = await receiver.wait("/hook", 1)
        assert got.msg_id == delivery_id
        assert got.verifies(hook["secret"])
        assert b'"type":"webhook.test"' in got.body
        assert b'"hello":"world"' in got.body

        async def succeeded() -> Any:
            page = (await client.get(f"{item}/deliveries")).json()
            done = [d for d in page["data"] if d["status"] == "succeeded"]
            return done or None

        (delivery,) = await until(succeeded)
        assert delivery["id"] == delivery_id
        assert delivery["next_attempt_at"] is None
        (attempt,) = delivery["attempt_log"]
        assert attempt["status_code"] == 200
        assert attempt["duration_ms"] > 0
        assert attempt["error"] is None

        await publish(client, "order.created", n=1)
        await receiver.wait("/hook", 2)

        async def two_attempts() -> Any:
            stats = (await client.get(f"{item}/stats")).json()
            return stats if stats["attempts"] == 2 else None

        stats = await until(two_attempts)
        assert stats["successes"] == 2
        assert stats["failures"] == 0
        assert stats["success_rate"] == 1.0
        assert stats["latency_ms"]["p50"] > 0
        assert stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
        assert stats["last_success_at"] is not None
        assert stats["last_failure_at"] is None
        assert stats["status"] == "active"
        assert stats["deliveries"]["succeeded"] == 2
        filtered = (await client.get(f"{item}/deliveries", params={"status": "dead"})).json()
        assert filtered["data"] == []


async def test_events_are_matched_by_pattern_and_only_after_creation(receiver: Receiver) -> None:
    async with webhook_gateway() as (_, client):
        await publish(client, "order.created", n=0)  # before the webhook: not delivered
        hook = await register(client, receiver.url("/orders"), events=["order.*"])
        await register(client, receiver.url("/invoices"), events=["invoice.paid"])
        await publish(client, "invoice.paid", n=1)
        await publish(client, "order.created", n=2)
        await publish(client, "order.paid", n=3)
        got = await receiver.wait("/orders", 2)
        await receiver.wait("/invoices", 1)
        assert sorted(r.body.count(b'"n":2') + r.body.count(b'"n":3') for r in got) == [1, 1]
        assert all(r.verifies(hook["secret"]) for r in got)
        assert len(receiver.at("/orders")) == 2


async def test_webhook_api_absent_when_disabled() -> None:
    async with gateway_client(make_config(webhooks={"enabled": False})) as (_, client):
        response = await client.get(BASE)
        assert response.status_code == 404
