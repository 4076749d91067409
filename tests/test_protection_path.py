"""The gateway's HTTP protection path (``Gateway._protected``) against its middleware stack.

HTTP requests do not go through the middleware chain (``Gateway.stack``) but
through each middleware's ``admit`` called in turn; the two must answer every
request identically: same status, headers and body, same counters. Each case
runs once through each path on its own fresh gateway, in the same order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from agentcore import apikeys
from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.types import Message
from tests.support import make_config

PING = b'{"jsonrpc":"2.0","id":1,"method":"agent.ping","params":{"agent_id":"nobody"}}'


def scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8001),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
        "root_path": "",
        "headers": headers,
        "state": {},
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
    }


async def answer(
    app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(method, path, headers), receive, send)
    return sent


def config(**overrides: dict[str, Any]) -> Any:
    sections: dict[str, Any] = {
        "auth": {"mode": "api_key"},
        "rate_limit": {"enabled": True, "rate": 1.0, "burst": 2},
        "server": {"cors_allow_origins": ["https://ok.example"]},
    }
    return make_config(**(sections | overrides))


async def started(settings: Any) -> tuple[Gateway, str]:
    app = create_app(settings, clock=ManualClock(time.time()))
    await app.startup()
    full, key = apikeys.generate(tenant="t", scopes=["admin"], now=time.time())
    assert await app.repos.api_keys.put(key)
    return app, full


def cases(key: str) -> list[tuple[str, str, list[tuple[bytes, bytes]], bytes]]:
    bearer = (b"authorization", b"Bearer " + key.encode())
    rpc = "/api/v1/jsonrpc"
    json = (b"content-type", b"application/json")
    return [
        ("GET", "/api/v1/health/live", [], b""),  # open path
        ("OPTIONS", rpc, [(b"origin", b"https://ok.example")], b""),  # CORS preflight
        ("OPTIONS", rpc, [(b"origin", b"https://evil.example")], b""),  # 403
        ("POST", rpc, [json], PING),  # 401: no credentials
        ("POST", rpc, [json, (b"authorization", b"Bearer ak_nope_nope")], PING),  # 401
        ("POST", rpc, [json, bearer], PING),  # verified, then cached
        ("POST", rpc, [json, bearer, (b"origin", b"https://ok.example")], PING),
        ("POST", rpc, [json, bearer], PING),  # over the burst: 429
        ("GET", "/nowhere", [bearer], b""),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"rate_limit": {"enabled": False}},
        {"auth": {"mode": "off"}},
        {"limits": {"max_in_flight": 1}, "shed": True},
    ],
)
async def test_the_protection_path_answers_as_the_middleware_stack(
    overrides: dict[str, Any],
) -> None:
    shed = bool(overrides.pop("shed", False))
    seen: dict[str, list[list[Message]]] = {}
    counters: dict[str, str] = {}
    for path_kind in ("stack", "protected"):
        app, key = await started(config(**overrides))
        if shed:  # the worker at its limit: whatever passes the checks is shed
            app.shedder.in_flight = app.shedder.max_in_flight
        in_flight = app.shedder.in_flight
        try:
            target = app.stack if path_kind == "stack" else app
            seen[path_kind] = [
                await answer(target, method, path, headers, body)
                for method, path, headers, body in cases(key)
            ]
            assert app.shedder.in_flight == in_flight  # every request counted in has left
            assert app.metrics is not None
            counters[path_kind] = "\n".join(
                line
                for line in app.metrics.render({}, {}).decode().splitlines()
                if line.startswith(
                    (
                        "agentcore_rate_limited",
                        "agentcore_shed",
                        "agentcore_unauthorized",
                        "agentcore_rejected",
                    )
                )
                and not line.startswith("#")
            )
        finally:
            await app.shutdown()

    statuses = [m[0]["status"] for m in seen["protected"]]
    assert seen["protected"] == seen["stack"], statuses
    assert counters["protected"] == counters["stack"]
    assert len(set(statuses)) >= 3  # the cases reach different answers
