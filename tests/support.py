"""Test helpers shared by the suite: JSON-RPC calls, agent cards, stored agents and tasks,
real server processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcore.app import Gateway, create_app
from agentcore.clock import ManualClock
from agentcore.config import Config, build_config
from agentcore.events.base import Event, Subscription
from agentcore.http import Admission
from agentcore.models import Agent, AgentCard, AgentStatus, Capability, Task, TaskStatus
from agentcore.registry.repository import AgentTable
from agentcore.repositories import MemoryRepositories, Repositories, SqlRepositories
from agentcore.types import Message, Scope

REQUIRE_SERVICES = os.environ.get("AGENTCORE_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip with a visible reason, or fail when CI requires every backend."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


#: The host names in-process clients use (httpx; schemathesis: testserver), which a
#: gateway with authentication off answers only when listed (DNS rebinding).
TEST_HOSTS = ["gateway", "gw", "testserver"]


def make_config(**sections: dict[str, Any]) -> Config:
    base: dict[str, Any] = {
        "database": {"url": "sqlite://:memory:"},
        "server": {"allowed_hosts": TEST_HOSTS},
    }
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


# -- agents and tasks as the repositories store them ---------------------------


def make_agent(
    agent_id: str,
    *,
    name: str | None = None,
    capabilities: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    status: AgentStatus = AgentStatus.ACTIVE,
    tenant: str = "default",
    last_seen: float = 100.0,
) -> Agent:
    """An agent with a card that exercises the JSON columns (a capability given as a
    string and others as objects, nested metadata)."""
    card = AgentCard(
        name=name or agent_id,
        agent_id=agent_id,
        capabilities=[*capabilities[:1], *(Capability(name=c) for c in capabilities[1:])],
        tags=list(tags),
        metadata={"nested": {"list": [1, 2.5, None]}},
    )
    return Agent(
        agent_id=agent_id,
        name=name or agent_id,
        version="1.0.0",
        status=status,
        capabilities=list(capabilities),
        tags=list(tags),
        card=card,
        tenant=tenant,
        registered_at=10.0,
        updated_at=20.0,
        last_seen=last_seen,
    )


def make_task(
    task_id: str,
    *,
    status: TaskStatus = TaskStatus.PENDING,
    priority: int = 5,
    created_at: float = 1000.0,
    agent_id: str | None = None,
    deadline: float | None = None,
    type: str = "generic",
    tenant: str = "default",
) -> Task:
    """A task whose parameters and input exercise the JSON body."""
    return Task(
        task_id=task_id,
        type=type,
        title=f"title {task_id}",
        description="",
        required_capabilities=["x"],
        parameters={"k": [1, "two", {"three": 3.0}]},
        input={"text": "hi"},
        priority=priority,
        status=status,
        agent_id=agent_id,
        deadline=deadline,
        tenant=tenant,
        created_at=created_at,
        updated_at=created_at,
    )


def ids(items: list[Agent] | list[Task]) -> list[str]:
    """The ids of agents or tasks, in order."""
    return [i.agent_id if isinstance(i, Agent) else i.task_id for i in items]


async def stored_loads(repos: Repositories, tenant: str = "default") -> dict[str, int]:
    """Each registered agent's (of ``tenant``) stored count of assigned and running tasks:
    the counter ``agents.least_loaded`` orders by (in SQL the ``active_tasks`` column,
    checked to agree with its copy on the capability rows; in memory the agents' table's
    loads), not a count of the tasks."""
    if isinstance(repos, SqlRepositories):
        rows = await repos.database.fetch(
            "SELECT id, active_tasks FROM agents WHERE tenant = $1 ORDER BY id", tenant
        )
        loads = {str(row[0]): int(row[1]) for row in rows}
        # The capability rows carry a copy that the pick by capability orders by.
        labels = await repos.database.fetch(
            "SELECT agent_id, active_tasks FROM agent_capabilities WHERE tenant = $1", tenant
        )
        assert {(str(r[0]), int(r[1])) for r in labels} <= set(loads.items()), labels
        return loads
    assert isinstance(repos, MemoryRepositories)
    table = repos.database.table(AgentTable)
    return {
        agent_id: table.loads.get((owner, agent_id), 0)
        for owner, agent_id in sorted(table.agents)
        if owner == tenant
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


async def refused_status(admission: Admission, scope: Scope) -> int | None:
    """The HTTP status a check's ``admit`` refuses ``scope`` with; None when it admits."""
    refused = await admission if isinstance(admission, Coroutine) else admission
    if refused is None:
        return None
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await refused(scope, receive, send)
    status: int = sent[0]["status"]
    return status
