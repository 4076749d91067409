"""Failure scenarios: bad input must get its documented 4xx, never a 5xx.

    locust -f tests/load/failure_scenario_test.py --host=http://localhost:8001 \
        --users=100 --spawn-rate=10 --run-time=5m --headless

Every request names what it expects; anything else (a 5xx above all) is a
failure. "Missing auth" expects 401 when the gateway runs with
authentication on (``AGENTCORE_LOADTEST_AUTH=1``, as ``agentcore loadtest``
starts it) and checks that the request is answered normally otherwise.
Between bad requests a valid ping checks that the system remains responsive.
"""

from __future__ import annotations

import os

from common import JSONRPC, GatewayUser, api_key_headers
from locust import between, task

AUTH_ON = os.environ.get("AGENTCORE_LOADTEST_AUTH") == "1"


class FailureUser(GatewayUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.register_own_agent()

    def expect(
        self,
        name: str,
        status: int,
        code: int | None,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        with self.client.post(
            JSONRPC,
            data=body,
            name=name,
            catch_response=True,
            headers={"Content-Type": "application/json", **api_key_headers(), **(headers or {})},
        ) as response:
            if response.status_code >= 500:
                response.failure(f"5xx from the gateway: {response.status_code}")
                return
            if response.status_code != status:
                response.failure(f"expected {status}, got {response.status_code}")
                return
            try:
                error = response.json()["error"]
            except Exception:
                response.failure("no JSON error body")
                return
            if code is not None and error.get("code") != code:
                response.failure(f"expected error {code}, got {error.get('code')}")
                return
            response.success()

    @task(3)
    def invalid_method(self) -> None:
        self.expect(
            "invalid method (404 -32601)",
            404,
            -32601,
            '{"jsonrpc":"2.0","id":1,"method":"no.such.method","params":{}}',
        )

    @task(3)
    def malformed_json(self) -> None:
        self.expect("malformed JSON (400 -32700)", 400, -32700, '{"jsonrpc":"2.0",')

    @task(2)
    def invalid_request(self) -> None:
        self.expect("invalid request (400 -32600)", 400, -32600, '{"foo": 1}')

    @task(2)
    def bad_params(self) -> None:
        self.expect(
            "bad params (400 -32602)",
            400,
            -32602,
            '{"jsonrpc":"2.0","id":1,"method":"agent.ping","params":{"agent_id":7}}',
        )

    @task(2)
    def unknown_agent(self) -> None:
        self.expect(
            "unknown agent (404 -32001)",
            404,
            -32001,
            '{"jsonrpc":"2.0","id":1,"method":"agent.get","params":{"agent_id":"nobody-here"}}',
        )

    @task(1)
    def oversized_payload(self) -> None:
        big = "x" * (2 * 1024 * 1024)
        self.expect(
            "oversized payload (413)",
            413,
            None,
            '{"jsonrpc":"2.0","id":1,"method":"agent.ping","params":{"agent_id":"' + big + '"}}',
        )

    @task(1)
    def deep_nesting(self) -> None:
        self.expect("deep nesting (400 -32600)", 400, -32600, "[" * 200 + "]" * 200)

    @task(1)
    def missing_auth(self) -> None:
        body = '{"jsonrpc":"2.0","id":1,"method":"agent.list","params":{}}'
        if AUTH_ON:
            with self.client.post(
                JSONRPC,
                data=body,
                name="missing auth (401)",
                catch_response=True,
                headers={"Content-Type": "application/json"},
            ) as response:
                if response.status_code == 401:
                    response.success()
                else:
                    response.failure(f"expected 401, got {response.status_code}")
        else:
            self.rpc("agent.list", {}, name="missing auth (auth off: 200)")

    @task(4)
    def still_responsive(self) -> None:
        self.rpc("agent.ping", {"agent_id": self.agent_id}, name="valid ping between failures")
