"""The protection chain (protection.py): one object that HTTP requests and WebSocket
handshakes both go through.

Each case sends the same headers once as an HTTP request and once as a
WebSocket handshake through the same chain, built from a started gateway's own
checks with recording endpoints. Host, credentials and a page's Origin give
the same verdict to both; they part only where the chain's docstring says so:
a handshake without credentials is admitted (its endpoint asks for them), and
rate limits and load shedding apply to HTTP alone.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agentcore import apikeys
from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.identity import IDENTITY, Identity
from agentcore.protection import ProtectionChain
from agentcore.realtime.sse import SSE_PATH
from agentcore.types import Message, Receive, Scope, Send
from tests.support import make_config

RPC = "/api/v1/jsonrpc"
JSON = (b"content-type", b"application/json")
Headers = list[tuple[bytes, bytes]]
#: ("admitted", the identity's kind or None), or ("answered", the status or close
#: code) when the chain answered in place of the endpoint.
Verdict = tuple[str, object]


class Endpoint:
    """Stands for every endpoint: records the scopes the chain lets through."""

    def __init__(self) -> None:
        self.reached: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.reached.append(scope)


def http_scope(method: str, path: str, headers: Headers) -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8001),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "headers": headers,
        "method": method,
        "path": path,
        "query_string": b"",
    }


def websocket_scope(path: str, headers: Headers) -> Scope:
    """A handshake from the same client to the same server as :func:`http_scope`'s."""
    scope = http_scope("GET", path, headers)
    del scope["method"], scope["http_version"]
    scope.update(type="websocket", scheme="ws")
    return scope


@asynccontextmanager
async def protected(**sections: dict[str, Any]) -> AsyncIterator[tuple[Gateway, str, Verdicts]]:
    """A started gateway, an admin API key, and the verdicts of a chain made of its checks."""
    settings: dict[str, Any] = {
        "auth": {"mode": "api_key"},
        "rate_limit": {"enabled": True, "rate": 1.0, "burst": 100},
        "server": {"cors_allow_origins": ["https://ok.example"]},
    }
    app = create_app(make_config(**(settings | sections)), clock=ManualClock(time.time()))
    await app.startup()
    try:
        full, key = apikeys.generate(tenant="t", scopes=["admin"], now=time.time())
        assert await app.repos.api_keys.put(key)
        yield app, full, Verdicts(app)
    finally:
        await app.shutdown()


class Verdicts:
    def __init__(self, app: Gateway) -> None:
        checks = app.protection
        self.endpoint = Endpoint()
        self.shedder = app.shedder
        self.chain = ProtectionChain(
            checks.security,
            checks.auth,
            checks.ratelimit,
            checks.shedder,
            http=self.endpoint,
            stream=self.endpoint,
            websocket=self.endpoint,
        )

    async def of(self, scope: Scope) -> Verdict:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        reached = len(self.endpoint.reached)
        in_flight = self.shedder.in_flight
        await self.chain(scope, receive, send)
        assert self.shedder.in_flight == in_flight  # every request counted in has left
        if len(self.endpoint.reached) > reached:
            assert not sent
            identity: Identity | None = scope.get(IDENTITY)
            return ("admitted", None if identity is None else identity.kind)
        if scope["type"] == "http":
            return ("answered", sent[0]["status"])
        assert [m["type"] for m in sent] == ["websocket.close"]  # before accept: HTTP 403
        return ("answered", sent[0]["code"])


KEY = b"<key>"  # stands for the case's API key
BEARER = (b"authorization", b"Bearer " + KEY)
OWN = (b"host", b"127.0.0.1:8001")
ADMITTED = ("admitted", "api_key")
ANONYMOUS = ("admitted", "anonymous")
#: A WebSocket refused: closed before accept (the server answers the handshake 403).
CLOSED = ("answered", 1008)
EVIL = (b"origin", b"https://evil.example")

CASES: list[tuple[str, str, Headers, Verdict, Verdict]] = [
    # auth.mode = "api_key": the credential decides, and a page's Origin.
    ("api_key", RPC, [JSON, BEARER], ADMITTED, ADMITTED),
    ("api_key", RPC, [JSON, (b"x-api-key", KEY)], ADMITTED, ADMITTED),
    ("api_key", RPC, [JSON, (b"authorization", b"Bearer ak_nope_nope")], ("answered", 401), CLOSED),
    ("api_key", RPC, [JSON, (b"authorization", b"Bearer not-a-key")], ("answered", 401), CLOSED),
    ("api_key", RPC, [JSON, BEARER, (b"origin", b"https://ok.example")], ADMITTED, ADMITTED),
    ("api_key", RPC, [JSON, BEARER, (b"origin", b"http://127.0.0.1:8001")], ADMITTED, ADMITTED),
    ("api_key", RPC, [JSON, BEARER, EVIL], ("answered", 403), CLOSED),
    ("api_key", "/api/v1/health/live", [JSON], ANONYMOUS, ANONYMOUS),
    # Apart by design: a handshake without credentials sends them in its first message.
    ("api_key", RPC, [JSON], ("answered", 401), ("admitted", None)),
    # auth.mode = "off": everyone is anonymous, so the Host must name the gateway.
    ("off", RPC, [OWN, JSON], ANONYMOUS, ANONYMOUS),
    ("off", RPC, [(b"host", b"gateway"), JSON], ANONYMOUS, ANONYMOUS),
    ("off", RPC, [(b"host", b"rebound.example"), JSON], ("answered", 421), CLOSED),
    ("off", RPC, [OWN, JSON, EVIL], ("answered", 403), CLOSED),
]  # fmt: skip


def with_key(headers: Headers, key: str) -> Headers:
    return [(name, value.replace(KEY, key.encode())) for name, value in headers]


@pytest.mark.parametrize(("mode", "path", "headers", "http", "websocket"), CASES)
async def test_http_and_websocket_take_the_same_checks(
    mode: str, path: str, headers: Headers, http: Verdict, websocket: Verdict
) -> None:
    async with protected(auth={"mode": mode}) as (_, key, verdicts):
        sent = with_key(headers, key)
        # Twice each: the first use of a key is checked against the store (awaited),
        # the second comes from the authenticator's cache (not awaited).
        for _ in range(2):
            assert await verdicts.of(http_scope("POST", path, sent)) == http
            assert await verdicts.of(websocket_scope(path, sent)) == websocket


async def test_a_cors_preflight_is_answered_by_the_chain() -> None:
    async with protected() as (_, _key, verdicts):
        ok = [(b"origin", b"https://ok.example")]
        evil = [EVIL]

        assert await verdicts.of(http_scope("OPTIONS", RPC, ok)) == ("answered", 204)
        assert await verdicts.of(http_scope("OPTIONS", RPC, evil)) == ("answered", 403)


async def test_rate_limits_apply_to_http_alone() -> None:
    async with protected(rate_limit={"enabled": True, "rate": 0.001, "burst": 2}) as (
        _,
        key,
        verdicts,
    ):
        headers = with_key([JSON, BEARER], key)
        answers = [await verdicts.of(http_scope("POST", RPC, headers)) for _ in range(3)]
        handshake = await verdicts.of(websocket_scope("/ws", headers))

    assert answers == [("admitted", "api_key")] * 2 + [("answered", 429)]
    assert handshake == ("admitted", "api_key")


async def test_rate_limiting_off_leaves_the_rest_of_the_chain() -> None:
    async with protected(rate_limit={"enabled": False, "rate": 0.001, "burst": 1}) as (
        app,
        key,
        verdicts,
    ):
        headers = with_key([JSON, BEARER], key)
        answers = [await verdicts.of(http_scope("POST", RPC, headers)) for _ in range(3)]
        refused = await verdicts.of(http_scope("POST", RPC, [JSON]))

    assert app.protection.ratelimit is None
    assert answers == [("admitted", "api_key")] * 3
    assert refused == ("answered", 401)


async def test_load_shedding_applies_to_http_requests_but_not_streams() -> None:
    async with protected(limits={"max_in_flight": 1}) as (app, key, verdicts):
        app.shedder.in_flight = app.shedder.max_in_flight  # the worker at its limit
        headers = with_key([JSON, BEARER], key)
        request = await verdicts.of(http_scope("POST", RPC, headers))
        sse = await verdicts.of(http_scope("GET", SSE_PATH, headers))
        handshake = await verdicts.of(websocket_scope("/ws", headers))
        # Refused before shedding: the checks in front of it come first.
        unauthenticated = await verdicts.of(http_scope("POST", RPC, [JSON]))
        app.shedder.in_flight = 0

    assert request == ("answered", 503)
    assert sse == ("admitted", "api_key")
    assert handshake == ("admitted", "api_key")
    assert unauthenticated == ("answered", 401)


async def test_the_gateway_serves_both_scope_types_through_its_chain() -> None:
    async with protected() as (app, key, _):
        endpoint = Endpoint()
        app.protection.http = app.protection.websocket = endpoint
        headers = with_key([JSON, BEARER], key)

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            raise AssertionError(f"refused: {message}")

        await app(http_scope("POST", RPC, headers), receive, send)
        await app(websocket_scope("/ws", headers), receive, send)

    assert [scope["type"] for scope in endpoint.reached] == ["http", "websocket"]
