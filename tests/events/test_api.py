"""``POST /api/v1/integration/events/publish``: system types and ``source`` are the gateway's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from agentcore import apikeys
from agentcore.app import Gateway
from agentcore.clock import ManualClock
from agentcore.events.api import PUBLISH_PATH
from agentcore.events.base import Event, EventFilter
from tests.support import agent_card, gateway_client, make_config, rpc


@dataclass
class Keyed:
    app: Gateway
    client: httpx.AsyncClient
    clock: ManualClock

    async def key(self, scopes: list[str], agent_id: str | None = None) -> tuple[str, str]:
        """A stored key of tenant ``acme``: (the full key, its id)."""
        full, key = apikeys.generate(
            tenant="acme", scopes=scopes, now=self.clock(), agent_id=agent_id
        )
        assert await self.app.repos.api_keys.put(key)
        return full, key.id

    async def publish(self, credential: str, body: dict[str, object]) -> httpx.Response:
        return await self.client.post(
            PUBLISH_PATH, json=body, headers={"authorization": f"Bearer {credential}"}
        )

    async def stored(self) -> list[Event]:
        return await self.app.events.replay(0, EventFilter(tenant="acme"), 100)


@pytest.fixture
async def keyed(clock: ManualClock) -> AsyncIterator[Keyed]:
    async with gateway_client(make_config(auth={"mode": "api_key"}), clock) as (app, client):
        yield Keyed(app, client, clock)


@pytest.mark.parametrize(
    "event_type",
    [
        "task.completed",
        "task.assigned",
        "agent.registered",
        "webhook.disabled",
        "agentcore.anything",
        "Task.Completed",
        "task",
    ],
)
async def test_system_event_types_are_refused_even_for_admin(keyed: Keyed, event_type: str) -> None:
    admin, _ = await keyed.key(["admin"])

    response = await keyed.publish(admin, {"event_type": event_type, "data": {"task_id": "t1"}})

    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["data"]["reserved_prefixes"] == ["agent.", "task.", "webhook.", "agentcore."]
    assert "reserved" in error["message"]
    assert await keyed.stored() == []


async def test_the_source_is_the_publishers_key_whatever_the_body_says(keyed: Keyed) -> None:
    full, key_id = await keyed.key(["events:write"])

    response = await keyed.publish(
        full, {"event_type": "order.created", "data": {"n": 1}, "source": "tasks"}
    )

    assert response.status_code == 202, response.text
    assert response.json()["source"] == f"api:{key_id}"
    [event] = await keyed.stored()
    assert (event.type, event.source) == ("order.created", f"api:{key_id}")


async def test_names_that_only_start_like_a_system_namespace_are_published(keyed: Keyed) -> None:
    full, _ = await keyed.key(["events:write"])

    for event_type in ("tasks.done", "agents.joined", "webhooks2.x", "my.task.completed"):
        response = await keyed.publish(full, {"event_type": event_type})
        assert response.status_code == 202, (event_type, response.text)


async def test_with_authentication_off_the_source_is_api(client: httpx.AsyncClient) -> None:
    response = await client.post(
        PUBLISH_PATH, json={"event_type": "order.created", "source": "registry"}
    )

    assert response.status_code == 202
    assert response.json()["source"] == "api"


async def test_an_agent_key_made_with_default_scopes_cannot_publish(keyed: Keyed) -> None:
    full, _ = await keyed.key(apikeys.default_scopes("bot-1"), agent_id="bot-1")

    response = await keyed.publish(full, {"event_type": "order.created"})

    assert response.status_code == 403
    assert response.json()["error"]["data"] == {"scope": "events:write"}


async def test_published_types_past_the_cap_share_the_other_series() -> None:
    config = make_config(metrics={"max_label_values": 2})
    async with gateway_client(config) as (_, client):
        for i in range(10):
            response = await client.post(PUBLISH_PATH, json={"event_type": f"tenant.kind{i}"})
            assert response.status_code == 202
        await rpc(client, "agent.register", {"agent_card": agent_card("a1")})
        text = (await client.get("/metrics")).text

    counted = {
        line.split('type="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("agentcore_events_published_total{")
    }
    assert counted == {"tenant.kind0", "tenant.kind1", "other", "agent.registered"}
