"""The API key repository contract, written once and run over every backend (``repos``)."""

from __future__ import annotations

import msgspec

from agentcore import apikeys
from agentcore.apikeys import ApiKey
from agentcore.repositories import Repositories


def make_key(tenant: str, *, name: str = "", created_at: float = 100.0) -> ApiKey:
    _, key = apikeys.generate(
        tenant=tenant,
        scopes=["tasks:read", "agents:write"],
        now=created_at,
        name=name,
        agent_id="agent-1",
    )
    return key


async def test_a_key_round_trips(repos: Repositories) -> None:
    key = make_key("t1", name="ci")
    assert await repos.api_keys.put(key)
    assert await repos.api_keys.get(key.id) == key
    assert await repos.api_keys.get("000000000000") is None


async def test_a_key_without_agent_or_name_round_trips(repos: Repositories) -> None:
    _, key = apikeys.generate(tenant="t1", scopes=["admin"], now=1.5)
    assert await repos.api_keys.put(key)
    assert await repos.api_keys.get(key.id) == key


async def test_put_refuses_a_taken_id(repos: Repositories) -> None:
    key = make_key("t1")
    assert await repos.api_keys.put(key)

    other = msgspec.structs.replace(make_key("t2"), id=key.id)
    assert not await repos.api_keys.put(other)
    assert await repos.api_keys.get(key.id) == key
    assert await repos.api_keys.keys("t2") == []


async def test_keys_by_tenant_oldest_first(repos: Repositories) -> None:
    assert await repos.api_keys.keys(None) == []
    newer = make_key("a", created_at=300.0)
    older = make_key("a", created_at=200.0)
    theirs = make_key("b", created_at=100.0)
    for key in (newer, older, theirs):
        assert await repos.api_keys.put(key)

    assert await repos.api_keys.keys("a") == [older, newer]
    assert await repos.api_keys.keys("b") == [theirs]
    assert await repos.api_keys.keys("nobody") == []
    assert await repos.api_keys.keys(None) == [theirs, older, newer]


async def test_keys_made_at_the_same_time_are_ordered_by_id(repos: Repositories) -> None:
    made = [
        msgspec.structs.replace(make_key("a", created_at=5.0), id=key_id)
        for key_id in ("0000000000cc", "0000000000aa", "0000000000bb")
    ]
    for key in made:
        assert await repos.api_keys.put(key)
    assert [k.id for k in await repos.api_keys.keys("a")] == [
        "0000000000aa",
        "0000000000bb",
        "0000000000cc",
    ]


async def test_revoke_once(repos: Repositories) -> None:
    key = make_key("t1")
    assert await repos.api_keys.put(key)

    assert await repos.api_keys.revoke(key.id, 500.0)
    assert not await repos.api_keys.revoke(key.id, 600.0)  # already revoked: time kept
    assert not await repos.api_keys.revoke("000000000000", 600.0)
    revoked = msgspec.structs.replace(key, revoked_at=500.0)
    assert await repos.api_keys.get(key.id) == revoked
    # A revoked key is still listed.
    assert await repos.api_keys.keys("t1") == [revoked]
