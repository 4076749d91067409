"""What every scenario shares: JSON-RPC calls whose *body* decides success.

A 200 carrying a JSON-RPC ``error`` is a failure, as is any unexpected status
or a body that is not the expected JSON: the earlier suite counted those as
successes and so measured nothing.
"""

from __future__ import annotations

import itertools
import math
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
            JSONRPC,
            json=body,
            name=name or method,
            headers=api_key_headers(),
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
                response.failure(
                    f"JSON-RPC error {data['error'].get('code')}: "
                    f"{data['error'].get('message', '')[:200]}"
                )
                return None
            if data.get("id") != rpc_id or "result" not in data:
                response.failure("JSON-RPC answer without result or with the wrong id")
                return None
            response.success()
            return data["result"]

    def register_own_agent(self) -> None:
        """Register this user's agent; a 429 (a spike in progress) waits Retry-After and retries."""
        import gevent

        self.agent_id = f"load-{uuid.uuid4().hex}"
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "agent.register",
            "params": {"agent_card": agent_card(self.agent_id)},
        }
        for _ in range(60):
            with self.client.post(
                JSONRPC,
                json=body,
                name="agent.register",
                headers=api_key_headers(),
                catch_response=True,
            ) as response:
                if response.status_code == 429:
                    response.success()  # not an error: the limit is doing its job
                    wait = float(response.headers.get("Retry-After", "1"))
                elif (
                    response.status_code == 200
                    and (response.json() or {}).get("result", {}).get("agent_id") == self.agent_id
                ):
                    response.success()
                    return
                else:
                    response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                    raise RuntimeError("could not register this user's agent")
            gevent.sleep(wait)
        raise RuntimeError("could not register this user's agent: rate limited for 60 tries")

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


class Recorder:
    """Every request's (start time, latency ms, status), for exact percentiles and phases.

    Locust's own percentiles come from rounded buckets; these come from the
    full distribution. Bounded: at most ``limit`` samples are kept.
    """

    def __init__(self, limit: int = 5_000_000) -> None:
        self.samples: list[tuple[float, float, int]] = []
        self.limit = limit

    def add(self, started: float, latency_ms: float, status: int) -> None:
        if len(self.samples) < self.limit:
            self.samples.append((started, latency_ms, status))


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def server_rss_bytes(host: str) -> float | None:
    """The gateway's resident memory, from its /metrics (process collector)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{host}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return None


def write_summary(name: str, summary: dict[str, Any]) -> None:
    """Print the scenario's own verdict data; also to $AGENTCORE_LOADTEST_OUT/<name>.json."""
    import json

    print(f"{name}: " + json.dumps(summary, indent=2))
    out = os.environ.get("AGENTCORE_LOADTEST_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{name}.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
