"""Raw HTTP throughput with wrk, for targets above what Locust can drive.

One Locust process saturates its core far below the seed's target (in
docs/performance.md, "Load-test scenarios", the load generator is the http
run's bottleneck), and wrk drives the same load for a fraction of the CPU.
So the ``http_rps`` figure (seed: 60,000+) comes from wrk when it is
installed: one thread, 64 connections, ``POST /api/v1/jsonrpc`` with an
``agent.ping`` of an agent registered first. A Lua ``response`` callback
counts every answer that is not a 200 carrying ``"result"`` (a JSON-RPC
error is not throughput), and a run with any is reported as failed.
benchmarks/http_bench.py is the fuller benchmark (against nginx and a
FastAPI reference).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
bad = 0
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"result"', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("BAD %d\\n", total))
  for _, p in ipairs({{50, 95, 99}}) do
    io.write(string.format("P%d %f\\n", p, latency:percentile(p) / 1000.0))
  end
end
"""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    bad: int
    socket_errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    command: str

    @property
    def valid(self) -> bool:
        return self.bad == 0 and self.socket_errors == 0 and self.requests > 0


def available() -> bool:
    return shutil.which("wrk") is not None


def _register(base_url: str, agent_id: str, headers: Mapping[str, str]) -> None:
    card = {
        "agent_id": agent_id,
        "name": agent_id,
        "version": "1.0.0",
        "capabilities": ["benchmark"],
        "endpoints": [{"url": "http://127.0.0.1:9/", "type": "http", "protocols": ["jsonrpc-2.0"]}],
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "agent.register", "params": {"agent_card": card}}
    request = urllib.request.Request(
        f"{base_url}/api/v1/jsonrpc",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    if "result" not in answer:
        raise RuntimeError(f"agent.register for wrk failed: {answer}")


def run(
    base_url: str,
    duration_s: float,
    headers: Mapping[str, str] | None = None,
    connections: int = 64,
) -> WrkResult:
    """Drive ``agent.ping`` for ``duration_s`` seconds; raises ``RuntimeError`` when wrk fails."""
    headers = dict(headers or {})
    agent_id = "loadtest-wrk"
    _register(base_url, agent_id, headers)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "agent.ping", "params": {"agent_id": agent_id}}
    )
    auth = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ping.lua"
        script.write_text(_LUA.format(body=json.dumps(body), auth=auth))
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "-s",
            str(script),
            f"{base_url}/api/v1/jsonrpc",
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return parse(done.stdout, " ".join(command[:5]) + " ... " + command[-1])


def parse(output: str, command: str = "wrk") -> WrkResult:
    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else 0.0

    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        requests=int(number(r"(\d+) requests in")),
        bad=int(number(r"BAD (\d+)")),  # non-200 included
        socket_errors=sum(int(g) for g in socket.groups()) if socket else 0,
        p50_ms=number(r"P50 ([\d.]+)"),
        p95_ms=number(r"P95 ([\d.]+)"),
        p99_ms=number(r"P99 ([\d.]+)"),
        command=command,
    )
