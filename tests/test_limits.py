"""Request limits: body size, JSON depth, batch size, read and handler timeouts, load shedding.

Where *when* something happens matters (413 before the body is read in full,
408 while the body never comes) the gateway is driven over raw ASGI with a
``receive`` the test controls; the rest goes through httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from agentcore.app import Gateway
from agentcore.auth import AuthCheck
from agentcore.errors import Unauthorized
from agentcore.identity import Identity
from agentcore.metrics import Metrics
from agentcore.types import Message, Receive, Scope
from tests.support import gateway_client, make_config, refused_status

JSONRPC = "/api/v1/jsonrpc"
#: The body type every JSON-RPC POST declares (others are 415, security.py).
JSON = {"content-type": "application/json"}
LIST = {"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1}


def padded(size: int) -> bytes:
    """A valid JSON-RPC request of exactly ``size`` bytes (trailing spaces)."""
    body = msgspec.json.encode(LIST)
    assert len(body) <= size
    return body + b" " * (size - len(body))


def nested_params(arrays: int, method: str = "no.such.method") -> bytes:
    """A request whose params hold ``arrays`` nested arrays: depth ``arrays + 2``."""
    return b'{"jsonrpc":"2.0","method":"%s","params":{"x":%s%s},"id":1}' % (
        method.encode(),
        b"[" * arrays,
        b"]" * arrays,
    )


class Exchange:
    """One request over raw ASGI: the messages the app sent, and how often it read."""

    def __init__(self, receive: Receive) -> None:
        self.reads = 0
        self.sent: list[Message] = []
        self._receive = receive

    async def receive(self) -> Message:
        self.reads += 1
        return await self._receive()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    def json(self) -> Any:
        return msgspec.json.decode(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def exchange(
    app: Gateway, receive: Receive, headers: list[tuple[bytes, bytes]] | None = None
) -> Exchange:
    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": JSONRPC,
        "raw_path": JSONRPC.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8001),
    }
    ex = Exchange(receive)
    await asyncio.wait_for(app(scope, ex.receive, ex.send), timeout=10)
    return ex


async def endless_chunks() -> Message:
    return {"type": "http.request", "body": b" " * 100, "more_body": True}


async def never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def rpc_error(body: Any) -> dict[str, Any]:
    """The error object of a JSON-RPC error response to a request that was not read."""
    assert (body["jsonrpc"], body["id"]) == ("2.0", None)
    error: dict[str, Any] = body["error"]
    return error


def metric(text: str, sample: str) -> float:
    """The value of one sample line, e.g. ``agentcore_shed_total``; 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return response.text


# -- body size -------------------------------------------------------------------------


async def test_body_above_the_limit_is_413() -> None:
    config = make_config(limits={"max_body_bytes": 1000})
    async with gateway_client(config) as (_, client):
        at_limit = await client.post(JSONRPC, content=padded(1000), headers=JSON)
        above = await client.post(JSONRPC, content=padded(1001), headers=JSON)
        metrics = await scrape(client)

    assert at_limit.status_code == 200
    assert above.status_code == 413
    error = rpc_error(above.json())
    assert error["code"] == -32600
    assert error["message"] == "request body exceeds 1000 bytes"
    assert metric(metrics, 'agentcore_rejected_total{reason="body_too_large"}') == 1


async def test_declared_length_above_the_limit_is_refused_before_reading() -> None:
    async with gateway_client(make_config(limits={"max_body_bytes": 1000})) as (app, _):
        ex = await exchange(app, endless_chunks, [(b"content-length", b"10000000")])

    assert ex.status == 413
    assert ex.reads == 0


async def test_chunked_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    """No Content-Length: reading stops at the first chunk past the limit."""
    async with gateway_client(make_config(limits={"max_body_bytes": 1000})) as (app, _):
        ex = await exchange(app, endless_chunks)

    assert ex.status == 413
    assert rpc_error(ex.json())["code"] == -32600
    assert ex.reads == 11  # 11 chunks of 100 bytes: the first time the total exceeds 1000


async def test_chunked_body_within_the_limit_is_read_whole() -> None:
    body = padded(250)
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async with gateway_client(make_config(limits={"max_body_bytes": 1000})) as (app, _):
        ex = await exchange(app, receive)

    assert ex.status == 200
    assert ex.json()["result"]["agents"] == []


async def test_the_control_class_body_limit_overrides_the_default() -> None:
    tighter = make_config(limits={"max_body_bytes_by_class": {"control": 500}})
    looser = make_config(
        limits={"max_body_bytes": 100, "max_body_bytes_by_class": {"control": 10_000}}
    )
    async with gateway_client(tighter) as (_, client):
        refused = await client.post(JSONRPC, content=padded(600), headers=JSON)
    async with gateway_client(looser) as (_, client):
        admitted = await client.post(JSONRPC, content=padded(600), headers=JSON)

    assert refused.status_code == 413
    assert "500 bytes" in refused.json()["error"]["message"]
    assert admitted.status_code == 200


async def test_default_body_limit_is_one_mebibyte() -> None:
    async with gateway_client(make_config()) as (_, client):
        at_limit = await client.post(JSONRPC, content=padded(1_048_576), headers=JSON)
        above = await client.post(JSONRPC, content=padded(1_048_577), headers=JSON)

    assert (at_limit.status_code, above.status_code) == (200, 413)


# -- JSON depth and batches ------------------------------------------------------------


async def test_json_nested_deeper_than_the_limit_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(JSONRPC, content=b"[" * 33 + b"]" * 33, headers=JSON)

    assert response.status_code == 400
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == -32600
    assert "deeper than 32" in body["error"]["message"]


async def test_depth_limit_boundary(client: httpx.AsyncClient) -> None:
    at_limit = await client.post(JSONRPC, content=nested_params(30), headers=JSON)  # depth 32
    above = await client.post(JSONRPC, content=nested_params(31), headers=JSON)  # depth 33

    # At the limit the request is read and dispatched: the method is unknown.
    assert (at_limit.status_code, at_limit.json()["error"]["code"]) == (404, -32601)
    assert (above.status_code, above.json()["error"]["code"]) == (400, -32600)


async def test_objects_count_towards_depth(client: httpx.AsyncClient) -> None:
    deep = b'{"a":' * 40 + b"1" + b"}" * 40

    response = await client.post(JSONRPC, content=deep, headers=JSON)

    assert response.status_code == 400
    assert "deeper than" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "text",
    ["[" * 100, "{" * 100, '\\"' + "[" * 100, "]" * 50 + "[" * 100, "\\\\" + "[" * 100],
)
async def test_brackets_inside_strings_do_not_count(client: httpx.AsyncClient, text: str) -> None:
    body = b'{"jsonrpc":"2.0","method":"no.such.method","params":{"x":"%s"},"id":1}' % (
        text.encode()
    )

    response = await client.post(JSONRPC, content=body, headers=JSON)

    assert (response.status_code, response.json()["error"]["code"]) == (404, -32601)


async def test_configured_depth_limit() -> None:
    async with gateway_client(make_config(limits={"max_json_depth": 3})) as (_, client):
        ok = await client.post(JSONRPC, content=nested_params(1), headers=JSON)
        deep = await client.post(JSONRPC, content=nested_params(2), headers=JSON)
        metrics = await scrape(client)

    assert ok.status_code == 404
    assert deep.status_code == 400
    assert "deeper than 3" in deep.json()["error"]["message"]
    assert metric(metrics, 'agentcore_rejected_total{reason="json_too_deep"}') == 1


async def test_batch_above_the_limit_is_one_error() -> None:
    def batch(n: int) -> list[dict[str, Any]]:
        return [{**LIST, "id": i} for i in range(n)]

    async with gateway_client(make_config(limits={"max_batch_size": 3})) as (_, client):
        at_limit = await client.post(JSONRPC, json=batch(3))
        above = await client.post(JSONRPC, json=batch(4))

    assert at_limit.status_code == 200
    assert [r["id"] for r in at_limit.json()] == [0, 1, 2]
    assert above.status_code == 400
    body = above.json()
    assert (body["id"], body["error"]["code"]) == (None, -32600)
    assert "batch of 4 exceeds the limit of 3" in body["error"]["message"]


# -- timeouts --------------------------------------------------------------------------


async def test_body_that_never_arrives_is_408() -> None:
    config = make_config(limits={"read_timeout_s": 0.05, "handler_timeout_s": 5})
    async with gateway_client(config) as (app, client):
        ex = await exchange(app, never)
        metrics = await scrape(client)

    assert ex.status == 408
    error = rpc_error(ex.json())
    assert error["code"] == -32031
    assert error["message"] == "request body not received within 0.05 s"
    assert metric(metrics, 'agentcore_rejected_total{reason="read_timeout"}') == 1


async def test_body_that_stalls_halfway_is_408() -> None:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await never()
        sent = True
        return {"type": "http.request", "body": b'{"jsonrpc":', "more_body": True}

    config = make_config(limits={"read_timeout_s": 0.05, "handler_timeout_s": 5})
    async with gateway_client(config) as (app, _):
        ex = await exchange(app, receive)

    assert ex.status == 408


def slow() -> Callable[..., Awaitable[Any]]:
    """A store method that never returns."""

    async def wait(*args: object) -> Any:
        await asyncio.Event().wait()

    return wait


class Gate:
    """A store method that holds its callers until :attr:`opened` is set."""

    def __init__(self, expected: int) -> None:
        self.opened = asyncio.Event()
        #: Set once ``expected`` callers are held.
        self.full = asyncio.Event()
        self._expected = expected
        self._held = 0

    async def __call__(self, *args: object) -> list[Any]:
        self._held += 1
        if self._held >= self._expected:
            self.full.set()
        await self.opened.wait()
        return []


async def test_slow_handler_is_503_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(limits={"handler_timeout_s": 0.05})
    async with gateway_client(config) as (app, client):
        monkeypatch.setattr(app.repos.agents, "query", slow())
        response = await asyncio.wait_for(client.post(JSONRPC, json=LIST), timeout=5)
        metrics = await scrape(client)

    assert response.status_code == 503
    body = response.json()
    error = body["error"]
    assert (body["jsonrpc"], body["id"], error["code"]) == ("2.0", None, -32032)
    assert error["message"] == "the request took longer than 0.05 s to handle"
    assert metric(metrics, 'agentcore_rejected_total{reason="handler_timeout"}') == 1


async def test_slow_health_check_times_out_too(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(limits={"handler_timeout_s": 0.05})
    async with gateway_client(config) as (app, client):
        monkeypatch.setattr(app.repos, "check", slow())
        response = await asyncio.wait_for(client.get("/api/v1/health"), timeout=5)

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "handler_timeout"


# -- load shedding ---------------------------------------------------------------------


async def test_past_max_in_flight_requests_are_shed(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(expected=2)
    config = make_config(limits={"max_in_flight": 2})
    async with gateway_client(config) as (app, client):
        monkeypatch.setattr(app.repos.agents, "query", gate)
        held = [asyncio.create_task(client.post(JSONRPC, json=LIST)) for _ in range(2)]
        await asyncio.wait_for(gate.full.wait(), timeout=5)
        assert app.shedder.in_flight == 2

        shed = await asyncio.wait_for(client.post(JSONRPC, json=LIST), timeout=5)
        shed_health = await asyncio.wait_for(client.get("/api/v1/health/live"), timeout=5)
        gate.opened.set()
        finished = await asyncio.wait_for(asyncio.gather(*held), timeout=5)
        after = await client.post(JSONRPC, json=LIST)
        metrics = await scrape(client)

    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    body = shed.json()
    assert (body["jsonrpc"], body["id"], body["error"]["code"]) == ("2.0", None, -32030)
    assert "2 requests in flight" in body["error"]["message"]
    assert shed_health.status_code == 503
    assert shed_health.json()["error"]["type"] == "overloaded"
    assert [r.status_code for r in finished] == [200, 200]
    assert after.status_code == 200
    assert app.shedder.in_flight == 0
    assert metric(metrics, "agentcore_shed_total") == 2


async def test_a_failed_request_frees_its_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(limits={"max_in_flight": 1, "handler_timeout_s": 0.02})
    async with gateway_client(config) as (app, client):
        monkeypatch.setattr(app.repos.agents, "query", slow())
        timed_out = [await client.post(JSONRPC, json=LIST) for _ in range(3)]

    assert [r.status_code for r in timed_out] == [503, 503, 503]
    assert [r.json()["error"]["code"] for r in timed_out] == [-32032] * 3
    assert app.shedder.in_flight == 0


# -- counters --------------------------------------------------------------------------


class RejectingAuthenticator:
    async def authenticate(self, credential: str) -> Identity:
        raise Unauthorized("invalid credential")


async def _refuse(auth: AuthCheck, headers: list[tuple[bytes, bytes]]) -> int | None:
    scope: Scope = {"type": "http", "method": "POST", "path": JSONRPC, "headers": headers}
    return await refused_status(auth.admit(scope), scope)


async def test_unauthorized_requests_are_counted_by_reason() -> None:
    metrics = Metrics()

    auth = AuthCheck(RejectingAuthenticator(), metrics=metrics)
    statuses = [
        await _refuse(auth, []),
        await _refuse(auth, [(b"authorization", b"Bearer nope")]),
        await _refuse(auth, [(b"x-api-key", b"nope")]),
    ]

    text = metrics.render({}, {}).decode()
    assert statuses == [401, 401, 401]
    assert metric(text, 'agentcore_unauthorized_total{reason="missing"}') == 1
    assert metric(text, 'agentcore_unauthorized_total{reason="invalid"}') == 2


async def test_protection_counters_are_exposed(client: httpx.AsyncClient) -> None:
    text = await scrape(client)

    for family in (
        "agentcore_rate_limited_total",
        "agentcore_shed_total",
        "agentcore_rejected_total",
        "agentcore_unauthorized_total",
    ):
        assert f"# TYPE {family} counter" in text
