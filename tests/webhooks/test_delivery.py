"""Delivery against a real receiver that verifies with the reference Standard Webhooks library."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from agentcore.events.base import EventFilter
from tests.webhooks.conftest import Receiver, publish, register, until, webhook_gateway

BASE = "/api/v1/integration/webhooks"


def always(status: int, headers: dict[str, str] | None = None, delay: float = 0.0) -> Any:
    return lambda _request, _seen: (status, headers or {}, delay)


def failing_first(n: int, status: int = 500, headers: dict[str, str] | None = None) -> Any:
    return lambda _request, seen: (status, headers or {}, 0.0) if seen < n else (200, {}, 0.0)


async def deliveries(client: Any, webhook_id: str, **params: Any) -> list[dict[str, Any]]:
    page = (await client.get(f"{BASE}/{webhook_id}/deliveries", params=params)).json()
    data: list[dict[str, Any]] = page["data"]
    return data


async def test_body_and_headers_follow_standard_webhooks(receiver: Receiver) -> None:
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url(), headers={"X-Tenant-Token": "abc"})
        event_id = await publish(client, "order.created", amount=42)
        (got,) = await receiver.wait("/hook", 1)
        assert got.verifies(hook["secret"])
        assert got.headers["content-type"] == "application/json"
        assert got.headers["x-tenant-token"] == "abc"
        assert got.msg_id.startswith("msg_")
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        body = json.loads(got.body)
        assert body["type"] == "order.created"
        assert body["event_id"] == event_id
        assert body["data"] == {"amount": 42}
        assert body["timestamp"].endswith("Z")


async def test_retries_after_500_reuse_the_webhook_id(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = failing_first(2)
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url())
        await publish(client, "order.created")
        got = await receiver.wait("/hook", 3)
        assert len({r.msg_id for r in got}) == 1
        assert all(r.verifies(hook["secret"]) for r in got)
        assert got[1].at - got[0].at >= 0.15  # retry_schedule [0, 0.2, 0.4]

        async def done() -> Any:
            found = await deliveries(client, hook["id"], status="succeeded")
            return found or None

        (delivery,) = await until(done)
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
        assert [a["attempt"] for a in delivery["attempt_log"]] == [1, 2, 3]
        assert delivery["attempt_log"][0]["error"].startswith("HTTP 500")
        stats = (await client.get(f"{BASE}/{hook['id']}/stats")).json()
        assert (stats["attempts"], stats["successes"], stats["failures"]) == (3, 1, 2)
        assert stats["status"] == "active"


async def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = failing_first(1, 503, {"Retry-After": "1"})
    async with webhook_gateway() as (_, client):
        await register(client, receiver.url())
        await publish(client, "order.created")
        first, second = await receiver.wait("/hook", 2)
        assert second.at - first.at >= 0.95  # not the schedule's 0.2 s


async def test_410_gone_disables_the_endpoint_and_says_so(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = always(410)
    async with webhook_gateway() as (app, client):
        hook = await register(client, receiver.url(), events=["order.*"])
        await publish(client, "order.created")
        await receiver.wait("/hook", 1)

        async def disabled() -> Any:
            found = (await client.get(f"{BASE}/{hook['id']}")).json()
            return found if found["status"] == "disabled" else None

        found = await until(disabled)
        assert "410" in found["disabled_reason"]
        (delivery,) = await until(lambda: deliveries(client, hook["id"], status="dead"))
        assert delivery["attempts"] == 1

        async def announced() -> Any:
            return await app.events.replay(0, EventFilter(patterns=("webhook.disabled",)), 10)

        (event,) = await until(announced)
        assert event.data["webhook_id"] == hook["id"]
        await publish(client, "order.paid")
        await publish(client, "order.paid")
        await asyncio.sleep(0.3)
        assert len(receiver.at("/hook")) == 1  # nothing more to a disabled endpoint


async def test_dead_letter_after_max_attempts_then_replay_delivers(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = always(500)
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url(), max_attempts=2)
        started = time.time()
        await publish(client, "order.created")
        (dead,) = await until(lambda: deliveries(client, hook["id"], status="dead"))
        assert dead["attempts"] == 2
        assert dead["next_attempt_at"] is None
        assert [a["status_code"] for a in dead["attempt_log"]] == [500, 500]
        assert len(receiver.at("/hook")) == 2

        receiver.scripts["/hook"] = always(200)
        response = await client.post(f"{BASE}/{hook['id']}/replay", json={"only_failed": True})
        assert response.status_code == 202
        assert response.json()["queued"] == 1
        got = await receiver.wait("/hook", 3)
        assert got[2].msg_id == got[0].msg_id  # the same message, sent again
        (ok,) = await until(lambda: deliveries(client, hook["id"], status="succeeded"))
        assert [a["attempt"] for a in ok["attempt_log"]] == [1, 2, 3]

        # Replay by time re-sends delivered events too.
        response = await client.post(f"{BASE}/{hook['id']}/replay", json={"since": started - 1})
        assert response.json()["queued"] == 1
        await receiver.wait("/hook", 4)
        bad = await client.post(f"{BASE}/{hook['id']}/replay", json={})
        assert bad.status_code == 400


async def test_replay_from_a_cursor_sends_events_older_than_the_webhook(receiver: Receiver) -> None:
    async with webhook_gateway() as (_, client):
        first = await publish(client, "order.created", n=1)
        await publish(client, "order.created", n=2)
        hook = await register(client, receiver.url())
        response = await client.post(
            f"{BASE}/{hook['id']}/replay", json={"after_event_id": first - 1}
        )
        assert response.json()["queued"] == 2
        got = await receiver.wait("/hook", 2)
        assert sorted(json.loads(r.body)["data"]["n"] for r in got) == [1, 2]


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    receiver: Receiver,
) -> None:
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url())
        old = hook["secret"]
        rotated = (await client.post(f"{BASE}/{hook['id']}/rotate-secret")).json()
        new = rotated["secret"]
        await publish(client, "order.created")
        (got,) = await receiver.wait("/hook", 1)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert got.verifies(old)
        assert got.verifies(new)

        newest = (
            await client.post(f"{BASE}/{hook['id']}/rotate-secret", json={"grace_s": 0})
        ).json()["secret"]
        await publish(client, "order.created")
        _, second = await receiver.wait("/hook", 2)
        assert second.verifies(newest)
        assert not second.verifies(new)
        assert not second.verifies(old)


async def test_a_hanging_endpoint_does_not_delay_the_others(receiver: Receiver) -> None:
    receiver.scripts["/slow"] = always(200, delay=3.0)
    settings = {"timeout_s": 0.5, "per_endpoint_concurrency": 2, "concurrency": 8}
    async with webhook_gateway(**settings) as (_, client):
        slow = await register(client, receiver.url("/slow"))
        await register(client, receiver.url("/fast"))
        started = time.monotonic()
        for i in range(6):
            await publish(client, "order.created", n=i)
        await receiver.wait("/fast", 6, within_s=5)
        assert time.monotonic() - started < 1.0  # the slow endpoint holds only its own slots

        async def timed_out() -> Any:
            found = await deliveries(client, slow["id"])
            errors = [a["error"] for d in found for a in d["attempt_log"]]
            return errors if any(e and "timed out" in e for e in errors) else None

        await until(timed_out)
        # Never more than per_endpoint_concurrency requests in flight to /slow.
        slow_starts = sorted(r.at for r in receiver.at("/slow"))
        assert all(b - a >= 0.3 for a, b in zip(slow_starts, slow_starts[2:], strict=False))


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = always(302, {"Location": receiver.url("/elsewhere")})
    async with webhook_gateway() as (_, client):
        hook = await register(client, receiver.url(), max_attempts=1)
        await publish(client, "order.created")
        (dead,) = await until(lambda: deliveries(client, hook["id"], status="dead"))
        (attempt,) = dead["attempt_log"]
        assert attempt["status_code"] == 302
        assert "redirect" in attempt["error"] and "not followed" in attempt["error"]
        assert receiver.at("/elsewhere") == []


async def test_an_endpoint_failing_continuously_is_disabled(receiver: Receiver) -> None:
    receiver.scripts["/hook"] = always(500)
    async with webhook_gateway(disable_after_s=0.3, retry_schedule=[0, 0.1]) as (_, client):
        hook = await register(client, receiver.url(), max_attempts=50)
        await publish(client, "order.created")

        async def disabled() -> Any:
            found = (await client.get(f"{BASE}/{hook['id']}")).json()
            return found if found["status"] == "disabled" else None

        found = await until(disabled)
        assert "failing continuously" in found["disabled_reason"]
        count = len(receiver.at("/hook"))
        assert count >= 2
        # Re-enabling starts over.
        receiver.scripts["/hook"] = always(200)
        response = await client.patch(f"{BASE}/{hook['id']}", json={"status": "active"})
        assert response.json()["status"] == "active"
        await receiver.wait("/hook", count + 1)


async def test_unreachable_endpoints_fail_and_retry(receiver: Receiver) -> None:
    async with webhook_gateway(allowed_networks=[]) as (_, client):
        hook = await register(client, "https://webhook-test.example.com/endpoint", max_attempts=2)
        await publish(client, "order.created")
        (dead,) = await until(lambda: deliveries(client, hook["id"], status="dead"))
        assert len(dead["attempt_log"]) == 2
        assert all("resolve" in a["error"] for a in dead["attempt_log"])


async def test_per_endpoint_rate_limit_spaces_attempts(receiver: Receiver) -> None:
    async with webhook_gateway() as (_, client):
        await register(client, receiver.url(), rate_limit_per_s=4)
        for i in range(8):
            await publish(client, "order.created", n=i)
        got = await receiver.wait("/hook", 8)
        # Burst of 4, then one every 0.25 s: the last about 1 s after the first.
        assert got[-1].at - got[0].at >= 0.8
