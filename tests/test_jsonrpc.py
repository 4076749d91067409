"""JSON-RPC 2.0 conformance over HTTP, and the dispatcher on its own (no HTTP)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from agentcore.errors import InvalidTransition
from agentcore.jsonrpc import Context, Dispatcher, Method
from tests.support import agent_card, gateway_client, make_config, rpc

URL = "/api/v1/jsonrpc"
JSON = {"content-type": "application/json"}


async def post(client: httpx.AsyncClient, body: bytes | Any) -> httpx.Response:
    """POST raw bytes as they are, anything else encoded as JSON."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(URL, content=content, headers=JSON)


def call(method: str, params: Any = None, rpc_id: Any = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if params is not None:
        body["params"] = params
    if rpc_id is not ...:
        body["id"] = rpc_id
    return body


def notify(method: str, params: Any = None) -> dict[str, Any]:
    return call(method, params, rpc_id=...)


def assert_error(response: httpx.Response, status: int, code: int, rpc_id: Any = None) -> str:
    """Check a single JSON-RPC error response; return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert isinstance(data, dict)
    assert set(data) == {"jsonrpc", "error", "id"}
    assert data["jsonrpc"] == "2.0"
    assert data["id"] == rpc_id
    assert data["error"]["code"] == code
    message = data["error"]["message"]
    assert isinstance(message, str) and message
    return message


# -- single calls ---------------------------------------------------------------


async def test_success_has_exactly_jsonrpc_result_and_id(client: httpx.AsyncClient) -> None:
    response = await post(client, call("agent.register", {"agent_card": agent_card("a1")}, 7))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == {"jsonrpc", "result", "id"}
    assert data["jsonrpc"] == "2.0"
    assert data["id"] == 7
    assert data["result"]["agent_id"] == "a1"


async def test_error_has_exactly_jsonrpc_error_and_id(client: httpx.AsyncClient) -> None:
    response = await post(client, call("agent.get", {"agent_id": "missing"}, "req-1"))

    message = assert_error(response, 404, -32001, "req-1")
    assert "missing" in message
    assert "result" not in response.json()


@pytest.mark.parametrize("rpc_id", ["abc", "", 0, 42, -7, 2**53, None])
async def test_id_is_echoed_with_its_type(client: httpx.AsyncClient, rpc_id: Any) -> None:
    response = await post(client, call("agent.list", {}, rpc_id))

    assert response.status_code == 200
    data = response.json()
    assert "id" in data
    assert data["id"] == rpc_id
    assert type(data["id"]) is type(rpc_id)


async def test_id_is_echoed_on_errors_too(client: httpx.AsyncClient) -> None:
    response = await post(client, call("no.such.method", None, "x-9"))

    assert_error(response, 404, -32601, "x-9")


async def test_params_may_be_omitted(client: httpx.AsyncClient) -> None:
    response = await post(client, call("agent.list"))

    assert response.status_code == 200
    assert response.json()["result"]["agents"] == []


# -- notifications -------------------------------------------------------------


async def test_notification_answers_204_and_runs(client: httpx.AsyncClient) -> None:
    response = await post(client, notify("agent.register", {"agent_card": agent_card("quiet")}))

    assert response.status_code == 204
    assert response.content == b""
    agent = await rpc(client, "agent.get", {"agent_id": "quiet"})
    assert agent["agent_id"] == "quiet"


async def test_204_has_no_content_length(client: httpx.AsyncClient) -> None:
    response = await post(client, notify("agent.list"))

    assert response.status_code == 204
    assert "content-length" not in response.headers


async def test_failing_notification_is_still_silent(client: httpx.AsyncClient) -> None:
    for body in (notify("no.such.method"), notify("agent.get", {"agent_id": "missing"})):
        response = await post(client, body)
        assert response.status_code == 204
        assert response.content == b""


async def test_null_id_is_a_call_not_a_notification(client: httpx.AsyncClient) -> None:
    response = await post(client, call("agent.list", {}, None))

    assert response.status_code == 200
    assert response.json()["id"] is None


# -- batches -------------------------------------------------------------------


async def test_batch_answers_a_bare_array_in_order_without_notifications(
    client: httpx.AsyncClient,
) -> None:
    batch = [
        notify("agent.register", {"agent_card": agent_card("b1", "x")}),
        call("agent.get", {"agent_id": "b1"}, "first"),
        call("agent.get", {"agent_id": "missing"}, 2),
        notify("agent.register", {"agent_card": agent_card("b2", "x")}),
        call("agent.discover", {"capabilities": ["x"]}, 3),
        call("no.such.method", None, 4),
    ]

    response = await post(client, batch)

    assert response.status_code == 200
    data = response.json()
    assert isinstance(data, list)
    assert [item["id"] for item in data] == ["first", 2, 3, 4]
    assert all(item["jsonrpc"] == "2.0" for item in data)
    assert data[0]["result"]["agent_id"] == "b1"
    assert data[1]["error"]["code"] == -32001
    # Elements run in order: the second notification is visible to the discover after it.
    assert [a["agent_id"] for a in data[2]["result"]["agents"]] == ["b1", "b2"]
    assert data[3]["error"]["code"] == -32601


async def test_batch_of_one_call_is_still_an_array(client: httpx.AsyncClient) -> None:
    response = await post(client, [call("agent.list", {}, 1)])

    assert response.status_code == 200
    data = response.json()
    assert isinstance(data, list) and len(data) == 1
    assert data[0]["id"] == 1


async def test_batch_of_only_notifications_answers_204(client: httpx.AsyncClient) -> None:
    batch = [
        notify("agent.register", {"agent_card": agent_card("n1")}),
        notify("agent.register", {"agent_card": agent_card("n2")}),
        notify("no.such.method"),
    ]

    response = await post(client, batch)

    assert response.status_code == 204
    assert response.content == b""
    listed = await rpc(client, "agent.list", {})
    assert [a["agent_id"] for a in listed["agents"]] == ["n1", "n2"]


@pytest.mark.parametrize("body", [b"[]", b"  [ ]  ", b"\n[\n]\n"])
async def test_empty_batch_is_one_invalid_request_error(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await post(client, body)

    assert_error(response, 400, -32600, None)


async def test_mixed_batch_answers_invalid_elements_with_null_id(
    client: httpx.AsyncClient,
) -> None:
    batch = [
        call("agent.list", {}, 1),
        42,
        {"foo": 1},
        {"jsonrpc": "2.0", "method": 5, "id": 9},
        {"jsonrpc": "1.0", "method": "agent.list", "id": 10},
        call("agent.get", ["positional"], 11),
        call("agent.list", {}, 2),
    ]

    response = await post(client, batch)

    assert response.status_code == 200
    data = response.json()
    assert [item["id"] for item in data] == [1, None, None, None, None, 11, 2]
    assert "result" in data[0] and "result" in data[-1]
    assert [item["error"]["code"] for item in data[1:5]] == [-32600] * 4
    assert data[5]["error"]["code"] == -32602


@pytest.fixture
async def small_limits() -> AsyncIterator[httpx.AsyncClient]:
    config = make_config(limits={"max_batch_size": 3, "max_body_bytes": 1024})
    async with gateway_client(config) as (_, client):
        yield client


async def test_batch_at_the_limit_is_answered(small_limits: httpx.AsyncClient) -> None:
    response = await post(small_limits, [call("agent.list", {}, i) for i in range(3)])

    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [0, 1, 2]


async def test_batch_over_the_limit_is_refused_whole(small_limits: httpx.AsyncClient) -> None:
    batch = [notify("agent.register", {"agent_card": agent_card(f"o{i}")}) for i in range(4)]

    response = await post(small_limits, batch)

    message = assert_error(response, 400, -32600, None)
    assert "3" in message
    assert (await rpc(small_limits, "agent.list", {}))["agents"] == []


# -- malformed bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b'{"jsonrpc": "2.0", "method": "agent.list", "id": 1',
        b'{"jsonrpc": "2.0", "method": "agent.list", "id": 1}}',
        b"{'jsonrpc': '2.0'}",
        b"[1, 2",
        b'[{"jsonrpc": "2.0", "method": "agent.list", "id": 1}, ',
        b"\xff\xfe",
    ],
)
async def test_malformed_json_is_a_parse_error(client: httpx.AsyncClient, body: bytes) -> None:
    response = await post(client, body)

    assert_error(response, 400, -32700, None)


@pytest.mark.parametrize(
    ("body", "rpc_id"),
    [
        (b'{"jsonrpc":"2.0","method":"agent.get","params":{"agent_id":"\xff"},"id":1}', 1),
        (
            b'{"jsonrpc":"2.0","method":"agent.get","params":{"agent_id":"\xed\xa0\x80"},"id":"x"}',
            "x",
        ),
        (b'[{"jsonrpc":"2.0","method":"agent.get","params":{"agent_id":"\xc3"},"id":7}]', 7),
    ],
)
async def test_invalid_utf8_inside_params_is_a_parse_error(
    client: httpx.AsyncClient, body: bytes, rpc_id: Any
) -> None:
    """The envelope parses (params stay raw bytes until the method decodes them), so the
    error is found late; it is still -32700 with the call's id, never a 500."""
    response = await post(client, body)

    if body.startswith(b"["):
        assert response.status_code == 200
        [item] = response.json()
        assert item["id"] == rpc_id and item["error"]["code"] == -32700
    else:
        assert_error(response, 400, -32700, rpc_id)


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc": 1, "method": ',
        b'{"jsonrpc": "2.0", "method": 5, "id": ',
        b'{"foo": 1, ',
        b'42 "',
        b'[{"jsonrpc": 1, "method": ',
    ],
)
async def test_truncated_json_with_a_type_error_is_a_parse_error(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await post(client, body)

    assert_error(response, 400, -32700, None)


@pytest.mark.parametrize(
    "body",
    [
        {"foo": 1},
        {"jsonrpc": "1.0", "method": "agent.list", "id": 1},
        {"method": "agent.list", "id": 1},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "method": 5, "id": 1},
        {"jsonrpc": "2.0", "method": None, "id": 1},
        {"jsonrpc": "2.0", "method": "agent.list", "id": True},
        {"jsonrpc": "2.0", "method": "agent.list", "id": {"a": 1}},
        {"jsonrpc": "2.0", "method": "agent.list", "id": [1]},
        42,
        "agent.list",
        None,
        True,
    ],
)
async def test_json_that_is_not_a_request_is_invalid_request(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await post(client, body)

    assert_error(response, 400, -32600, None)


async def test_json_nested_deeper_than_the_limit_is_refused(client: httpx.AsyncClient) -> None:
    depth = 40
    deep = call("agent.register", {"agent_card": {"name": "n", "metadata": {}}}, 1)
    body = json.dumps(deep).replace('"metadata": {}', '"metadata": ' + "[" * depth + "]" * depth)

    response = await post(client, body.encode())

    assert_error(response, 400, -32600, None)
    assert (await rpc(client, "agent.list", {}))["agents"] == []


async def test_brackets_inside_strings_do_not_count_as_depth(client: httpx.AsyncClient) -> None:
    card = agent_card("brackets", description="[{" * 100)

    response = await post(client, call("agent.register", {"agent_card": card}, 1))

    assert response.status_code == 200


REGISTER = b'"agent.register","params":{"agent_card":{"name":"dup","url":"http://x"}}'
LIST = b'{"jsonrpc":"2.0","method":"agent.list",'


@pytest.mark.parametrize(
    ("body", "name"),
    [
        # Without the check the last "method" ran: agent.register, not agent.list.
        (LIST + b'"method":' + REGISTER + b',"id":1}', "method"),
        (LIST + b'"\\u006dethod":' + REGISTER + b',"id":1}', "method"),
        (b'{"jsonrpc":"2.0","method":' + REGISTER + b',"id":1,"id":2}', "id"),
        (b'{"jsonrpc":"2.0","method":' + REGISTER + b',"params":{},"id":1}', "params"),
        (b'{"jsonrpc":"2.0","jsonrpc":"2.0","method":' + REGISTER + b',"id":1}', "jsonrpc"),
    ],
)
async def test_a_member_named_twice_is_invalid_request_and_nothing_runs(
    client: httpx.AsyncClient, body: bytes, name: str
) -> None:
    response = await post(client, body)

    message = assert_error(response, 400, -32600, None)
    assert f"duplicate key `{name}`" in message
    assert (await rpc(client, "agent.list", {}))["agents"] == []


async def test_a_batch_element_with_a_member_named_twice_is_invalid_request(
    client: httpx.AsyncClient,
) -> None:
    body = b"[" + LIST + b'"method":' + REGISTER + b',"id":1}]'

    response = await post(client, body)

    assert response.status_code == 200
    [item] = response.json()
    assert item["error"]["code"] == -32600 and "duplicate key `method`" in item["error"]["message"]


async def test_member_names_repeated_inside_params_are_not_duplicates(
    client: httpx.AsyncClient,
) -> None:
    card = agent_card("named", description='"method" "id" "params" \\u00e9')
    card["metadata"] = {"method": "x", "id": 1, "params": {"jsonrpc": "2.0"}}

    response = await post(client, call("agent.register", {"agent_card": card}, 1))

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "rpc_id", [b"1e400", b"123456789012345678901234567890", b"-9223372036854775809"]
)
async def test_an_id_number_out_of_range_is_invalid_request_with_the_shape(
    client: httpx.AsyncClient, rpc_id: bytes
) -> None:
    response = await post(client, b'{"jsonrpc":"2.0","method":"agent.list","id":' + rpc_id + b"}")

    message = assert_error(response, 400, -32600, None)
    assert '"jsonrpc": "2.0", "method": string' in message and "$.id" in message


async def test_a_64_bit_id_is_echoed() -> None:
    dispatcher = Dispatcher([])
    body = b'{"jsonrpc":"2.0","method":"nope","id":9223372036854775807}'

    _, payload = await dispatcher.handle(body, Context())

    assert decode(payload)["id"] == 2**63 - 1


# -- methods and params --------------------------------------------------------


async def test_unknown_method_is_404_method_not_found(client: httpx.AsyncClient) -> None:
    response = await post(client, call("agent.teleport", {}, 5))

    message = assert_error(response, 404, -32601, 5)
    assert "agent.teleport" in message


@pytest.mark.parametrize("params", [["a1"], [], "a1", 1, None, True])
async def test_params_not_an_object_are_invalid_params(
    client: httpx.AsyncClient, params: Any
) -> None:
    body = {"jsonrpc": "2.0", "method": "agent.get", "params": params, "id": 1}

    response = await post(client, body)

    assert_error(response, 400, -32602, 1)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"agent_card": {"name": 5}}, "agent_card.name"),
        ({"agent_card": "not a card"}, "$.agent_card"),
        ({"agent_card": {"name": "n", "capabilities": [{"version": "1"}]}}, "capabilities[0]"),
        ({"agent_card": {"name": "n", "endpoints": [{"url": 1}]}}, "endpoints[0].url"),
        ({"agent_card": {"name": ""}}, "agent_card.name"),
        ({"agent_card": {"name": "n", "agent_id": "has space"}}, "agent_card.agent_id"),
        ({"agent_card": {"name": "n"}, "override_existing": "yes"}, "override_existing"),
    ],
)
async def test_invalid_params_name_the_field(
    client: httpx.AsyncClient, params: dict[str, Any], path: str
) -> None:
    response = await post(client, call("agent.register", params, 3))

    message = assert_error(response, 400, -32602, 3)
    assert path in message


async def test_missing_required_param_is_named(client: httpx.AsyncClient) -> None:
    message = assert_error(await post(client, call("agent.get", {}, 1)), 400, -32602, 1)

    assert "agent_id" in message


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("agent.get", {"agent_id": "a1", "bogus": 1}),
        ("agent.register", {"agent_card": {"name": "n"}, "override": True}),
        ("agent.list", {"state": "active"}),
        ("agent.discover", {"capability": ["x"]}),
        ("task.create", {"task_definition": {}, "assign": True}),
        ("task.cancel", {"task_id": "t1", "why": "x"}),
    ],
)
async def test_unknown_param_field_is_invalid_params(
    client: httpx.AsyncClient, method: str, params: dict[str, Any]
) -> None:
    response = await post(client, call(method, params, 1))

    assert_error(response, 400, -32602, 1)


# -- no reflection of large inputs ----------------------------------------------


def _big() -> str:
    return "Q" + uuid.uuid4().hex * 320  # about 10 kB, unique per test


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda s: call(s), id="unknown-method"),
        pytest.param(lambda s: call("agent.get", {"agent_id": s}), id="id-too-long"),
        pytest.param(lambda s: call("agent.register", {"agent_card": {"name": s}}), id="name"),
        pytest.param(lambda s: call("agent.get", {"agent_id": 1}, method_hint=s), id="extra-key"),
        pytest.param(lambda s: call("agent.list", {"limit": s}), id="wrong-type"),
        pytest.param(lambda s: {"jsonrpc": "2.0", "method": 5, "x": s, "id": 1}, id="not-req"),
        pytest.param(
            lambda s: {"jsonrpc": s, "method": "agent.list", "id": 1},
            id="jsonrpc-version",
        ),
        pytest.param(lambda s: call("agent.discover", {"status": s}), id="enum-value"),
        pytest.param(
            lambda s: call("task.create", {"task_definition": {"priority": s}}),
            id="literal-value",
        ),
        pytest.param(lambda s: call("agent.get", {"agent_id": "a", s: 1}), id="unknown-field"),
    ],
)
async def test_errors_never_echo_large_input(client: httpx.AsyncClient, build: Any) -> None:
    big = _big()

    response = await post(client, build(big))

    assert response.status_code >= 400
    assert "error" in response.json()
    assert big[:200] not in response.text
    assert len(response.content) < 2048


# -- body size -----------------------------------------------------------------


def _padded_call(size: int) -> bytes:
    """A valid agent.list call padded with trailing whitespace to exactly ``size`` bytes."""
    body = json.dumps(call("agent.list", {}, 1)).encode()
    return body + b" " * (size - len(body))


async def test_body_at_the_limit_is_accepted(small_limits: httpx.AsyncClient) -> None:
    response = await post(small_limits, _padded_call(1024))

    assert response.status_code == 200


async def test_body_over_the_limit_is_413_json(small_limits: httpx.AsyncClient) -> None:
    response = await post(small_limits, _padded_call(1025))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert (data["jsonrpc"], data["id"]) == ("2.0", None)  # the JSON-RPC envelope
    assert data["error"]["code"] == -32600
    assert "exceeds 1024 bytes" in data["error"]["message"]


async def test_streamed_body_over_the_limit_is_413_without_content_length(
    small_limits: httpx.AsyncClient,
) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b" " * 300

    request = small_limits.build_request("POST", URL, content=chunks(), headers=JSON)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"

    response = await small_limits.send(request)

    assert response.status_code == 413
    assert "exceeds 1024 bytes" in response.json()["error"]["message"]
    assert len(sent) < 10  # stopped reading once over the limit


async def test_streamed_body_under_the_limit_is_read_whole(
    small_limits: httpx.AsyncClient,
) -> None:
    body = json.dumps(call("agent.register", {"agent_card": agent_card("streamed")})).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    response = await small_limits.post(URL, content=chunks(), headers=JSON)

    assert response.status_code == 200
    assert response.json()["result"]["agent_id"] == "streamed"


# -- the dispatcher without HTTP ---------------------------------------------------


class EchoParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    text: str
    times: int = 1


def make_dispatcher(seen: list[tuple[str, Context]], max_batch_size: int = 10) -> Dispatcher:
    async def echo(p: EchoParams, ctx: Context) -> dict[str, Any]:
        seen.append((p.text, ctx))
        return {"echo": p.text * p.times, "client": ctx.client}

    async def conflict(p: EchoParams, ctx: Context) -> None:
        raise InvalidTransition("nope", data={"why": p.text})

    async def crash(p: EchoParams, ctx: Context) -> None:
        raise RuntimeError("secret internal detail")

    return Dispatcher(
        [
            Method("echo", EchoParams, echo),
            Method("conflict", EchoParams, conflict),
            Method("crash", EchoParams, crash),
        ],
        max_batch_size=max_batch_size,
    )


def decode(payload: bytes | None) -> Any:
    assert payload is not None
    return json.loads(payload)


async def test_dispatcher_calls_the_handler_with_typed_params_and_context() -> None:
    seen: list[tuple[str, Context]] = []
    dispatcher = make_dispatcher(seen)
    body = json.dumps(call("echo", {"text": "ab", "times": 2}, 1)).encode()

    status, payload = await dispatcher.handle(body, Context(client="10.0.0.1"))

    assert status == 200
    assert decode(payload) == {
        "jsonrpc": "2.0",
        "result": {"echo": "abab", "client": "10.0.0.1"},
        "id": 1,
    }
    assert seen == [("ab", Context(client="10.0.0.1"))]


async def test_dispatcher_notification_returns_no_payload() -> None:
    seen: list[tuple[str, Context]] = []
    dispatcher = make_dispatcher(seen)

    result = await dispatcher.handle(json.dumps(notify("echo", {"text": "x"})).encode(), Context())

    assert result == (204, None)
    assert [text for text, _ in seen] == ["x"]


async def test_dispatcher_renders_error_class_status_code_and_data() -> None:
    dispatcher = make_dispatcher([])

    status, payload = await dispatcher.handle(
        json.dumps(call("conflict", {"text": "busy"}, "c")).encode(), Context()
    )

    assert status == 409
    assert decode(payload)["error"] == {"code": -32003, "message": "nope", "data": {"why": "busy"}}


async def test_dispatcher_hides_unexpected_exceptions_as_internal_error() -> None:
    dispatcher = make_dispatcher([])

    status, payload = await dispatcher.handle(
        json.dumps(call("crash", {"text": "x"}, 1)).encode(), Context()
    )

    assert status == 500
    data = decode(payload)
    assert data["error"]["code"] == -32603
    assert "secret" not in json.dumps(data)


async def test_dispatcher_batch_keeps_going_after_a_crashing_element() -> None:
    seen: list[tuple[str, Context]] = []
    dispatcher = make_dispatcher(seen)
    batch = [call("crash", {"text": "x"}, 1), call("echo", {"text": "y"}, 2)]

    status, payload = await dispatcher.handle(json.dumps(batch).encode(), Context())

    assert status == 200
    data = decode(payload)
    assert [item["id"] for item in data] == [1, 2]
    assert data[0]["error"]["code"] == -32603
    assert data[1]["result"]["echo"] == "y"


async def test_dispatcher_enforces_its_own_batch_limit() -> None:
    seen: list[tuple[str, Context]] = []
    dispatcher = make_dispatcher(seen, max_batch_size=2)
    batch = [notify("echo", {"text": str(i)}) for i in range(3)]

    status, payload = await dispatcher.handle(json.dumps(batch).encode(), Context())

    assert status == 400
    assert decode(payload)["error"]["code"] == -32600
    assert seen == []
