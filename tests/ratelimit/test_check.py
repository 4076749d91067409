"""Rate limiting over HTTP, in process: headers, 429 bodies, limit choice, client identity.

Apps are built per test with a small limit and a :class:`ManualClock`; the
ASGI transport's client address is 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from agentcore.app import Gateway
from agentcore.clock import ManualClock
from agentcore.identity import ANONYMOUS, IDENTITY, Identity
from agentcore.proxies import TrustedProxies
from agentcore.ratelimit.check import RateLimitCheck
from agentcore.ratelimit.memory import MemoryRateLimiter
from agentcore.types import Scope
from tests.support import free_port, gateway_client, make_config, refused_status

JSONRPC = "/api/v1/jsonrpc"
LIST = {"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1}
#: One request per 1000 s: nothing refills unless the clock is moved that far.
SLOW = 0.001
RATELIMIT_HEADERS = (
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


@asynccontextmanager
async def limited(
    clock: ManualClock | None = None, **sections: dict[str, Any]
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    async with gateway_client(make_config(**sections), clock or ManualClock()) as pair:
        yield pair


async def call(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.post(JSONRPC, json=LIST, headers=headers)


def rate_headers(response: httpx.Response) -> dict[str, str]:
    return {
        k: response.headers[k] for k in (*RATELIMIT_HEADERS, "retry-after") if k in response.headers
    }


# -- headers ---------------------------------------------------------------------------


async def test_headers_on_200_and_429(clock: ManualClock) -> None:
    # 2 at once, then one every 2 s: the quota refills completely in 4 s.
    rate_limit = {"classes": {"control": {"rate": 0.5, "burst": 2}}}
    async with limited(clock, rate_limit=rate_limit) as (_, client):
        first = await call(client)
        second = await call(client)
        refused = await call(client)
        clock.advance(1.5)
        still_refused = await call(client)
        clock.advance(0.5)
        again = await call(client)

    policy = '"control";q=2;w=4'
    assert first.status_code == 200
    assert rate_headers(first) == {
        "ratelimit-policy": policy,
        "ratelimit": '"control";r=1;t=2',
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "1",
        "x-ratelimit-reset": "2",
    }
    assert second.status_code == 200
    assert rate_headers(second) == {
        "ratelimit-policy": policy,
        "ratelimit": '"control";r=0;t=4',
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "4",
    }
    assert refused.status_code == 429
    assert rate_headers(refused) == {
        "ratelimit-policy": policy,
        "ratelimit": '"control";r=0;t=4',
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": "4",
        "retry-after": "2",
    }
    assert still_refused.status_code == 429
    assert rate_headers(still_refused)["retry-after"] == "1"  # 0.5 s, rounded up
    assert rate_headers(still_refused)["x-ratelimit-reset"] == "3"  # 2.5 s, rounded up
    assert again.status_code == 200
    assert again.headers["x-ratelimit-remaining"] == "0"


@pytest.mark.parametrize(
    ("rate", "retry_after"),
    [(1000.0, "1"), (0.4, "3"), (SLOW, "1000")],
)
async def test_retry_after_is_whole_seconds_never_zero(rate: float, retry_after: str) -> None:
    async with limited(rate_limit={"rate": rate, "burst": 1}) as (_, client):
        await call(client)
        refused = await call(client)

    assert refused.status_code == 429
    assert refused.headers["retry-after"] == retry_after


async def test_429_on_jsonrpc_is_a_jsonrpc_error() -> None:
    async with limited(rate_limit={"classes": {"control": {"rate": SLOW, "burst": 1}}}) as (
        _,
        client,
    ):
        await call(client)
        refused = await call(client)

    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == -32029
    assert "rate limit" in body["error"]["message"]
    assert body["error"]["data"] == {"retry_after_s": 1000, "policy": "control"}


async def test_429_elsewhere_is_the_json_error_body() -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 1}) as (_, client):
        await client.get("/api/v1/jsonrpc/methods")
        refused = await client.get("/api/v1/jsonrpc/methods")

    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == (-32029, "rate_limited")
    assert refused.headers["retry-after"] == "1000"


async def test_limited_error_responses_carry_the_headers_too() -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 5}) as (_, client):
        missing = await client.get("/api/v1/no-such-route")

    assert missing.status_code == 404
    assert missing.headers["x-ratelimit-remaining"] == "4"


async def test_disabled_rate_limiting_sends_no_headers() -> None:
    async with limited(rate_limit={"enabled": False, "rate": SLOW, "burst": 1}) as (_, client):
        responses = [await call(client) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert not any(h in responses[0].headers for h in RATELIMIT_HEADERS)


# -- which limit -----------------------------------------------------------------------


async def test_class_limit_applies_to_its_class_only() -> None:
    rate_limit = {"rate": SLOW, "burst": 100, "classes": {"control": {"rate": SLOW, "burst": 1}}}
    async with limited(rate_limit=rate_limit) as (_, client):
        statuses = [(await call(client)).status_code for _ in range(3)]
        integration = await client.get("/api/v1/integration/anything")
        llm = await client.get("/v1/no-such-llm-route")

    assert statuses == [200, 429, 429]
    # Other classes use the default rate, each with a quota of its own.
    for name, response in (("integration", integration), ("llm", llm)):
        assert response.status_code == 404
        assert response.headers["ratelimit-policy"] == f'"{name}";q=100;w=100000'
        assert response.headers["x-ratelimit-remaining"] == "99"


async def test_default_limit_without_class_limits() -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 2}) as (_, client):
        statuses = [(await call(client)).status_code for _ in range(3)]
        last = await call(client)

    assert statuses == [200, 200, 429]
    assert last.headers["ratelimit-policy"] == '"control";q=2;w=2000'


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/health",
        "/api/v1/health/ready",
        "/api/v1/health/live",
        "/metrics",
        "/openapi.json",
        "/.well-known/agent-card.json",
    ],
)
async def test_open_routes_are_not_limited(path: str) -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 1}) as (_, client):
        responses = [await client.get(path) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert not any(h in r.headers for r in responses for h in RATELIMIT_HEADERS)


def test_limit_choice_key_then_tenant_then_class() -> None:
    config = make_config(
        rate_limit={
            "rate": 1.0,
            "burst": 1,
            "classes": {"control": {"rate": 2.0, "burst": 2}},
            "tenants": {"acme": {"rate": 3.0, "burst": 3}, "default": {"rate": 5.0, "burst": 5}},
            "keys": {"k1": {"rate": 4.0, "burst": 4}},
        }
    ).rate_limit
    middleware = RateLimitCheck(MemoryRateLimiter(), config, TrustedProxies())

    def name(cls: str, identity: Identity | None) -> str:
        return middleware.limit_for(cls, identity).name

    assert name("control", Identity("api_key", "k1", tenant="acme")) == "key-k1"
    assert name("control", Identity("api_key", "k2", tenant="acme")) == "tenant-acme"
    assert name("llm", Identity("jwt", "someone", tenant="acme")) == "tenant-acme"
    assert name("control", Identity("api_key", "k2", tenant="other")) == "control"
    assert name("llm", Identity("api_key", "k2", tenant="other")) == "llm"
    # Anonymous callers are counted by IP and never get a tenant's or key's limit.
    assert name("control", ANONYMOUS) == "control"
    assert name("integration", None) == "integration"


# -- whose quota -----------------------------------------------------------------------


async def _status(limits: RateLimitCheck, identity: Identity, client: str) -> int:
    """200 when ``limits`` admits the request, else the status of its refusal."""
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": JSONRPC,
        "headers": [],
        "client": (client, 1234),
        IDENTITY: identity,
    }
    return await refused_status(limits.admit(scope), scope) or 200


async def test_authenticated_callers_are_counted_by_credential_not_ip() -> None:
    config = make_config(rate_limit={"rate": SLOW, "burst": 1}).rate_limit
    app = RateLimitCheck(MemoryRateLimiter(ManualClock()), config, TrustedProxies())
    alice, bob = Identity("api_key", "alice"), Identity("api_key", "bob")

    # Same IP, two keys: two quotas.
    assert await _status(app, alice, "10.0.0.1") == 200
    assert await _status(app, bob, "10.0.0.1") == 200
    # Same key, another IP: the same quota.
    assert await _status(app, alice, "10.0.0.2") == 429
    # Anonymous callers from that IP have their own quota.
    assert await _status(app, ANONYMOUS, "10.0.0.1") == 200
    assert await _status(app, ANONYMOUS, "10.0.0.1") == 429
    # A JWT subject named like an API key is a different identity.
    assert await _status(app, Identity("jwt", "alice"), "10.0.0.1") == 200


async def test_forged_x_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 1}) as (_, client):
        first = await call(client, **{"x-forwarded-for": "198.51.100.1"})
        second = await call(client, **{"x-forwarded-for": "198.51.100.2"})
        third = await call(client)

    assert [first.status_code, second.status_code, third.status_code] == [200, 429, 429]


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    sections: dict[str, Any] = {
        "rate_limit": {"rate": SLOW, "burst": 1},
        "server": {"trusted_proxies": ["10.0.0.0/8"]},  # the peer is 127.0.0.1
    }
    async with limited(**sections) as (_, client):
        first = await call(client, **{"x-forwarded-for": "198.51.100.1"})
        second = await call(client, **{"x-forwarded-for": "198.51.100.2"})

    assert [first.status_code, second.status_code] == [200, 429]


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    sections: dict[str, Any] = {
        "rate_limit": {"rate": SLOW, "burst": 1},
        "server": {"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]},
    }
    xff = "x-forwarded-for"
    async with limited(**sections) as (_, client):
        statuses = [
            (await call(client, **{xff: "198.51.100.1"})).status_code,
            (await call(client, **{xff: "198.51.100.1"})).status_code,
            (await call(client, **{xff: "198.51.100.2"})).status_code,
            # The rightmost untrusted hop is the client: a forged left part changes nothing.
            (await call(client, **{xff: "203.0.113.9, 198.51.100.2"})).status_code,
            # Trusted hops are skipped, right to left.
            (await call(client, **{xff: "198.51.100.3, 10.1.2.3"})).status_code,
            (await call(client, **{xff: "203.0.113.9, 198.51.100.3, 10.1.2.3"})).status_code,
            # No header: the proxy itself.
            (await call(client)).status_code,
            (await call(client)).status_code,
        ]

    assert statuses == [200, 429, 200, 429, 200, 429, 200, 429]


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", [b"198.51.100.1"], "198.51.100.1"),
        ("127.0.0.1", [b"203.0.113.9, 198.51.100.1"], "198.51.100.1"),
        # several headers read as one list, in order
        ("127.0.0.1", [b"203.0.113.9", b"198.51.100.1, 10.0.0.5"], "198.51.100.1"),
        # every hop trusted: nobody untrusted to name, so the peer
        ("127.0.0.1", [b"10.0.0.1, 10.0.0.2"], "127.0.0.1"),
        # garbage is not an IP, so not trusted: it is what the proxy said
        ("127.0.0.1", [b"not-an-ip"], "not-an-ip"),
        # an untrusted peer's header is ignored
        ("192.0.2.7", [b"198.51.100.1"], "192.0.2.7"),
        ("2001:db8::1", [b"198.51.100.1"], "2001:db8::1"),
    ],
)
def test_trusted_proxies_client_ip(peer: str, headers: list[bytes], client: str) -> None:
    proxies = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8"])
    scope: Scope = {"client": (peer, 1), "headers": [(b"x-forwarded-for", h) for h in headers]}

    assert proxies.client_ip(scope) == client


def test_no_trusted_proxies_means_the_socket_peer() -> None:
    scope: Scope = {"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4")]}

    assert TrustedProxies().client_ip(scope) == "127.0.0.1"
    assert TrustedProxies().client_ip({"headers": []}) == ""


# -- backend trouble and several workers -----------------------------------------------


def unreachable_redis(**extra: Any) -> dict[str, Any]:
    """A Redis rate-limit backend nobody listens for, at one request per 1000 s."""
    return {
        "backend": "redis",
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "rate": SLOW,
        "burst": 1,
        **extra,
    }


async def test_unreachable_redis_fails_open_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The default. An admitted request is no refusal: counted as a backend error
    # only (it was also counted in agentcore_rejected_total before
    # rate_limit.on_backend_error existed, when fail open was the only way).
    with caplog.at_level(logging.WARNING, "agentcore.ratelimit"):
        async with limited(rate_limit=unreachable_redis()) as (_, client):
            responses = [await call(client) for _ in range(3)]
            metrics = (await client.get("/metrics")).text
            health = (await client.get("/api/v1/health")).json()

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "x-ratelimit-limit" not in responses[0].headers
    assert 'agentcore_ratelimit_backend_errors_total{outcome="admitted"} 3.0' in metrics
    assert 'reason="ratelimit_backend_down"' not in metrics
    assert caplog.text.count("rate limit check skipped") == 1  # once per outage
    rate_limit = health["rate_limit"]
    assert (rate_limit["status"], rate_limit["on_backend_error"]) == ("down", "open")
    assert "Redis" in rate_limit["error"]
    assert health["status"] == "degraded"


async def test_unreachable_redis_fails_closed_when_configured() -> None:
    rate_limit = unreachable_redis(on_backend_error="closed")
    async with limited(rate_limit=rate_limit) as (_, client):
        responses = [await call(client) for _ in range(3)]
        metrics = (await client.get("/metrics")).text
        health = (await client.get("/api/v1/health")).json()

    assert [r.status_code for r in responses] == [503, 503, 503]
    error = responses[0].json()["error"]
    assert error["code"] == -32000
    assert "rate limiting is unavailable" in error["message"]
    assert "on_backend_error = closed" in error["message"]
    assert responses[0].headers["retry-after"] == "1"
    assert 'agentcore_ratelimit_backend_errors_total{outcome="refused"} 3.0' in metrics
    assert 'agentcore_rejected_total{reason="ratelimit_backend_down"} 3.0' in metrics
    assert health["rate_limit"]["status"] == "down"
    assert health["rate_limit"]["on_backend_error"] == "closed"


async def test_rate_limited_requests_are_counted() -> None:
    async with limited(rate_limit={"rate": SLOW, "burst": 1}) as (_, client):
        for _ in range(3):
            await call(client)
        metrics = (await client.get("/metrics")).text

    assert 'agentcore_rate_limited_total{route_class="control"} 2.0' in metrics


async def test_health_warns_when_limits_are_per_worker(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "agentcore"):
        async with limited(server={"workers": 2}) as (_, client):
            health = (await client.get("/api/v1/health")).json()

    rate_limit = health["rate_limit"]
    assert (rate_limit["enabled"], rate_limit["backend"]) == (True, "memory")
    assert "per worker" in rate_limit["warning"]
    assert "2 workers" in rate_limit["warning"]
    assert "limits are per worker" in caplog.text


@pytest.mark.parametrize(
    "sections",
    [
        {"server": {"workers": 1}},
        {
            "server": {"workers": 2},
            "rate_limit": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"},
        },
        {"server": {"workers": 2}, "rate_limit": {"enabled": False}},
    ],
)
async def test_no_per_worker_warning_when_limits_are_exact(sections: dict[str, Any]) -> None:
    async with limited(**sections) as (_, client):
        health = (await client.get("/api/v1/health")).json()

    assert "warning" not in health["rate_limit"]
