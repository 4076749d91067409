"""``/openapi.json`` and the JSON-RPC method listing, generated from the types that validate.

No schema is written by hand: every schema below comes from
``msgspec.json.schema_components`` over the same structs the dispatcher
decodes with, so documentation cannot drift from behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from agentcore import __version__
from agentcore.jsonrpc import Failure, Method, Request, Success
from agentcore.routing import Route

REF = "#/components/schemas/{name}"


def _components(methods: list[Method[Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    types: list[Any] = [Request, Success, Failure]
    for m in methods:
        types.extend([m.params, m.result])
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    return list(schemas), components


def method_listing(methods: list[Method[Any]]) -> dict[str, Any]:
    schemas, components = _components(methods)
    listed = []
    for i, m in enumerate(methods):
        listed.append(
            {
                "name": m.name,
                "description": m.description,
                "params": schemas[3 + 2 * i],
                "result": schemas[4 + 2 * i],
            }
        )
    return {"jsonrpc": "2.0", "methods": listed, "components": {"schemas": components}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "type": {"type": "string"},
                "data": {},
            },
            "required": ["code", "message", "type"],
        }
    },
    "required": ["error"],
}


def _rest_paths(routes: list[Route], components: dict[str, Any]) -> dict[str, Any]:
    """Path items of the documented REST routes, schemas from their msgspec types."""
    documented = [(r, m, d) for r in routes for m, d in r.docs.items()]
    types: list[Any] = []
    for _, _, doc in documented:
        types.extend(t for t in (doc.body, doc.query, doc.response) if t is not None)
    schemas, extra = msgspec.json.schema_components(types, ref_template=REF)
    components.update(extra)
    by_type = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, Any] = {}
    for route, method, doc in documented:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        if doc.query is not None:
            query = extra[doc.query.__name__]
            params.extend(
                {
                    "name": name,
                    "in": "query",
                    "required": name in query.get("required", []),
                    "schema": schema,
                }
                for name, schema in query.get("properties", {}).items()
            )
        operation: dict[str, Any] = {"summary": doc.summary, "tags": list(doc.tags)}
        if params:
            operation["parameters"] = params
        if doc.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": by_type[id(doc.body)]}},
            }
        ok: dict[str, Any] = {"description": doc.summary}
        if doc.response is not None:
            ok["content"] = {"application/json": {"schema": by_type[id(doc.response)]}}
        responses: dict[str, Any] = {str(doc.status): ok}
        for status, description in {
            400: "invalid input (the message names the field)",
            **doc.errors,
        }.items():
            responses[str(status)] = _json({"$ref": REF.format(name="Error")}, description)
        operation["responses"] = responses
        paths.setdefault(route.path, {})[method.lower()] = operation
    return paths


def openapi_document(methods: list[Method[Any]], routes: Sequence[Route] = ()) -> dict[str, Any]:
    schemas, components = _components(methods)
    request, success, failure = schemas[:3]
    rpc_body = {"oneOf": [request, {"type": "array", "items": request, "minItems": 1}]}
    rpc_reply = {
        "oneOf": [success, failure, {"type": "array", "items": {"oneOf": [success, failure]}}]
    }
    simple = {"type": "object"}
    paths: dict[str, Any] = {
        "/api/v1/health": {
            "get": {
                "summary": "Health with dependency status",
                "responses": {"200": _json(simple, "healthy or degraded")},
            }
        },
        "/api/v1/health/ready": {
            "get": {
                "summary": "Readiness",
                "responses": {
                    "200": _json(simple, "ready"),
                    "503": _json(simple, "a dependency is down"),
                },
            }
        },
        "/api/v1/health/live": {
            "get": {"summary": "Liveness", "responses": {"200": _json(simple, "alive")}}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/v1/jsonrpc": {
            "post": {
                "summary": "JSON-RPC 2.0 endpoint (single call or batch)",
                "description": "Methods: "
                + ", ".join(m.name for m in methods)
                + ". See /api/v1/jsonrpc/methods for each method's params and result.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": rpc_body}},
                },
                "responses": {
                    "200": _json(rpc_reply, "result, error or batch of them"),
                    "204": {"description": "notification(s) only: no body"},
                    "400": _json(failure, "parse error, invalid request or invalid params"),
                    "404": _json(failure, "unknown method, agent or task"),
                    "409": _json(failure, "invalid state transition or conflict"),
                    "413": _json(failure, "body too large"),
                    "429": _json(failure, "over the client's rate limit; see Retry-After"),
                },
            }
        },
        "/api/v1/jsonrpc/methods": {
            "get": {
                "summary": "JSON-RPC method listing",
                "responses": {"200": _json(simple, "methods")},
            }
        },
        "/.well-known/agent-card.json": {
            "get": {
                "summary": "The gateway's own agent card",
                "responses": {"200": _json(simple, "card")},
            }
        },
        "/.well-known/agent.json": {
            "get": {
                "summary": "Older name of the agent card",
                "responses": {"200": _json(simple, "card")},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json(simple, "OpenAPI 3.1")}}
        },
    }
    components["Error"] = ERROR
    paths.update(_rest_paths(list(routes), components))
    return {
        "openapi": "3.1.0",
        "info": {"title": "AgentCore Gateway", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def agent_card(methods: list[Method[Any]], base_url: str) -> dict[str, Any]:
    """The gateway's own A2A agent card."""
    return {
        "name": "AgentCore Gateway",
        "description": "Front door of a multi-agent system: agent registry, discovery "
        "and task routing over JSON-RPC 2.0.",
        "version": __version__,
        "protocolVersion": "0.3.0",
        "url": f"{base_url}/api/v1/jsonrpc",
        "preferredTransport": "JSONRPC",
        "capabilities": {"streaming": False, "pushNotifications": False},
        "defaultInputModes": ["application/json"],
        "defaultOutputModes": ["application/json"],
        "skills": [
            {
                "id": m.name,
                "name": m.name,
                "description": m.description,
                "tags": [m.name.split(".")[0]],
            }
            for m in methods
        ],
        "endpoints": [
            {"url": f"{base_url}/api/v1/jsonrpc", "type": "http", "protocols": ["jsonrpc-2.0"]}
        ],
    }
