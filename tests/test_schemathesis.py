"""Schema-driven fuzzing: schemathesis runs every operation of ``/openapi.json``.

The schema is loaded from the running app (in process, over ASGI), so what is
fuzzed is exactly what the gateway publishes. Each operation gets valid and
invalid inputs (schemathesis' positive and negative modes) and every default
check: no 5xx, status codes, content types and bodies as documented, invalid
input refused with a 4xx.

One exception, JSON-RPC's own rule: a batch whose elements are invalid
requests is answered 200 with an array of per-element errors, and an invalid
notification gets 204 and no body (the spec says so), so "invalid input gets a
4xx" is not checked for those bodies; the reply is still checked against the
documented one.

``/openapi.json`` types JSON-RPC ``params`` as any JSON, since one endpoint
serves every method; ``/api/v1/jsonrpc/methods`` publishes each method's
params schema. ``test_jsonrpc_method_conforms_to_its_params_schema`` joins
the two, so schemathesis also generates valid and invalid params per method.

The operations are listed here on purpose: a route added to the app but not
to the schema (or the other way round) fails ``test_schema_covers_every_route``.
(``schemathesis.pytest.from_fixture`` would generate the list, but its lazy
loader breaks on pytest 9, which dropped ``Node._nodeid``.) schemathesis never
fuzzes the operation that serves the schema itself, ``GET /openapi.json``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckFunction, GenerationMode
from schemathesis.core.result import Err
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from agentcore.app import Gateway, create_app
from tests.support import make_config

JSONRPC = "/api/v1/jsonrpc"
METHODS = [
    "agent.register",
    "agent.get",
    "agent.list",
    "agent.discover",
    "agent.ping",
    "agent.unregister",
    "task.create",
    "task.get",
    "task.query",
    "task.start",
    "task.update",
    "task.complete",
    "task.fail",
    "task.cancel",
]
OPERATIONS = [
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/health/ready"),
    ("GET", "/api/v1/health/live"),
    ("POST", "/api/v1/jsonrpc"),
    ("GET", "/api/v1/jsonrpc/methods"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/agent-card.json"),
    ("GET", "/.well-known/agent.json"),
]
#: The integration layer's routes. Fuzzed for "never a 5xx" only: their schemas
#: cannot say everything the handlers refuse on purpose (a webhook URL that
#: resolves to a private address gets 422 unsafe_url; storage keys refuse
#: control characters), so schemathesis's "valid input rejected" check would
#: report those deliberate refusals.
INTEGRATION = [
    ("POST", "/api/v1/integration/events/publish"),
    ("POST", "/api/v1/integration/webhooks"),
    ("GET", "/api/v1/integration/webhooks"),
    ("GET", "/api/v1/integration/webhooks/{webhook_id}"),
    ("PATCH", "/api/v1/integration/webhooks/{webhook_id}"),
    ("DELETE", "/api/v1/integration/webhooks/{webhook_id}"),
    ("POST", "/api/v1/integration/webhooks/{webhook_id}/rotate-secret"),
    ("GET", "/api/v1/integration/webhooks/{webhook_id}/stats"),
    ("GET", "/api/v1/integration/webhooks/{webhook_id}/deliveries"),
    ("POST", "/api/v1/integration/webhooks/{webhook_id}/replay"),
    ("POST", "/api/v1/integration/webhooks/{webhook_id}/test"),
    ("POST", "/api/v1/integration/storage/upload"),
    ("GET", "/api/v1/integration/storage"),
    ("GET", "/api/v1/integration/storage/{key}/metadata"),
    ("GET", "/api/v1/integration/storage/{key}"),
    ("PUT", "/api/v1/integration/storage/{key}"),
    ("DELETE", "/api/v1/integration/storage/{key}"),
    ("POST", "/api/v1/integration/llm/complete"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/models"),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    data = tmp_path_factory.mktemp("schemathesis")  # storage uploads land here
    return create_app(make_config(database={"url": "sqlite://:memory:", "data_dir": str(data)}))


@pytest.fixture(scope="module")
def api_schema(app: Gateway) -> Iterator[OpenApiSchema]:
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    # schemathesis runs the app's lifespan in its own event-loop thread; stop it with the module.
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def method_schemas(app: Gateway, api_schema: OpenApiSchema) -> dict[str, OpenApiSchema]:
    listing: dict[str, Any] = api_schema["/api/v1/jsonrpc/methods"]["GET"].Case().call().json()
    return {m["name"]: method_schema(app, api_schema, m) for m in listing["methods"]}


def method_schema(app: Gateway, api_schema: OpenApiSchema, method: dict[str, Any]) -> OpenApiSchema:
    """The published document with the JSON-RPC body narrowed to calls of one method.

    ``/openapi.json`` types ``params`` as any JSON (one endpoint serves every
    method); ``/api/v1/jsonrpc/methods`` publishes each method's params
    schema, over the same components. Joining the two lets schemathesis
    generate valid and invalid params per method.
    """
    document = copy.deepcopy(api_schema.raw_schema)
    request = document["components"]["schemas"]["Request"]
    name = method["name"]
    params = method["params"]
    params_type = document["components"]["schemas"][params["$ref"].rsplit("/", 1)[1]]
    call = {
        **request,
        "properties": {**request["properties"], "method": {"const": name}, "params": params},
        # Omitted params are {}: required only where the params type has required fields.
        "required": [*request["required"], *(["params"] if params_type["required"] else [])],
    }
    body = {"oneOf": [call, {"type": "array", "items": call, "minItems": 1, "maxItems": 5}]}
    post = document["paths"][JSONRPC]["post"]
    post["requestBody"]["content"]["application/json"]["schema"] = body
    document["paths"] = {JSONRPC: {"post": post}}
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app
    return schema


def test_schema_is_valid_openapi(api_schema: OpenApiSchema) -> None:
    api_schema.validate()
    assert api_schema.raw_schema["openapi"] == "3.1.0"


def test_schema_covers_every_route(app: Gateway, api_schema: OpenApiSchema) -> None:
    published = sorted((op.method.upper(), op.path) for op in operations(api_schema))
    routed = sorted(
        (m, re.sub(r"\{(\w+):path\}", r"{\1}", r.path))
        for r in app.router.routes()
        for m in r.handlers
    )

    assert published == sorted([*OPERATIONS, *INTEGRATION])
    # The streams (WebSocket, SSE) are served before the router: docs/realtime.md.
    assert routed == sorted([*OPERATIONS, *INTEGRATION, ("GET", "/openapi.json")])
    assert "/openapi.json" in api_schema.raw_schema["paths"]


def integral_floats_as_ints(value: Any) -> Any:
    """``5.0`` as ``5``: the same JSON number, and JSON Schema counts it an integer.

    msgspec decodes strictly and refuses ``5.0`` where an ``int`` is declared
    (-32602 naming the field); that strictness is kept, so the generated
    bodies are normalised instead of every positive case around it failing.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    return value


def json_rpc_exemptions(case: Case[Any]) -> list[CheckFunction] | None:
    """Checks JSON-RPC itself rules out for this case (see the module docstring).

    A batch answers 200 with per-element errors and a notification (no ``id``)
    answers 204 even when it is invalid: the spec forbids answering either with
    a single error, so "invalid input gets a 4xx" holds only for single calls.
    A page cursor (``after``) is an opaque string: every string fits its schema,
    but only one a listing issued is accepted (400 otherwise).
    """
    body = case.body
    if isinstance(body, list) or (isinstance(body, dict) and "id" not in body):
        return [negative_data_rejection]
    params = body.get("params") if isinstance(body, dict) else None
    if isinstance(params, dict) and "after" in params:
        return [positive_data_acceptance]
    return None


def operations(api_schema: OpenApiSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    """Every operation; one schemathesis cannot parse fails the test with its error."""
    found = []
    for result in api_schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"schemathesis cannot use an operation: {result.err()}")
        found.append(result.ok())
    return found


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_operation_conforms_to_the_schema(
    api_schema: OpenApiSchema, method: str, path: str, data: st.DataObject
) -> None:
    operation = api_schema[path][method]
    case = data.draw(
        operation.as_strategy(GenerationMode.POSITIVE)
        | operation.as_strategy(GenerationMode.NEGATIVE)
    )

    case.body = integral_floats_as_ints(case.body)
    case.call_and_validate(excluded_checks=json_rpc_exemptions(case))


@pytest.mark.parametrize(("method", "path"), INTEGRATION)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_integration_operation_never_answers_5xx(
    api_schema: OpenApiSchema, method: str, path: str, data: st.DataObject
) -> None:
    operation = api_schema[path][method]
    case = data.draw(
        operation.as_strategy(GenerationMode.POSITIVE)
        | operation.as_strategy(GenerationMode.NEGATIVE)
    )

    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])


@pytest.mark.parametrize("name", METHODS)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
def test_jsonrpc_method_conforms_to_its_params_schema(
    method_schemas: dict[str, OpenApiSchema], name: str, data: st.DataObject
) -> None:
    operation = method_schemas[name][JSONRPC]["POST"]
    case = data.draw(
        operation.as_strategy(GenerationMode.POSITIVE)
        | operation.as_strategy(GenerationMode.NEGATIVE)
    )

    case.body = integral_floats_as_ints(case.body)
    case.call_and_validate(excluded_checks=json_rpc_exemptions(case))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"jsonrpc": "2.0", "method": "agent.list", "id": 1, "x": "a" * 1_100_000}, id="413"
        ),
        pytest.param({"jsonrpc": "2.0", "method": "agent.list", "id": 1, "params": [1]}, id="400"),
        pytest.param({"jsonrpc": "2.0", "method": "no.such", "id": 1}, id="404"),
    ],
)
def test_jsonrpc_error_replies_are_documented(api_schema: OpenApiSchema, body: Any) -> None:
    case = api_schema[JSONRPC]["POST"].Case(body=body, media_type="application/json")

    case.call_and_validate()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        # Python's `$` also matches before a final newline; the schema's (ECMA 262) does not.
        ("agent.register", {"agent_card": {"name": "n", "agent_id": "trailing-newline\n"}}),
        ("task.create", {"task_definition": {"title": "t", "task_id": "trailing-newline\n"}}),
        ("agent.list", {"offset": 2**63}),
        # PostgreSQL cannot store U+0000 in the TEXT columns names and labels go to.
        ("agent.register", {"agent_card": {"name": "nul\u0000"}}),
        ("agent.discover", {"tags": ["\u0000"]}),
    ],
)
def test_params_the_schema_refuses_are_refused(
    method_schemas: dict[str, OpenApiSchema], name: str, params: dict[str, Any]
) -> None:
    schema = method_schemas[name]
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": name, "params": params, "id": 1}
    post = schema.raw_schema["paths"][JSONRPC]["post"]
    body_schema = post["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.validator_for(
        {**body_schema, "components": schema.raw_schema["components"]}
    )
    assert not validator.is_valid(body)

    response = schema[JSONRPC]["POST"].Case(body=body, media_type="application/json").call()

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == -32602
