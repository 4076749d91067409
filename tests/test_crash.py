"""SIGKILL under load, restart, and nothing acknowledged is lost (issue 13).

A real gateway (``agentcore serve``, SQLite under a temporary data dir, one
uvicorn process) serves 8 concurrent clients that create, start and complete
tasks; after a random short delay the server process is killed with SIGKILL
mid-load and restarted on the same data dir, for ``ROUNDS`` rounds. Each
round's clients first carry on with the tasks the previous round left
unfinished. Then, with the server running again:

- every acknowledged task exists, in a state at least as advanced as the
  most advanced one acknowledged for it;
- every task of the tasks table has exactly the events its state implies
  (``task.created``, then ``task.assigned``, ``task.started``,
  ``task.completed`` as far as it got), in that order, and no ``task.*``
  event names a task the table lacks; event ids are gap-free;
- a webhook subscribed to ``task.*`` received every one of those events,
  signed (Standard Webhooks), under one ``webhook-id`` per event.

``AGENTCORE_CRASH_ROUNDS`` and ``AGENTCORE_CRASH_SEED`` override the number of
rounds and the seed of the kill delays (printed, to replay a failure).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, agent_card
from tests.webhooks.conftest import Received, Receiver

pytestmark = pytest.mark.server

ROUNDS = int(os.environ.get("AGENTCORE_CRASH_ROUNDS", "5"))
SEED = int(os.environ.get("AGENTCORE_CRASH_SEED", str(random.randrange(1 << 30))))
CLIENTS = 8
AGENTS = 3
#: Seconds of load before the kill, drawn uniformly.
KILL_AFTER_S = (0.3, 1.2)
#: Bounds: tasks one client creates in a round, and how long a round may last.
TASKS_PER_CLIENT = 2_000
ROUND_TIMEOUT_S = 20.0
#: A delivery in flight at a kill waits for its lease (2 * timeout_s + 5 s) first.
DELIVERY_TIMEOUT_S = 40.0
#: Longest a write may take under the test's load (far longer means a stall).
PROBE_TIMEOUT_S = 5.0

ENV = {
    "AGENTCORE_AUTH__MODE": "off",
    "AGENTCORE_RATE_LIMIT__ENABLED": "false",
    # Loopback receivers are refused by the SSRF policy unless allowed.
    "AGENTCORE_WEBHOOKS__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    "AGENTCORE_WEBHOOKS__RETRY_SCHEDULE": "[0, 0.2, 0.4]",
    "AGENTCORE_WEBHOOKS__POLL_INTERVAL_S": "0.05",
    "AGENTCORE_WEBHOOKS__TIMEOUT_S": "1",
    "AGENTCORE_WEBHOOKS__PER_ENDPOINT_CONCURRENCY": "16",
    # No agent goes inactive (and releases its tasks) during the test.
    "AGENTCORE_REGISTRY__HEARTBEAT_TTL_S": "3600",
}

#: The tasks' definition (without an id): the agents have the capability.
WORK = {"type": "crash", "required_capabilities": ["work"]}
#: Task states in the order the clients drive them.
RANK = {"assigned": 1, "running": 2, "completed": 3}
#: The events each state implies, in order.
IMPLIED = {
    "pending": ["task.created"],
    "assigned": ["task.created", "task.assigned"],
    "running": ["task.created", "task.assigned", "task.started"],
    "completed": ["task.created", "task.assigned", "task.started", "task.completed"],
}
#: The task's state each event reports (its ``data.status``).
REPORTS = {
    "task.created": "pending",
    "task.assigned": "assigned",
    "task.started": "running",
    "task.completed": "completed",
}
TASK_NOT_FOUND = -32002

ServerFactory = Callable[..., ServerProcess]


class ServerGone(Exception):
    """The request got no answer: the server was killed."""


@dataclass
class Ledger:
    """What the clients were told."""

    #: Task id -> the most advanced state acknowledged for it.
    acked: dict[str, str] = field(default_factory=dict)
    #: Every task id a create was sent for (acknowledged or not).
    attempted: list[str] = field(default_factory=list)
    #: Answers that should not happen: errors, 5xx, an acknowledged task not found.
    unexpected: list[str] = field(default_factory=list)
    #: Resumed tasks found further than acknowledged: committed, then killed unanswered.
    unanswered_commits: int = 0
    #: Tasks seen completed, and tasks whose unacknowledged create was lost with a kill.
    finished: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    requests: int = 0

    def ack(self, task_id: str, status: str) -> None:
        if status not in RANK:
            self.unexpected.append(f"{task_id}: acknowledged in state {status!r}")
            return
        if status == "completed":
            self.finished.add(task_id)
        if RANK[status] > RANK.get(self.acked.get(task_id, ""), 0):
            self.acked[task_id] = status


class Client:
    def __init__(self, http: httpx.AsyncClient, ledger: Ledger) -> None:
        self.http = http
        self.ledger = ledger

    async def rpc(
        self, method: str, params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(result, None) or ({}, the error object); ``ServerGone`` without an answer."""
        self.ledger.requests += 1
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        try:
            response = await self.http.post("/api/v1/jsonrpc", json=body)
        except httpx.TimeoutException as exc:  # alive but silent: a hang, not a kill
            self.ledger.unexpected.append(f"{method} {params}: no answer ({exc!r})")
            raise ServerGone from exc
        except httpx.TransportError as exc:
            raise ServerGone from exc
        answer: dict[str, Any] = response.json()
        if "error" in answer:
            error: dict[str, Any] = {**answer["error"], "http_status": response.status_code}
            return {}, error
        assert response.status_code == 200, response.text
        result: dict[str, Any] = answer["result"]
        return result, None

    async def write(self, method: str, params: dict[str, Any]) -> str | None:
        """A state change; returns the acknowledged state (recorded), None on an error."""
        result, error = await self.rpc(method, params)
        if error is not None:
            self.ledger.unexpected.append(f"{method} {params}: {error}")
            return None
        status: str = result["status"]
        self.ledger.ack(result["task_id"], status)
        return status

    async def advance(self, task_id: str, status: str | None) -> None:
        if status == "assigned":
            status = await self.write("task.start", {"task_id": task_id})
        if status == "running":
            await self.write("task.complete", {"task_id": task_id, "result": {"by": "crash-test"}})

    async def resume(self, task_id: str) -> None:
        """Carry on with a task an earlier round left unfinished, from its stored state."""
        task, error = await self.rpc("task.get", {"task_id": task_id})
        if error is not None:
            if error["code"] == TASK_NOT_FOUND and task_id not in self.ledger.acked:
                self.ledger.lost.add(task_id)  # its create was not acknowledged
            else:
                self.ledger.unexpected.append(f"task.get {task_id}: {error}")
            return
        status: str = task["status"]
        if RANK.get(status, 0) > RANK.get(self.ledger.acked.get(task_id, ""), 0):
            self.ledger.unanswered_commits += 1
        if status == "completed":
            self.ledger.finished.add(task_id)
        await self.advance(task_id, status)

    async def work(self, name: str, resume: list[str]) -> None:
        """Resume, then create and finish tasks until the server is gone (or the bound)."""
        try:
            for task_id in resume:
                await self.resume(task_id)
            for i in range(TASKS_PER_CLIENT):
                task_id = f"{name}-{i}"
                self.ledger.attempted.append(task_id)
                definition = {"task_id": task_id, **WORK}
                status = await self.write("task.create", {"task_definition": definition})
                await self.advance(task_id, status)
        except ServerGone:
            return


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def kill_server(server: ServerProcess) -> None:
    """SIGKILL the serving process itself (uvicorn, one worker: the ``serve`` process)."""
    proc = server.proc
    assert proc is not None and proc.poll() is None, "the server died before the kill"
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"agentcore.cli" in cmdline and b"serve" in cmdline, cmdline
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert port_is_closed(server.port), "something still serves the port after the kill"


@dataclass
class Stored:
    """The database as the restarted server left it."""

    #: Task id -> status.
    tasks: dict[str, str]
    #: (id, type, data) of every event, by id.
    events: list[tuple[int, str, dict[str, Any]]]

    def task_events(self) -> list[tuple[int, str, dict[str, Any]]]:
        return [e for e in self.events if e[1].startswith("task.")]


def read_database(path: Path) -> Stored:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tasks = {str(r[0]): str(r[1]) for r in conn.execute("SELECT id, status FROM tasks")}
        events = [
            (int(r[0]), str(r[1]), json.loads(r[2]))
            for r in conn.execute("SELECT id, type, data FROM events ORDER BY id")
        ]
    finally:
        conn.close()
    return Stored(tasks, events)


def server_logs(folder: Path) -> list[str]:
    return [log.read_text() for log in sorted(folder.glob("server-*.log"))]


def complete_requests(receiver: Receiver) -> list[Received]:
    """The deliveries received in full: a kill can cut one short after its headers
    (unanswered, it is sent again)."""
    return [r for r in receiver.at("/hook") if len(r.body) == int(r.headers["content-length"])]


def delivered(receiver: Receiver, secret: str) -> dict[int, set[str]]:
    """Event id -> the webhook-ids it was delivered under (signatures checked)."""
    by_event: dict[int, set[str]] = {}
    for request in complete_requests(receiver):
        assert request.verifies(secret), f"bad signature: {request.headers}"
        body = json.loads(request.body)
        by_event.setdefault(int(body["event_id"]), set()).add(request.msg_id)
    return by_event


async def test_sigkill_under_load_loses_no_acknowledged_task_event_or_delivery(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    print(f"crash test: {ROUNDS} rounds, seed {SEED} (AGENTCORE_CRASH_SEED replays it)")
    rng = random.Random(SEED)
    data = tmp_path / "data"
    receiver = Receiver()
    ledger = Ledger()
    started = time.monotonic()
    servers: list[ServerProcess] = []

    async def start() -> ServerProcess:
        port = servers[0].port if servers else None
        server = server_factory(env=ENV, data_dir=data, port=port)
        servers.append(server)
        await asyncio.to_thread(server.start)
        return server

    try:
        server = await start()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            created = await http.post(
                "/api/v1/integration/webhooks",
                json={"url": receiver.url("/hook"), "events": ["task.*"]},
            )
            assert created.status_code == 201, created.text
            secret: str = created.json()["secret"]
            for n in range(AGENTS):
                card = agent_card(f"worker-{n}", "work")
                result, error = await Client(http, ledger).rpc(
                    "agent.register", {"agent_card": card}
                )
                assert error is None and result["status"] == "active", error

        for round_no in range(ROUNDS):
            done = ledger.finished | ledger.lost
            unfinished = [t for t in ledger.attempted if t not in done]
            before = len(ledger.acked), ledger.requests
            async with httpx.AsyncClient(
                base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=CLIENTS)
            ) as http:
                clients = [
                    asyncio.create_task(
                        Client(http, ledger).work(f"r{round_no}-c{c}", unfinished[c::CLIENTS])
                    )
                    for c in range(CLIENTS)
                ]
                await asyncio.sleep(rng.uniform(*KILL_AFTER_S))
                # Still serving writes (a stalled server would make the kill meaningless).
                probe = f"r{round_no}-probe"
                ledger.attempted.append(probe)
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        probed = await Client(http, ledger).write(
                            "task.create", {"task_definition": {"task_id": probe, **WORK}}
                        )
                except TimeoutError:
                    pytest.fail(f"a write got no answer in {PROBE_TIMEOUT_S} s: the server stalls")
                assert probed == "assigned", ledger.unexpected[-1:]
                still_working = sum(not c.done() for c in clients)
                await asyncio.to_thread(kill_server, server)
                async with asyncio.timeout(ROUND_TIMEOUT_S):
                    await asyncio.gather(*clients)
            assert still_working == CLIENTS, "clients stopped before the kill: it was not mid-load"
            assert not ledger.unexpected, ledger.unexpected[:5]
            assert ledger.requests > before[1] and len(ledger.acked) > before[0], "no load"
            server = await start()
            assert time.monotonic() - started < 120, "the rounds take too long"

        # The server runs: every acknowledged task is there, as far as acknowledged.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            client = Client(http, ledger)
            for task_id, status in ledger.acked.items():
                task, error = await client.rpc("task.get", {"task_id": task_id})
                assert error is None, f"acknowledged task {task_id} ({status}) is gone: {error}"
                assert RANK.get(task["status"], 0) >= RANK[status], (task_id, status, task)

        # Every task event reaches the webhook (in-flight ones after their lease).
        db = data / "agentcore.db"
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            wanted = {e[0] for e in read_database(db).task_events()}
            missing = wanted - set(delivered(receiver, secret))
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await asyncio.to_thread(server.stop)
        assert server.proc is not None and server.proc.returncode == 0

        stored = read_database(db)
        # Gap-free ids: nothing appended was lost or rolled back half-way.
        assert [e[0] for e in stored.events] == list(range(1, len(stored.events) + 1))
        by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for _, event_type, event_data in stored.task_events():
            task_id = event_data["task_id"]
            assert task_id in stored.tasks, f"{event_type} of task {task_id}, not in the table"
            assert event_data["status"] == REPORTS.get(event_type), (event_type, event_data)
            by_task.setdefault(task_id, []).append((event_type, event_data))
        for task_id, status in stored.tasks.items():
            assert status in IMPLIED, (task_id, status)
            types = [t for t, _ in by_task.get(task_id, [])]
            assert types == IMPLIED[status], f"task {task_id} ({status}): events {types}"
        for task_id, status in ledger.acked.items():
            assert RANK.get(stored.tasks[task_id], 0) >= RANK[status], (task_id, status)

        got = delivered(receiver, secret)
        task_event_ids = [e[0] for e in stored.task_events()]
        undelivered = sorted(set(task_event_ids) - set(got))
        assert not undelivered, f"{len(undelivered)} task events undelivered: {undelivered[:10]}"
        assert all(len(got[i]) == 1 for i in task_event_ids), "one event, several webhook-ids"
        logged = {i: (t, d) for i, t, d in stored.events}
        for request in complete_requests(receiver):
            body = json.loads(request.body)
            assert logged.get(body["event_id"]) == (body["type"], body["data"]), body
        assert not ledger.unexpected, ledger.unexpected[:5]
        for text in server_logs(tmp_path):
            assert "Traceback" not in text, text[-3000:]
        print(
            f"crash test: {len(stored.tasks)} tasks ({len(ledger.acked)} acknowledged, "
            f"{len(ledger.lost)} unacknowledged creates lost, {ledger.unanswered_commits} "
            f"changes committed but unanswered), {len(stored.events)} events, "
            f"{len(complete_requests(receiver))} deliveries "
            f"({len(receiver.at('/hook'))} with those a kill cut short), "
            f"{time.monotonic() - started:.1f} s"
        )
    finally:
        receiver.close()
