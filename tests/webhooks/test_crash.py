"""At least once across SIGKILL: a published (202) event reaches the receiver after a restart."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.server

ENV = {
    "AGENTCORE_WEBHOOKS__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    "AGENTCORE_WEBHOOKS__RETRY_SCHEDULE": "[0, 0.2, 0.4]",
    "AGENTCORE_WEBHOOKS__POLL_INTERVAL_S": "0.05",
    "AGENTCORE_WEBHOOKS__TIMEOUT_S": "1",
}
EVENTS = 40


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout} s")
        time.sleep(0.05)


def test_events_published_before_sigkill_are_delivered_after_restart(
    server_factory: Callable[..., ServerProcess], receiver: Receiver, tmp_path: Path
) -> None:
    # The receiver is slow, so the kill lands with deliveries pending and in flight.
    receiver.scripts["/hook"] = lambda _r, _n: (200, {}, 0.05)
    data = tmp_path / "data"
    server = server_factory(env=ENV, data_dir=data).start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        created = client.post(
            "/api/v1/integration/webhooks", json={"url": receiver.url(), "events": ["crash.*"]}
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        ids = []
        for i in range(EVENTS):
            response = client.post(
                "/api/v1/integration/events/publish",
                json={"event_type": "crash.test", "data": {"n": i}},
            )
            assert response.status_code == 202
            ids.append(response.json()["event_id"])
    server.signal(signal.SIGKILL)
    delivered_before = {json.loads(r.body)["event_id"] for r in receiver.at("/hook")}
    assert len(delivered_before) < EVENTS, "all delivered before the kill: the test proves nothing"

    server_factory(env=ENV, data_dir=data, port=server.port).start()
    # In-flight deliveries wait for their lease to expire (2 * timeout_s + 5 s).
    wait_for(
        lambda: {json.loads(r.body)["event_id"] for r in receiver.at("/hook")} >= set(ids),
        timeout=30,
    )
    by_event: dict[int, set[str]] = {}
    for r in receiver.at("/hook"):
        assert r.verifies(secret)
        by_event.setdefault(json.loads(r.body)["event_id"], set()).add(r.msg_id)
    assert set(by_event) == set(ids)
    assert all(len(msg_ids) == 1 for msg_ids in by_event.values())
