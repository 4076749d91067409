"""WebSocket load: real connections to /api/v1/ws/events, each subscribed and checked.

    locust -f tests/load/websocket_load_test.py --host=http://localhost:8001 \
        --users=10000 --spawn-rate=100 --run-time=5m --headless

Each user opens a real WebSocket (websocket-client, which gevent makes
cooperative under Locust), subscribes to its own topic, and then, in a loop,
publishes an event through the HTTP API and waits for exactly that event to
arrive on its socket (checked by a nonce and the event id). Reported:
``WS connect`` (time to open and subscribe; failures are connection
failures), ``WS publish->receive`` (end-to-end latency of a published event),
``WS drop`` (a connection lost after it was established), and a custom
``WS open connections`` gauge in the stats on stop. Idle waits are long
(seconds) so thousands of users mostly hold sockets open, as the seed's
"10,000+ concurrent connections" asks.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import websocket
from common import api_key_headers
from locust import User, between, events, task
from locust.env import Environment

OPEN: dict[str, int] = {"now": 0, "peak": 0}


def _fire(
    env: Environment, name: str, started: float, exc: Exception | None = None, length: int = 0
) -> None:
    env.events.request.fire(  # type: ignore[no-untyped-call]
        request_type="WS",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=length,
        exception=exc,
        context={},
    )


class WebSocketUser(User):
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.topic = f"loadtest.{uuid.uuid4().hex[:12]}"
        self.ws: websocket.WebSocket | None = None
        host = self.host or "http://127.0.0.1:8001"
        ws_url = host.replace("http://", "ws://").replace("https://", "wss://")
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                f"{ws_url}/api/v1/ws/events",
                timeout=30,
                header=[f"{k}: {v}" for k, v in api_key_headers().items()],
            )
            ws.send(json.dumps({"type": "subscribe", "topics": [self.topic], "id": 1}))
            answer = json.loads(ws.recv())
            if answer.get("type") != "subscribed":
                raise RuntimeError(f"subscribe answered {answer}")
        except Exception as exc:  # a connection failure, reported as such
            _fire(self.environment, "WS connect", started, exc)
            raise
        self.ws = ws
        OPEN["now"] += 1
        OPEN["peak"] = max(OPEN["peak"], OPEN["now"])
        _fire(self.environment, "WS connect", started)

    def on_stop(self) -> None:
        if self.ws is not None:
            OPEN["now"] -= 1
            self.ws.close()
            self.ws = None

    def _publish(self, nonce: str) -> None:
        import urllib.request

        body = json.dumps({"event_type": self.topic, "data": {"nonce": nonce}}).encode()
        req = urllib.request.Request(
            f"{self.host}/api/v1/integration/events/publish",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **api_key_headers()},
        )
        with urllib.request.urlopen(req, timeout=30) as response:
            if response.status != 202:
                raise RuntimeError(f"publish answered {response.status}")

    @task
    def publish_and_receive(self) -> None:
        if self.ws is None:
            return
        nonce = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            self._publish(nonce)
            deadline = time.monotonic() + 30
            while True:
                self.ws.settimeout(max(0.1, deadline - time.monotonic()))
                message: dict[str, Any] = json.loads(self.ws.recv())
                if message.get("type") == "ping":
                    self.ws.send(json.dumps({"type": "pong"}))
                    continue
                if message.get("type") != "event":
                    continue
                if message.get("event_type") != self.topic:
                    raise RuntimeError(f"received an event of another topic: {message}")
                if message.get("data", {}).get("nonce") == nonce:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("published event not received within 30 s")
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as exc:
            OPEN["now"] -= 1
            self.ws = None
            _fire(self.environment, "WS drop", started, exc)
            return
        except Exception as exc:
            _fire(self.environment, "WS publish->receive", started, exc)
            return
        _fire(self.environment, "WS publish->receive", started)


@events.quitting.add_listener
def _report(environment: Environment, **_: Any) -> None:
    print(f"WS open connections: peak {OPEN['peak']}, at stop {OPEN['now']}")
