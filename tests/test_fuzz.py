"""No input produces a 5xx: property-based fuzzing of every route, in process.

Hypothesis drives the gateway over ASGI with arbitrary bytes (invalid UTF-8
included), arbitrary JSON (huge integers, ``NaN``/``Infinity`` tokens, lone
surrogates, long strings, nesting up to 100 levels), JSON-RPC calls whose
method comes from the real dispatch table and whose params are valid (drawn
from the schemas ``/api/v1/jsonrpc/methods`` publishes), type-confused or
random, batches of those, and random HTTP methods, paths, content types and
headers. The property, for every request:

- the status is below 500;
- a body sent with an error status (>= 400) is JSON: ``{"error": {"code",
  "message", ...}}`` or a JSON-RPC error response;
- an agent and a task acknowledged before the fuzzing are still there,
  unchanged (nothing acknowledged is lost to a bad request).

Each test keeps one gateway across all its examples (the fixture is function
scoped on purpose), so damage one input does to the state shows up on a later
one. The JSON-RPC tests run on SQLite and on PostgreSQL (a throwaway database;
skipped when the server is unreachable, unless CI requires it), since each
store refuses different things. A 5xx found here is kept as an ``@example``
below its test.

WebSocket ``subscribe`` messages (odd cursors, patterns, ids, types and
sizes) go to a real server: each is answered (``subscribed`` or a client
``error``) and the connection stays open, never dropped without a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agentcore.app import Gateway, create_app
from agentcore.errors import AgentCoreError, HandlerTimeout, Overloaded, StoreUnavailable
from agentcore.openapi import method_listing
from tests.databases import create_pg_database, drop_pg_database
from tests.support import ServerProcess, agent_card, gateway_client, make_config, rpc

JSONRPC = "/api/v1/jsonrpc"
SEED_AGENT = "fuzz.seed-agent"
SEED_CAPABILITY = "fuzz.seed-capability"
#: Agent and task ids valid params draw from (besides random ones); never the seeded ones.
ID_POOL = ["fuzz-1", "fuzz-2", "fuzz-3"]

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the table under test ----------------------------------------------------------


@functools.cache
def reference() -> Gateway:
    """An unstarted gateway whose routes and method table the strategies draw from.

    Built on the first draw, not on import; ``test_strategies_cover_the_real_tables``
    checks it matches the gateway the tests drive.
    """
    return create_app(make_config())


@functools.cache
def routes() -> list[tuple[str, str]]:
    return sorted(
        (method, route.path) for route in reference().router.routes() for method in route.handlers
    )


@functools.cache
def listing() -> dict[str, Any]:
    return method_listing(list(reference().dispatcher.methods.values()))


# -- raw JSON text -------------------------------------------------------------------


class Raw(str):
    """JSON text written as is: tokens Python's encoder would not produce."""


RAW_TOKENS = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1" + "0" * 400,
    "-" + "9" * 5000,
    "-0",
    "0.0e-99999",
    "1E+2",
    "01",
    "+1",
    ".5",
    "1.",
    "tru",
    "nul",
    "'single'",
    '"\\ud800"',
    '"\\udfff\\ud800x"',
    '"\\u0000"',
    '"\\x41"',
    '"unterminated',
    "undefined",
    "\x00",
    "[1,]",
    '{"a":1,}',
    '{"a" 1}',
    "{1: 2}",
]

LONG_STRINGS = ["a" * 70_000, "\u00e9" * 20_000, "\\" * 10_001, "\U0001f600" * 5_000]

leaves: SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, 2**63 - 1, 2**64, -(2**63) - 1]),
    st.floats(),  # NaN and +-inf come out as NaN / Infinity tokens
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=10),
    st.sampled_from(LONG_STRINGS),
    st.sampled_from(RAW_TOKENS).map(Raw),
)


def containers(children: SearchStrategy[Any]) -> SearchStrategy[Any]:
    return st.lists(children, max_size=5) | st.dictionaries(
        st.text(max_size=10), children, max_size=5
    )


json_values: SearchStrategy[Any] = st.recursive(leaves, containers, max_leaves=25)


def nest(leaf: Any, shape: list[bool]) -> Any:
    """``leaf`` inside ``len(shape)`` arrays (True) and objects (False)."""
    for in_array in reversed(shape):
        leaf = [leaf] if in_array else {"k": leaf}
    return leaf


deep_values: SearchStrategy[Any] = st.builds(
    nest, leaves, st.lists(st.booleans(), min_size=20, max_size=100)
)


def dump(value: Any, ensure_ascii: bool = True) -> str:
    """JSON text of ``value``; :class:`Raw` pieces are spliced in as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ensure_ascii) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(k, ensure_ascii=ensure_ascii)}:{dump(v, ensure_ascii)}"
                for k, v in value.items()
            )
            + "}"
        )
    return json.dumps(value, ensure_ascii=ensure_ascii)


@st.composite
def encoded(draw: st.DrawFn, values: SearchStrategy[Any]) -> bytes:
    """``values`` as JSON bytes; lone surrogates become invalid UTF-8 (CESU-8)."""
    text = dump(draw(values), ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


# -- JSON-RPC calls from the real table ----------------------------------------------

Schema = dict[str, Any]
#: Characters that break stores, encoders and LIKE patterns when they go unchecked.
EDGY = ["\x00", "\n", "\u2028", "\\", '"', "%", "_", "*", "\ud800"]


@st.composite
def edgy_text(draw: st.DrawFn, min_size: int, max_size: int) -> str:
    """Text, half of it with one character replaced by one of ``EDGY``."""
    text = draw(st.text(min_size=min_size, max_size=max_size))
    if text and draw(st.booleans()):
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(EDGY)) + text[i + 1 :]
    return text


def from_schema(schema: Schema) -> SearchStrategy[Any]:
    """Values valid for the subset of JSON Schema msgspec emits for the method table."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(listing()["components"]["schemas"][name]))
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties: dict[str, Schema] | None = schema.get("properties")
        if properties is None:
            return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in properties.items() if k in required},
            optional={k: from_schema(v) for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        size = min(schema.get("maxItems", 3), 3)
        return st.lists(from_schema(schema.get("items", {})), max_size=size)
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 40), 40)
        if "pattern" in schema:  # ids: a small pool, so calls meet what earlier calls created
            return st.sampled_from(ID_POOL) | st.from_regex(
                schema["pattern"], fullmatch=True
            ).filter(lambda s: low <= len(s) <= schema.get("maxLength", 40))
        return edgy_text(low, high)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(
            low,
            schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
            exclude_min="exclusiveMinimum" in schema,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


@functools.cache
def valid_params(method: str) -> SearchStrategy[Any]:
    schema = next(m["params"] for m in listing()["methods"] if m["name"] == method)
    return from_schema(schema)


@st.composite
def confused(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one member replaced, dropped or added, or the whole of it replaced."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        out = dict(value)
        if action == "drop":
            del out[key]
        elif action == "add":
            out[draw(st.text(max_size=12))] = draw(json_values)
        else:
            out[key] = draw(confused(value[key]))
        return out
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(confused(value[i])), *value[i + 1 :]]
    return draw(json_values)


ABSENT = object()


def pick(draw: st.DrawFn, *options: tuple[int, SearchStrategy[Any]]) -> Any:
    """Draw from one of ``options`` chosen by weight; shrinking moves towards the first."""
    n = draw(st.integers(0, sum(weight for weight, _ in options) - 1))
    for weight, strategy in options:
        if n < weight:
            return draw(strategy)
        n -= weight
    raise AssertionError("unreachable")


@st.composite
def rpc_calls(draw: st.DrawFn) -> Any:
    """One JSON-RPC-shaped object; each part is mostly well formed, so most calls get deep."""
    names = sorted(reference().dispatcher.methods)
    method = pick(
        draw,
        (8, st.sampled_from(names)),
        (1, st.sampled_from(names).map(str.upper) | st.text(max_size=30)),
        (1, json_values),
    )
    if method in names:
        params = pick(
            draw,
            (5, valid_params(method)),
            (3, valid_params(method).flatmap(confused)),
            (2, json_values | st.just(ABSENT)),
        )
    else:
        params = draw(json_values | st.just(ABSENT))
    call: dict[str, Any] = {
        "jsonrpc": pick(draw, (8, st.just("2.0")), (2, st.just(ABSENT) | leaves)),
        "method": method,
        "params": params,
        "id": pick(
            draw,
            (6, st.integers(0, 1000)),
            (1, st.just(ABSENT)),
            (3, st.none() | st.text(max_size=10) | leaves | json_values),
        ),
    }
    if draw(st.integers(0, 9)) == 0:
        call[draw(st.text(max_size=10))] = draw(json_values)
    return {k: v for k, v in call.items() if v is not ABSENT}


batches: SearchStrategy[list[Any]] = st.lists(rpc_calls() | json_values, min_size=0, max_size=8)


# -- HTTP requests -------------------------------------------------------------------


@dataclass(frozen=True)
class Fuzz:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        body = repr(self.body[:300]) + (
            f"... ({len(self.body)} bytes)" if len(self.body) > 300 else ""
        )
        return f"Fuzz({self.method!r}, {self.path!r}, {body}, {self.headers!r})"


def rpc_body(method: str, params: str) -> bytes:
    return f'{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":1}}'.encode()


HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/json-rpc",
    "text/plain",
    "text/html; charset=utf-16",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/octet-stream",
    "application/msgpack",
    "*/*",
    "",
    ";;;",
]
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
path_text = st.text(
    string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%?\u00e9\u4e2d", max_size=60
)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, str]:
    out = {"content-type": draw(st.sampled_from(CONTENT_TYPES) | header_text)}
    optional = ["authorization", "x-api-key", "x-forwarded-for", "origin", "accept", "host"]
    for name in draw(st.lists(st.sampled_from(optional), unique=True, max_size=3)):
        out[name] = draw(header_text)
    return out


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """A method and path: a real route, a real path with another method, or neither."""
    method, path = draw(st.sampled_from(routes()))
    choice = draw(st.integers(0, 5))
    if choice == 0:
        method = draw(st.sampled_from(HTTP_METHODS) | st.from_regex(r"[A-Z]{1,12}", fullmatch=True))
    elif choice == 1:
        path = draw(
            st.sampled_from([path + "/", path.upper(), "/" + path, path + "/x", path[:-1]])
            | path_text.map(lambda p: "/" + p)
        )
    return method, path


def requests(bodies: SearchStrategy[bytes]) -> SearchStrategy[Fuzz]:
    return st.builds(
        lambda target, body, hdrs: Fuzz(target[0], target[1], body, hdrs),
        targets(),
        bodies,
        headers(),
    )


def jsonrpc_posts(bodies: SearchStrategy[bytes]) -> SearchStrategy[Fuzz]:
    json_headers = st.just({"content-type": "application/json"}) | headers()
    return st.builds(lambda body, hdrs: Fuzz("POST", JSONRPC, body, hdrs), bodies, json_headers)


# -- the property --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A started gateway over ASGI, on SQLite in memory or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        async with gateway_client(make_config()) as (_, http):
            yield http
        return
    name, url = await create_pg_database()
    try:
        async with gateway_client(make_config(database={"url": url})) as (_, http):
            yield http
    finally:
        await drop_pg_database(name)


@pytest.fixture
async def seeded(client: httpx.AsyncClient) -> tuple[Any, Any]:
    """An agent and a task assigned to it, acknowledged before any fuzzing."""
    await rpc(client, "agent.register", {"agent_card": agent_card(SEED_AGENT, SEED_CAPABILITY)})
    task = await rpc(
        client,
        "task.create",
        {"task_definition": {"title": "seed", "required_capabilities": [SEED_CAPABILITY]}},
    )
    assert task["status"] == "assigned" and task["agent_id"] == SEED_AGENT
    return await snapshot(client, task["task_id"])


async def snapshot(client: httpx.AsyncClient, task_id: str) -> tuple[Any, Any]:
    agent = await rpc(client, "agent.get", {"agent_id": SEED_AGENT})
    task = await rpc(client, "task.get", {"task_id": task_id})
    return agent, task


#: JSON-RPC codes of the 5xx error classes: inside a batch (answered 200) they are the 5xx.
SERVER_ERROR_CODES = {
    cls.code for cls in (AgentCoreError, StoreUnavailable, Overloaded, HandlerTimeout)
}


def is_error_body(body: Any) -> bool:
    """``{"error": {"code", "message", ...}}``, which a JSON-RPC error response also is."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    error = body["error"]
    return isinstance(error.get("code"), int) and isinstance(error.get("message"), str)


async def check(client: httpx.AsyncClient, request: Fuzz, seeded: tuple[Any, Any]) -> None:
    headers = [(k.encode(), v.encode("latin-1")) for k, v in request.headers.items()]
    response = await client.request(
        request.method, request.path, content=request.body, headers=headers
    )
    status = response.status_code
    event(f"status {status}")
    assert status < 500, f"{status} for {request!r}: {response.content[:500]!r}"
    # A stored artifact is served as it was stored (Content-Disposition: attachment),
    # whatever content type the uploader gave it; every other answer is JSON.
    attachment = response.headers.get("content-disposition", "").startswith("attachment")
    if (
        response.content
        and not attachment
        and (status >= 400 or response.headers.get("content-type") == "application/json")
    ):
        try:
            body = response.json()
        except ValueError:
            pytest.fail(f"{status} body is not JSON for {request!r}: {response.content[:500]!r}")
        if status >= 400:
            assert is_error_body(body), f"{status} body is not an error: {body!r}"
        for reply in body if isinstance(body, list) else [body]:
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else None
            assert code not in SERVER_ERROR_CODES, f"{reply!r} in a batch for {request!r}"
    assert await snapshot(client, seeded[1]["task_id"]) == seeded, f"state changed by {request!r}"


def test_strategies_cover_the_real_tables(gateway: Gateway) -> None:
    assert sorted(gateway.dispatcher.methods) == sorted(reference().dispatcher.methods)
    assert [(r.path, sorted(r.handlers)) for r in gateway.router.routes()] == [
        (r.path, sorted(r.handlers)) for r in reference().router.routes()
    ]


@pytest.mark.parametrize("client", ["sqlite"], indirect=True)  # they rarely reach a store
@settings(FUZZ, max_examples=200)
@given(request=requests(st.binary(max_size=2000)))
@example(request=Fuzz("POST", JSONRPC, b"\xff\xfe\x00{", {"content-type": "application/json"}))
@example(request=Fuzz("POST", JSONRPC, b'{"jsonrpc":"2.0","method":"\xc3\x28"}'))
@example(request=Fuzz("GET", "/api/v1/jsonrpc/methods/", b"\x80"))
# Invalid UTF-8 inside a string made msgspec raise UnicodeDecodeError: a 500.
@example(
    request=Fuzz(
        "POST",
        JSONRPC,
        b'{"jsonrpc":"2.0","method":"agent.get","params":{"agent_id":"\xff"},"id":1}',
    )
)
@example(request=Fuzz("POST", JSONRPC, b'{"jsonrpc":1,"method":"\xff"}'))
@example(request=Fuzz("POST", JSONRPC, b'[{"jsonrpc":"2.0","method":"\xc3(","id":1}]'))
async def test_arbitrary_bytes_on_every_route(
    client: httpx.AsyncClient, seeded: tuple[Any, Any], request: Fuzz
) -> None:
    await check(client, request, seeded)


@pytest.mark.parametrize("client", ["sqlite"], indirect=True)  # they rarely reach a store
@settings(FUZZ, max_examples=200)
@given(request=requests(encoded(json_values | deep_values)) | jsonrpc_posts(encoded(json_values)))
@example(request=Fuzz("POST", JSONRPC, b"[" * 100 + b"]" * 100))
@example(request=Fuzz("POST", JSONRPC, b'{"a":' * 100 + b"1" + b"}" * 100))
@example(request=Fuzz("POST", JSONRPC, b'"' + b"[" * 100 + b'"'))
async def test_arbitrary_json_on_every_route(
    client: httpx.AsyncClient, seeded: tuple[Any, Any], request: Fuzz
) -> None:
    await check(client, request, seeded)


@settings(FUZZ, max_examples=400)
@given(request=jsonrpc_posts(encoded(rpc_calls())))
# Offsets past SQLite's 64-bit INTEGER used to raise OverflowError in the store: a 500.
@example(request=Fuzz("POST", JSONRPC, rpc_body("agent.list", '{"offset":' + "1" * 30 + "}")))
@example(
    request=Fuzz("POST", JSONRPC, rpc_body("agent.discover", '{"offset":18446744073709551616}'))
)
@example(request=Fuzz("POST", JSONRPC, rpc_body("task.query", '{"offset":9223372036854775808}')))
@example(request=Fuzz("POST", JSONRPC, rpc_body("task.query", '{"limit":' + "9" * 400 + "}")))
@example(request=Fuzz("POST", JSONRPC, b'{"jsonrpc":"2.0","method":"agent.list","id":1e400}'))
# PostgreSQL refuses U+0000 in TEXT columns: names and labels with it used to be a 500 there.
@example(
    request=Fuzz("POST", JSONRPC, rpc_body("agent.register", '{"agent_card":{"name":"\\u0000"}}'))
)
@example(
    request=Fuzz(
        "POST",
        JSONRPC,
        rpc_body("agent.register", '{"agent_card":{"name":"n","tags":["\\u0000"]}}'),
    )
)
@example(
    request=Fuzz(
        "POST", JSONRPC, rpc_body("task.create", '{"task_definition":{"type":"t\\u0000"}}')
    )
)
@example(request=Fuzz("POST", JSONRPC, rpc_body("agent.discover", '{"capabilities":["\\u0000"]}')))
@example(request=Fuzz("POST", JSONRPC, rpc_body("agent.discover", '{"name_pattern":"\\u0000"}')))
@example(request=Fuzz("POST", JSONRPC, rpc_body("task.query", '{"type":"\\u0000"}')))
async def test_jsonrpc_calls(
    client: httpx.AsyncClient, seeded: tuple[Any, Any], request: Fuzz
) -> None:
    await check(client, request, seeded)


@settings(FUZZ, max_examples=150)
@given(request=jsonrpc_posts(encoded(batches)))
@example(
    request=Fuzz(
        "POST",
        JSONRPC,
        b"[" + b",".join([b'{"jsonrpc":"2.0","method":"agent.list","id":1}'] * 101) + b"]",
    )
)
@example(
    request=Fuzz(
        "POST", JSONRPC, b"[" + rpc_body("agent.list", '{"offset":' + "1" * 30 + "}") + b"]"
    )
)
async def test_jsonrpc_batches(
    client: httpx.AsyncClient, seeded: tuple[Any, Any], request: Fuzz
) -> None:
    await check(client, request, seeded)


# -- request heads on the wire -----------------------------------------------------

#: Small head limits for the head fuzz, so both sides of each are reached cheaply.
HEAD_LIMITS = {
    "AGENTCORE_SERVER__MAX_HEAD_BYTES": "4096",
    "AGENTCORE_SERVER__MAX_HEADERS": "20",
    "AGENTCORE_SERVER__HEAD_TIMEOUT_S": "2",
}
#: Seconds an answer to a whole head may take (the head timeout and a sweep, and slack).
ANSWER_S = 5.0
token = st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}", fullmatch=True)
visible = st.binary(max_size=200).map(lambda b: bytes(c | 0x20 for c in b).replace(b"\x7f", b"~"))
repeated = st.builds(
    lambda byte, size: byte * size,
    st.sampled_from([b"a", b" ", b"\t", b"\xff"]),
    st.integers(0, 9000),
)


@dataclass(frozen=True)
class Head:
    """A request head as sent: its bytes, in pieces."""

    pieces: tuple[bytes, ...]

    def __repr__(self) -> str:  # Hypothesis prints failing examples: keep them short
        data = b"".join(self.pieces)
        return f"Head({len(data)} bytes in {len(self.pieces)} pieces: {data[:300]!r}...)"


@st.composite
def heads(draw: st.DrawFn) -> Head:
    start = draw(
        st.sampled_from(
            [
                b"GET /api/v1/health HTTP/1.1\r\n",
                b"POST /api/v1/jsonrpc HTTP/1.1\r\n",
                b"GET /api/v1/health HTTP/1.0\r\n",
            ]
        )
    )
    lines = [b"host: 127.0.0.1\r\n"] if draw(st.booleans()) else []
    count = draw(st.integers(0, 5) | st.integers(0, 40))
    # One head in four may be malformed anywhere; the rest are well formed, so
    # that the limits are reached rather than a 400 for a bad byte.
    malformed = draw(st.integers(0, 3)) == 0
    names = token | st.binary(min_size=1, max_size=40) if malformed else token
    values = visible | repeated | (st.binary(max_size=200) if malformed else repeated)
    for _ in range(count):
        lines.append(draw(names) + b": " + draw(values) + b"\r\n")
    data = start + b"".join(lines) + b"content-length: 0\r\n\r\n"
    cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), max_size=3, unique=True)))
    return Head(tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)))


def first_answer(sock: socket.socket) -> bytes:
    """The first response's head and body, or what came before the server closed."""
    deadline = time.monotonic() + ANSWER_S
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if length is None or len(body) >= int(length[1]):
                return data
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no complete answer within {ANSWER_S} s: {data[:300]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def head_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=HEAD_LIMITS).start()


@pytest.mark.server
@settings(FUZZ, max_examples=150)
@given(head=heads())
@example(head=Head((b"GET /api/v1/health HTTP/1.1\r\nx: " + b"a" * 5000 + b"\r\n\r\n",)))
@example(head=Head((b"GET /api/v1/health HTTP/1.1\r\n" + b"x: 1\r\n" * 21 + b"\r\n",)))
def test_request_heads_never_get_a_5xx_or_a_hang(head_server: ServerProcess, head: Head) -> None:
    with socket.create_connection(("127.0.0.1", head_server.port), timeout=ANSWER_S) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for piece in head.pieces:
                sock.sendall(piece)
        answer = first_answer(sock)
    assert answer, f"closed without an answer: {head!r}"
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split()[1])
    event(f"status {status}")
    assert status < 500, f"{status} for {head!r}: {answer[:500]!r}"
    if status in (408, 431):  # the head limits answer in JSON
        assert is_error_body(json.loads(rest.partition(b"\r\n\r\n")[2]))


# -- WebSocket subscribe messages ---------------------------------------------------

#: Largest subscribe message sent: under the server's limit, so that every message
#: is the gateway's to answer (the size limit is uvicorn's: tests/realtime).
WS_MESSAGE_BYTES = 200_000
#: A message limit above every message sent, and a message rate never reached.
WS_LIMITS = {
    "AGENTCORE_REALTIME__MAX_MESSAGE_BYTES": str(WS_MESSAGE_BYTES + 1),
    "AGENTCORE_REALTIME__CLIENT_MESSAGES_PER_S": "100000",
    "AGENTCORE_REALTIME__CLIENT_MESSAGES_BURST": "100000",
}
#: Seconds the answers to one example's messages may take.
WS_ANSWER_S = 5.0


def mostly(valid: SearchStrategy[Any], odd: SearchStrategy[Any]) -> SearchStrategy[Any]:
    """``valid`` seven times in eight: each field of a message is mostly valid, so
    that whole messages often are (and reach the store), and sometimes odd."""
    return st.integers(0, 7).flatmap(lambda n: odd if n == 7 else valid)


cursors = mostly(
    st.integers(min_value=0, max_value=2**63 - 1) | st.sampled_from([0, 1, 2**63 - 1]),
    st.sampled_from([2**63, 2**64, 10**23, 10**400, -1, -(2**63) - 1]) | st.integers() | leaves,
)
patterns = st.text(alphabet="abtask.*?[]!-_", min_size=1, max_size=20)
topic_lists = mostly(
    st.lists(patterns, min_size=1, max_size=4),
    st.lists(patterns | edgy_text(0, 200), max_size=40) | st.lists(leaves, max_size=3) | leaves,
)
ids = mostly(
    st.sampled_from(ID_POOL) | st.from_regex(r"[A-Za-z0-9._:@/-]{1,128}", fullmatch=True),
    edgy_text(0, 200) | leaves,
)


@st.composite
def subscribe_messages(draw: st.DrawFn) -> str:
    """A ``subscribe`` message, odd in any of its fields (or its type), as JSON text."""
    message = draw(
        st.fixed_dictionaries(
            {"type": mostly(st.just("subscribe"), st.sampled_from(["unsubscribe", "S"]) | leaves)},
            optional={
                "id": mostly(st.integers() | st.text(max_size=10), leaves),
                "since": cursors,
                "topics": topic_lists,
                "task_id": ids,
                "agent_id": ids,
            },
        )
    )
    # ASCII escapes keep lone surrogates expressible in a text frame.
    text = dump(message, ensure_ascii=True)
    assume(len(text) <= WS_MESSAGE_BYTES)
    return text


@pytest.fixture
def ws_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=WS_LIMITS).start()


@pytest.mark.server
@settings(FUZZ, max_examples=150)
@given(messages=st.lists(subscribe_messages(), min_size=1, max_size=4))
# A since above 2^63-1 was answered "subscribed", then the store's OverflowError
# dropped the connection without a close frame.
@example(messages=['{"type":"subscribe","since":99999999999999999999999}'])
@example(messages=['{"type":"subscribe","since":' + "9" * 400 + "}"])
async def test_websocket_subscribe_messages_get_an_answer_and_keep_the_connection(
    ws_server: ServerProcess, messages: list[str]
) -> None:
    """Each message is answered ``subscribed`` or with a client ``error``, and the
    connection stays open: it then still answers a ping."""
    url = f"ws://127.0.0.1:{ws_server.port}/api/v1/ws/events"
    async with connect(url, compression=None, ping_interval=None, max_size=None) as conn:
        answered = 0
        try:
            for text in messages:
                await conn.send(text)
            await conn.send('{"type":"ping","id":"fuzz-end"}')
            async with asyncio.timeout(WS_ANSWER_S):
                while True:
                    reply = json.loads(await conn.recv())
                    if reply == {"type": "pong", "id": "fuzz-end"}:
                        break
                    event(f"answer {reply['type']}")
                    if reply["type"] == "error":
                        assert is_error_body(reply), reply
                        assert reply["error"]["code"] not in SERVER_ERROR_CODES, reply
                    else:
                        assert reply["type"] in ("subscribed", "unsubscribed", "event", "ping")
                    answered += reply["type"] in ("subscribed", "unsubscribed", "error")
        except ConnectionClosed:
            close = conn.protocol.close_rcvd
            pytest.fail(f"closed ({close or 'without a close frame'}) after {messages!r}")
    assert answered == len(messages), f"{answered} answers to {messages!r}"
