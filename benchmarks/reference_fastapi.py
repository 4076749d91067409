"""A minimal FastAPI + pydantic gateway: the reference the benchmark compares against.

It is what most Python agent gateways look like: FastAPI routes, a pydantic
JSON-RPC request model validated from the body, a pydantic agent card, agents in
an in-memory dict, the response built as a dict and serialised by FastAPI. It
implements only what ``benchmarks/http_bench.py`` drives:

* ``GET /api/v1/health`` - a small JSON document;
* ``POST /api/v1/jsonrpc`` - ``agent.register`` and ``agent.ping``.

Run it the way the benchmark does (uvicorn, uvloop + httptools, one worker,
access log off)::

    python benchmarks/reference_fastapi.py --host 127.0.0.1 --port 8002
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError

#: JSON-RPC 2.0 error codes used here.
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
AGENT_NOT_FOUND = -32001


class JsonRpcRequest(BaseModel):
    jsonrpc: Literal["2.0"]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    id: int | str | None = None


class Endpoint(BaseModel):
    url: str
    type: str = "http"
    protocols: list[str] = Field(default_factory=list)


class AgentCard(BaseModel):
    agent_id: str
    name: str
    version: str
    capabilities: list[str] = Field(default_factory=list)
    endpoints: list[Endpoint] = Field(default_factory=list)


class Agent(BaseModel):
    card: AgentCard
    status: str = "active"
    last_seen: datetime


class PingParams(BaseModel):
    agent_id: str


class RegisterParams(BaseModel):
    agent_card: AgentCard


def _error(request_id: int | str | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


def create_app() -> FastAPI:
    """Build the app; the agent dict lives in the app, not in the module."""
    app = FastAPI(title="reference gateway (FastAPI + pydantic)")
    agents: dict[str, Agent] = {}
    started = time.monotonic()

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "uptime_s": round(time.monotonic() - started, 3),
            "agents": len(agents),
        }

    @app.post("/api/v1/jsonrpc")
    async def jsonrpc(rpc: JsonRpcRequest) -> dict[str, Any]:
        try:
            if rpc.method == "agent.register":
                card = RegisterParams.model_validate(rpc.params).agent_card
                agents[card.agent_id] = Agent(card=card, last_seen=datetime.now(UTC))
                result: dict[str, Any] = {"agent_id": card.agent_id, "status": "active"}
            elif rpc.method == "agent.ping":
                agent_id = PingParams.model_validate(rpc.params).agent_id
                agent = agents.get(agent_id)
                if agent is None:
                    return _error(rpc.id, AGENT_NOT_FOUND, f"agent {agent_id!r} not found")
                agent.last_seen = datetime.now(UTC)
                agent.status = "active"
                result = {
                    "agent_id": agent_id,
                    "status": agent.status,
                    "last_seen": agent.last_seen.isoformat(),
                }
            else:
                return _error(rpc.id, METHOD_NOT_FOUND, f"method {rpc.method!r} not found")
        except ValidationError as exc:
            return _error(rpc.id, INVALID_PARAMS, str(exc))
        return {"jsonrpc": "2.0", "result": result, "id": rpc.id}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
