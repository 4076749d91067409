"""Integration layer load: the seed's mix against the real integration routes.

    locust -f tests/load/integration_layer_load_test.py --host=http://localhost:8001 \
        --headless --users 100 --spawn-rate 10 --run-time 5m

Mix (seed): LLM completions 40 %, webhook registration 20 %, event publishing
30 %, webhook listing 5 %, webhook stats 3 %, storage uploads 2 %. The gateway
must have an LLM provider with a `chat` model under the cost ceiling used
here: ``agentcore loadtest run integration`` starts ``agentcore fake-llm``
and configures it; by hand, see docs/load-testing.md. Webhooks are
registered with the seed's URL (``https://webhook-test.example.com/endpoint``,
which resolves nowhere: registration must still answer 201) unless
``AGENTCORE_LOADTEST_WEBHOOK_URL`` names a receiver. Every answer's status
AND body are checked.

Subscriptions are what a deployment has, not a broadcast: each user (one
agent) registers webhooks for its own events (``loadtest.<agent>.*``) and
publishes ``loadtest.<agent>.created``, and manages them: past
:data:`WEBHOOKS_PER_USER` it deletes its oldest with each new registration,
so an event is delivered to at most that many endpoints. (With every webhook
on ``loadtest.*``, as in an earlier version, each event went to every
webhook registered so far: thousands of deliveries per publish after a
minute, work growing with the square of the run time.)
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

from common import api_key_headers
from locust import FastHttpUser, between, task

PREFIX = "/api/v1/integration"
#: Webhooks a user keeps; a registration past it deletes the user's oldest.
WEBHOOKS_PER_USER = 3
WEBHOOK_URL = os.environ.get(
    "AGENTCORE_LOADTEST_WEBHOOK_URL", "https://webhook-test.example.com/endpoint"
)


class IntegrationUser(FastHttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        self.webhook_ids: list[str] = []
        self.agent_id = f"load-{uuid.uuid4().hex[:12]}"

    def _call(
        self, method: str, path: str, name: str, expect: int, check: str, **kwargs: Any
    ) -> Any:
        with self.client.request(
            method, path, name=name, headers=api_key_headers(), catch_response=True, **kwargs
        ) as response:
            if response.status_code != expect:
                response.failure(
                    f"expected {expect}, got {response.status_code}: {response.text[:200]}"
                )
                return None
            try:
                body = response.json()
            except Exception:
                response.failure("body is not JSON")
                return None
            if check not in body:
                response.failure(f"answer lacks {check!r}")
                return None
            response.success()
            return body

    @task(40)
    def llm_completion(self) -> None:
        self._call(
            "POST",
            f"{PREFIX}/llm/complete",
            "llm complete",
            200,
            "text",
            json={
                "model_requirements": {
                    "capabilities": ["text_generation"],
                    "max_cost_per_token": 0.001,
                    "max_latency_ms": 5000,
                },
                "request": {
                    "prompt": "Summarize: the quick brown fox.",
                    "max_tokens": 32,
                    "temperature": 0.2,
                },
                "context": {"agent_id": self.agent_id, "tenant_id": "default"},
            },
        )

    @task(20)
    def register_webhook(self) -> None:
        body = self._call(
            "POST",
            f"{PREFIX}/webhooks",
            "webhook register",
            201,
            "id",
            json={
                "name": f"load-{uuid.uuid4().hex[:8]}",
                "url": WEBHOOK_URL,
                "events": [f"loadtest.{self.agent_id}.*"],
            },
        )
        if body is None:
            return
        self.webhook_ids.append(body["id"])
        if len(self.webhook_ids) > WEBHOOKS_PER_USER:
            oldest = self.webhook_ids.pop(0)
            with self.client.request(
                "DELETE", f"{PREFIX}/webhooks/{oldest}", name="webhook delete",
                headers=api_key_headers(), catch_response=True,
            ) as response:  # fmt: skip
                if response.status_code == 204:
                    response.success()
                else:
                    response.failure(f"expected 204, got {response.status_code}")

    @task(30)
    def publish_event(self) -> None:
        self._call(
            "POST",
            f"{PREFIX}/events/publish",
            "event publish",
            202,
            "event_id",
            json={
                "event_type": f"loadtest.{self.agent_id}.created",
                "data": {"agent": self.agent_id, "n": 1},
                "source": "locust",
            },
        )

    @task(5)
    def list_webhooks(self) -> None:
        self._call("GET", f"{PREFIX}/webhooks?limit=20", "webhook list", 200, "data")

    @task(3)
    def webhook_stats(self) -> None:
        if self.webhook_ids:
            self._call(
                "GET",
                f"{PREFIX}/webhooks/{self.webhook_ids[-1]}/stats",
                "webhook stats",
                200,
                "attempts",
            )

    @task(2)
    def storage_upload(self) -> None:
        content = base64.b64encode(os.urandom(2048)).decode()
        self._call(
            "POST",
            f"{PREFIX}/storage/upload",
            "storage upload",
            201,
            "sha256",
            json={
                "file_name": f"load/{uuid.uuid4().hex}.bin",
                "content": content,
                "content_encoding": "base64",
                "metadata": {"source": "locust"},
            },
        )
