"""Test helpers shared by the suite: JSON-RPC calls, agent cards, real server processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.config import Config, build_config
from agentcore.events.base import Event, Subscription

REQUIRE_SERVICES = os.environ.get("AGENTCORE_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip with a visible reason, or fail when CI requires every backend."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def make_config(**sections: dict[str, Any]) -> Config:
    base: dict[str, Any] = {"database": {"url": "sqlite://:memory:"}}
    return build_config(base, sections)


class RpcError(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.code: int = error["code"]
        self.message: str = error["message"]
        self.error = error


async def rpc(
    client: httpx.AsyncClient,
    method: str,
    params: dict[str, Any] | None = None,
    rpc_id: int | str = 1,
) -> Any:
    """Call one method; return its result or raise :class:`RpcError`."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rpc_id}
    if params is not None:
        body["params"] = params
    response = await client.post("/api/v1/jsonrpc", json=body)
    data = response.json()
    assert data["jsonrpc"] == "2.0"
    assert data["id"] == rpc_id
    if "error" in data:
        raise RpcError(response.status_code, data["error"])
    assert response.status_code == 200
    return data["result"]


def agent_card(agent_id: str, *capabilities: str, **extra: Any) -> dict[str, Any]:
    """The agent card shape the seed load tests send."""
    return {
        "agent_id": agent_id,
        "name": extra.pop("name", agent_id),
        "version": "1.0.0",
        "capabilities": list(capabilities),
        "endpoints": [
            {"url": f"http://127.0.0.1:9/{agent_id}", "type": "http", "protocols": ["jsonrpc-2.0"]}
        ],
        **extra,
    }


# -- real server processes ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A gateway started with ``agentcore serve`` on a loopback port."""

    args: list[str]
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agentcore.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/api/v1/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not become ready:\n{self.log.read_text()}")

    def signal(self, sig: int) -> int:
        """Send ``sig`` to the whole process group and wait; returns the exit code."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)


# -- in-process gateways with a custom configuration --------------------------


@contextlib.asynccontextmanager
async def gateway_client(
    config: Config, clock: ManualClock | None = None
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A started gateway for ``config`` and an HTTP client over ASGI (like the fixtures)."""
    app = create_app(config, clock=clock or ManualClock())
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield app, c
    finally:
        await app.shutdown()


async def collect(subscription: Subscription) -> list[Event]:
    """Close ``subscription`` and return the events it still holds, oldest first."""
    subscription.close()
    return [event async for event in subscription]
