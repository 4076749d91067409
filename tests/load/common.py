"""What every scenario shares: JSON-RPC calls whose *body* decides success.

A 200 carrying a JSON-RPC ``error`` is a failure, as is any unexpected status
or a body that is not the expected JSON: the earlier suite counted those as
successes and so measured nothing.
"""

from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

from locust import FastHttpUser

JSONRPC = "/api/v1/jsonrpc"
_ids = itertools.count(1)


def api_key_headers() -> dict[str, str]:
    """``AGENTCORE_LOADTEST_API_KEY`` (when the gateway runs with auth on)."""
    key = os.environ.get("AGENTCORE_LOADTEST_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def agent_card(agent_id: str) -> dict[str, Any]:
    """The seed load tests' card shape."""
    return {
        "agent_id": agent_id,
        "name": f"load-{agent_id[-8:]}",
        "version": "1.0.0",
        "capabilities": ["text-generation", "summarization"],
        "endpoints": [
            {"url": f"http://127.0.0.1:9/{agent_id}", "type": "http", "protocols": ["jsonrpc-2.0"]}
        ],
    }


class GatewayUser(FastHttpUser):
    """A user that speaks JSON-RPC and checks every answer."""

    abstract = True
    agent_id: str = ""

    def rpc(self, method: str, params: dict[str, Any], name: str | None = None) -> Any:
        rpc_id = next(_ids)
        body = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}
        with self.client.post(
            JSONRPC, json=body, name=name or method, headers=api_key_headers(),
            catch_response=True,
        ) as response:
            try:
                data = response.json()
            except Exception:
                response.failure(f"{response.status_code}: body is not JSON")
                return None
            if response.status_code != 200 or not isinstance(data, dict):
                response.failure(f"HTTP {response.status_code}: {str(data)[:200]}")
                return None
            if "error" in data:
                response.failure(f"JSON-RPC error {data['error'].get('code')}: "
                                 f"{data['error'].get('message', '')[:200]}")
                return None
            if data.get("id") != rpc_id or "result" not in data:
                response.failure("JSON-RPC answer without result or with the wrong id")
                return None
            response.success()
            return data["result"]

    def register_own_agent(self) -> None:
        self.agent_id = f"load-{uuid.uuid4().hex}"
        result = self.rpc("agent.register", {"agent_card": agent_card(self.agent_id)})
        if result is None or result.get("agent_id") != self.agent_id:
            raise RuntimeError("could not register this user's agent")

    def health(self) -> None:
        with self.client.get("/api/v1/health", name="health", catch_response=True) as response:
            try:
                ok = response.status_code == 200 and response.json()["status"] == "healthy"
            except Exception:
                ok = False
            if ok:
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: not healthy")
