"""HTTP load: the seed's mix (health 10, agent.ping 8, agent.discover 5, task.create 3,
task.query 2), each user registering its own agent first.

    locust -f tests/load/http_load_test.py --host=http://localhost:8001 \
        --users=1000 --spawn-rate=100 --run-time=5m --headless

Users send back to back (no wait): throughput is then bounded by the gateway
or by Locust itself, whichever saturates first; ``agentcore loadtest`` reports
which. One Locust process tops out near 10,000 req/s on this hardware; use
``--processes -1`` or distributed mode for more, and wrk (benchmarks/) for raw
throughput figures.
"""

from __future__ import annotations

from common import GatewayUser
from locust import constant, task


class HttpLoadUser(GatewayUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.register_own_agent()

    @task(10)
    def health_check(self) -> None:
        self.health()

    @task(8)
    def ping(self) -> None:
        self.rpc("agent.ping", {"agent_id": self.agent_id})

    @task(5)
    def discover(self) -> None:
        self.rpc("agent.discover", {"capabilities": ["summarization"], "limit": 10})

    @task(3)
    def create_task(self) -> None:
        self.rpc(
            "task.create",
            {
                "task_definition": {
                    "type": "summarize",
                    "title": "load test task",
                    "required_capabilities": ["summarization"],
                    "priority": "normal",
                    "input": {"text": "lorem ipsum"},
                }
            },
        )

    @task(2)
    def query_tasks(self) -> None:
        self.rpc("task.query", {"status": "assigned", "limit": 10})
