"""``agentcore worker``: delivery in processes apart from the API, never twice at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.databases import create_pg_database, drop_pg_database
from tests.support import ServerProcess
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_crash import ENV, wait_for

pytestmark = pytest.mark.server

API_ONLY = {**ENV, "AGENTCORE_WEBHOOKS__RUN_IN_GATEWAY": "false"}


class Worker:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
        full_env.update(env)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentcore.cli", "worker", "--log-level", "warning", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        self.log = log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def make(*args: str, env: dict[str, str] | None = None) -> Worker:
        worker = Worker(list(args), env or API_ONLY, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


def publish_all(url: str, count: int, event_type: str = "work.item") -> list[int]:
    ids = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(count):
            response = client.post(
                "/api/v1/integration/events/publish",
                json={"event_type": event_type, "data": {"n": i}},
            )
            assert response.status_code == 202
            ids.append(response.json()["event_id"])
    return ids


def register(url: str, target: str) -> str:
    response = httpx.post(
        f"{url}/api/v1/integration/webhooks", json={"url": target, "events": ["work.*"]}
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def test_worker_delivers_for_a_gateway_that_does_not(
    server_factory: Callable[..., ServerProcess],
    workers: Callable[..., Worker],
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = server_factory(env=API_ONLY, data_dir=data).start()
    secret = register(server.url, receiver.url())
    ids = publish_all(server.url, 3)
    time.sleep(0.5)
    assert receiver.at("/hook") == []  # run_in_gateway = false: the gateway does not deliver
    worker = workers("--data-dir", str(data))
    wait_for(lambda: len(receiver.at("/hook")) >= 3, timeout=20)
    got = receiver.at("/hook")
    assert sorted(json.loads(r.body)["event_id"] for r in got) == ids
    assert all(r.verifies(secret) for r in got)
    assert worker.stop() == 0, worker.log.read_text()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    if request.param == "sqlite":
        yield ["--data-dir", str(tmp_path / "data")]
        return
    name, url = asyncio.run(create_pg_database())
    try:
        # The data directory too: the workers open the webhook secrets with its key file.
        yield ["--data-dir", str(tmp_path / "data"), "--database-url", url]
    finally:
        asyncio.run(drop_pg_database(name))


def test_two_workers_never_deliver_the_same_message_twice(
    server_factory: Callable[..., ServerProcess],
    workers: Callable[..., Worker],
    receiver: Receiver,
    database_args: list[str],
) -> None:
    receiver.scripts["/hook"] = lambda _r, _n: (200, {}, 0.01)
    server = server_factory(*database_args, env=API_ONLY).start()
    register(server.url, receiver.url("/hook"))
    register(server.url, receiver.url("/other"))
    first, second = workers(*database_args), workers(*database_args)
    count = 150
    started = time.monotonic()
    ids = publish_all(server.url, count)
    wait_for(
        lambda: len(receiver.at("/hook")) >= count and len(receiver.at("/other")) >= count,
        timeout=40,
    )
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # anything duplicated would arrive now
    for path in ("/hook", "/other"):
        got = receiver.at(path)
        assert len(got) == count, f"{path}: {len(got)} requests for {count} events"
        assert len({r.msg_id for r in got}) == count
        assert sorted(json.loads(r.body)["event_id"] for r in got) == ids
    assert first.stop() == 0 and second.stop() == 0
    print(f"{2 * count} deliveries by two workers in {elapsed:.2f} s")
