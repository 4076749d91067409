"""Security headers on every response, CORS with an explicit allow-list (none by default),
the Origin check of WebSocket handshakes, writes a web page could forge, and the Host
check against DNS rebinding."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agentcore.http import RESPONSE_HEADERS
from agentcore.proxies import TrustedProxies
from agentcore.security import SecurityCheck, canonical_origin, host_allowed, host_names
from agentcore.types import Scope
from tests.support import ServerProcess, gateway_client, make_config

JSONRPC = "/api/v1/jsonrpc"
LIST = {"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1}
APP_ORIGIN = "https://app.example.com"
BASE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
HSTS = "strict-transport-security"
CORS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
)


async def responses(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
    """A 200, 404s, a 405 and a 429 from one gateway (burst of 3: the 405 counts too)."""
    return {
        "200": await client.get("/api/v1/health"),
        "404": await client.get("/no/such/route"),
        "405": await client.get(JSONRPC),
        "jsonrpc-404": await client.post(JSONRPC, json={**LIST, "method": "no.such"}),
        "jsonrpc-200": await client.post(JSONRPC, json=LIST),
        "429": await client.post(JSONRPC, json=LIST),
    }


def expect(found: dict[str, httpx.Response]) -> None:
    assert {k: r.status_code for k, r in found.items()} == {
        "200": 200,
        "404": 404,
        "405": 405,
        "jsonrpc-404": 404,
        "jsonrpc-200": 200,
        "429": 429,
    }


async def test_security_headers_on_every_response() -> None:
    config = make_config(rate_limit={"rate": 0.001, "burst": 3})
    async with gateway_client(config) as (_, client):
        found = await responses(client)

    expect(found)
    for name, response in found.items():
        for header, value in BASE.items():
            assert response.headers.get(header) == value, (name, header)
        assert HSTS not in response.headers, name
        assert not any(h in response.headers for h in CORS), name


async def test_hsts_only_when_configured() -> None:
    config = make_config(server={"hsts": True}, rate_limit={"rate": 0.001, "burst": 3})
    async with gateway_client(config) as (_, client):
        found = await responses(client)

    expect(found)
    for response in found.values():
        assert response.headers[HSTS] == "max-age=63072000; includeSubDomains"
        assert response.headers["x-frame-options"] == "DENY"


async def test_security_headers_on_refused_bodies() -> None:
    """Headers come from the outermost layer, so even middleware refusals carry them."""
    config = make_config(limits={"max_body_bytes": 10})
    async with gateway_client(config) as (_, client):
        too_large = await client.post(JSONRPC, json=LIST)

    assert too_large.status_code == 413
    assert too_large.headers["x-content-type-options"] == "nosniff"


# -- CORS ------------------------------------------------------------------------------


def preflight(origin: str, path: str = JSONRPC) -> dict[str, Any]:
    return {
        "method": "OPTIONS",
        "url": path,
        "headers": {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
    }


async def test_preflight_from_an_allowed_origin_is_204() -> None:
    config = make_config(server={"cors_allow_origins": [APP_ORIGIN, "http://localhost:3000"]})
    async with gateway_client(config) as (_, client):
        response = await client.request(**preflight(APP_ORIGIN))
        other = await client.request(**preflight("http://localhost:3000"))

    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert response.headers["vary"] == "Origin"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key"} <= allowed
    assert response.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert other.status_code == 204
    assert other.headers["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "https://app.example.com.evil.example.com",
        "http://app.example.com",  # another scheme is another origin
        "https://APP.example.com",  # origins are compared exactly
        "null",
    ],
)
async def test_preflight_from_another_origin_is_403(origin: str) -> None:
    config = make_config(server={"cors_allow_origins": [APP_ORIGIN]})
    async with gateway_client(config) as (_, client):
        response = await client.request(**preflight(origin))

    assert response.status_code == 403
    assert response.json()["jsonrpc"] == "2.0"  # refused on the JSON-RPC path
    assert response.json()["error"]["code"] == -32007
    assert not any(h in response.headers for h in CORS)
    assert response.headers["x-frame-options"] == "DENY"


async def test_simple_request_from_an_allowed_origin_gets_the_allow_origin_header() -> None:
    config = make_config(server={"cors_allow_origins": [APP_ORIGIN]})
    async with gateway_client(config) as (_, client):
        allowed = await client.post(JSONRPC, json=LIST, headers={"origin": APP_ORIGIN})
        other = await client.post(JSONRPC, json=LIST, headers={"origin": "https://evil.example"})
        no_origin = await client.post(JSONRPC, json=LIST)

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert allowed.headers["vary"] == "Origin"
    # A write from an origin not allowed is refused (security.py, forged writes).
    assert other.status_code == 403
    assert "access-control-allow-origin" not in other.headers
    assert no_origin.status_code == 200
    assert "access-control-allow-origin" not in no_origin.headers


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    simple = await client.post(JSONRPC, json=LIST, headers={"origin": APP_ORIGIN})
    options = await client.request(**preflight(APP_ORIGIN))

    assert simple.status_code == 403  # a write from an origin not allowed
    assert options.status_code != 204
    for response in (simple, options):
        assert not any(h in response.headers for h in CORS)
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_preflight_is_answered_before_authentication_and_rate_limits() -> None:
    config = make_config(
        server={"cors_allow_origins": [APP_ORIGIN]}, rate_limit={"rate": 0.001, "burst": 1}
    )
    async with gateway_client(config) as (_, client):
        statuses = [(await client.request(**preflight(APP_ORIGIN))).status_code for _ in range(3)]

    assert statuses == [204, 204, 204]


def test_websocket_scopes_pass_through_untouched() -> None:
    middleware = SecurityCheck(cors_origins=[APP_ORIGIN], hsts=True)
    scope: Scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"origin", APP_ORIGIN.encode())],
    }

    assert middleware.admit_websocket(scope) is None
    assert RESPONSE_HEADERS not in scope  # HTTP response headers are no WebSocket's business


@pytest.mark.parametrize(
    ("origin", "canonical"),
    [
        ("http://127.0.0.1:8001", "http://127.0.0.1:8001"),
        ("HTTPS://GW.Example.com", "https://gw.example.com:443"),
        ("http://gw.example.com:80", "http://gw.example.com:80"),
        ("http://[::1]:8001", "http://[::1]:8001"),
        ("null", None),
        ("file://", None),
        ("ws://gw.example.com", None),
        ("https://gw.example.com/path", None),
        ("https://user@gw.example.com", None),
        ("https://gw.example.com:99999", None),
        ("http://[::1", None),
        ("", None),
    ],
)
def test_origins_compare_by_scheme_host_and_port(origin: str, canonical: str | None) -> None:
    assert canonical_origin(origin) == canonical


def websocket_scope(*headers: tuple[str, str], peer: str = "127.0.0.1") -> Scope:
    return {
        "type": "websocket",
        "scheme": "ws",
        "server": ("127.0.0.1", 8001),
        "client": (peer, 50000),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


@pytest.mark.parametrize(
    ("headers", "own"),
    [
        ((("host", "127.0.0.1:8001"),), "http://127.0.0.1:8001"),
        ((("host", "GW.example.com"),), "http://gw.example.com:80"),
        ((), "http://127.0.0.1:8001"),  # no Host (HTTP/1.0): the bound address
        ((("host", "a/b"),), None),
        # Forwarded headers count only from a trusted proxy (see the next test).
        ((("host", "127.0.0.1:8001"), ("x-forwarded-proto", "https")), "http://127.0.0.1:8001"),
    ],
)
def test_own_origin_is_the_requests_scheme_and_host(
    headers: tuple[tuple[str, str], ...], own: str | None
) -> None:
    middleware = SecurityCheck()
    assert middleware.own_origin(websocket_scope(*headers)) == own


def test_a_trusted_proxy_forwards_the_scheme_and_host() -> None:
    middleware = SecurityCheck(proxies=TrustedProxies(["10.0.0.0/8"]))
    forwarded = (
        ("host", "10.0.0.2:8001"),
        ("x-forwarded-proto", "https, http"),  # the first: what the client spoke
        ("x-forwarded-host", "gw.example.com"),
    )
    assert middleware.own_origin(websocket_scope(*forwarded, peer="10.0.0.1")) == (
        "https://gw.example.com:443"
    )
    assert middleware.own_origin(websocket_scope(*forwarded, peer="192.0.2.1")) == (
        "http://10.0.0.2:8001"
    )


# -- writes a page could forge, and DNS rebinding -------------------------------------

EVIL = "http://evil.example"
UPLOAD = "/api/v1/integration/storage/upload"
RAW = "/api/v1/integration/storage/page.html"
TASK = {
    "jsonrpc": "2.0",
    "method": "task.create",
    "params": {"task_definition": {"task_id": "forged", "type": "t", "title": "forged"}},
    "id": 1,
}
FORM = (
    b'--b\r\ncontent-disposition: form-data; name="file"; filename="x.html"\r\n'
    b"content-type: text/html\r\n\r\n<script>alert(1)</script>\r\n--b--\r\n"
)
MULTIPART = {"content-type": "multipart/form-data; boundary=b"}


@pytest.mark.server
def test_a_web_page_cannot_forge_writes_on_a_real_gateway(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory().start()
    own = server.url
    with httpx.Client(base_url=server.url, timeout=10) as http:
        body = json.dumps(TASK).encode()
        # What a page sends without a preflight: a text/plain or untyped body.
        plain = http.post(JSONRPC, content=body, headers={"content-type": "text/plain"})
        untyped = http.post(JSONRPC, content=body, headers={"origin": EVIL})
        form = http.post(UPLOAD, content=FORM, headers={**MULTIPART, "origin": EVIL})
        # Same forms with a foreign Origin, and what pages could not send anyway.
        json_evil = http.post(JSONRPC, json=TASK, headers={"origin": EVIL})
        raw_evil = http.put(RAW, content=b"<b>x</b>", headers={"origin": EVIL})
        null_origin = http.post(JSONRPC, json=TASK, headers={"origin": "null"})
        for response in (plain, untyped, form, json_evil, raw_evil, null_origin):
            assert response.headers["content-type"] == "application/json"
            assert "error" in response.json()
        assert (plain.status_code, untyped.status_code) == (415, 415)
        assert plain.json()["error"]["code"] == -32600  # a JSON-RPC error object, id null
        assert [r.status_code for r in (form, json_evil, raw_evil, null_origin)] == [403] * 4
        assert (
            http.post(
                JSONRPC, json={**TASK, "method": "task.get", "params": {"task_id": "forged"}}
            ).json()["error"]["code"]
            == -32002
        )  # nothing was created
        assert http.get(f"{UPLOAD[:-7]}").json()["objects"] == []  # nothing was stored

        # Programs (no Origin) and the gateway's own pages still write.
        assert http.post(JSONRPC, json=TASK).status_code == 200
        assert http.post(UPLOAD, content=FORM, headers=MULTIPART).status_code == 201
        assert (
            http.put(RAW, content=b"raw", headers={"content-type": "text/html"}).status_code == 201
        )
        same = http.post(UPLOAD, content=FORM, headers={**MULTIPART, "origin": own})
        assert same.status_code == 201
        charset = {"content-type": "Application/JSON; charset=utf-8", "origin": own}
        assert (
            http.post(
                JSONRPC, content=b'{"jsonrpc":"2.0","method":"agent.list","id":2}', headers=charset
            ).status_code
            == 200
        )


@pytest.mark.server
def test_with_auth_off_only_the_gateways_own_host_names_are_answered(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"AGENTCORE_SERVER__ALLOWED_HOSTS": '["gw.internal"]'}).start()
    port = server.port
    with httpx.Client(base_url=server.url, timeout=10) as http:

        def status(host: str) -> int:
            return http.get("/api/v1/health", headers={"host": host}).status_code

        rebound = http.get("/api/v1/health", headers={"host": f"evil.example:{port}"})
        assert rebound.status_code == 421
        assert rebound.json()["error"]["type"] == "misdirected_request"
        assert http.post(JSONRPC, json=TASK, headers={"host": "evil.example"}).status_code == 421
        for host in (
            "127.0.0.1",
            f"127.0.0.1:{port}",
            f"LOCALHOST:{port}",
            "[::1]:9",
            "gw.internal",
            f"gw.internal:{port}",
            "10.1.2.3:80",
        ):
            assert status(host) == 200, host
        for host in ("gw.internal.evil.example", "localhost.evil.example", "evil:gw.internal"):
            assert status(host) == 421, host

    handshake = (
        f"GET /ws HTTP/1.1\r\nhost: evil.example:{port}\r\nupgrade: websocket\r\n"
        "connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "sec-websocket-version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(handshake)
        assert sock.recv(100).startswith(b"HTTP/1.1 403 ")


async def test_with_auth_on_any_host_is_answered() -> None:
    config = make_config(server={"allowed_hosts": []}, auth={"mode": "api_key"})
    async with gateway_client(config) as (_, client):
        response = await client.get("/api/v1/health", headers={"host": "evil.example"})
    assert response.status_code == 200


async def test_a_configured_origin_may_write() -> None:
    config = make_config(server={"cors_allow_origins": [APP_ORIGIN]})
    async with gateway_client(config) as (_, client):
        allowed = await client.post(JSONRPC, json=LIST, headers={"origin": APP_ORIGIN})
        bodiless = await client.post(JSONRPC, headers={"origin": APP_ORIGIN})
        form = await client.post(
            JSONRPC,
            content=b"x=1",
            headers={"origin": APP_ORIGIN, "content-type": "application/x-www-form-urlencoded"},
        )
    assert allowed.status_code == 200
    assert bodiless.status_code == 400  # past the checks: an empty body is no JSON-RPC call
    assert form.status_code == 415  # the media rule holds for allowed origins too


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (b"127.0.0.1", True),
        (b"127.0.0.1:1", True),
        (b"LocalHost:8001", True),
        (b"[::1]", True),
        (b"[::1]:8001", True),
        (b"192.0.2.7:8001", True),  # an IP literal cannot be a rebound name
        (b"[2001:db8::1]:443", True),
        (b"gw.internal:5", True),
        (b"evil.example", False),
        (b"evil.example:8001", False),
        (b"localhost.evil.example", False),
        (b"127.0.0.1.nip.io", False),
        (b"localhost:port", False),
        (b"", False),
    ],
)
def test_host_names_any_port(host: bytes, allowed: bool) -> None:
    names = host_names("127.0.0.1", 8001, ["gw.internal"])
    assert (host in names or host_allowed(host, names)) is allowed
    assert host_allowed(b"anything", host_names("127.0.0.1", 8001, ["*"]))
