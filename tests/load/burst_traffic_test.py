"""Burst traffic: spikes far above the rate limit, then back to normal.

    locust -f tests/load/burst_traffic_test.py --host=http://localhost:8001 \
        --users=1000 --spawn-rate=200 --run-time=5m --headless

A LoadTestShape alternates a base load (10 % of --users) with spikes (all
--users) of 15 s every 45 s. A 429 is the expected answer to a spike and is
counted, not failed (it must carry Retry-After); any other status, a 5xx
above all, fails. After each spike the recovery time is measured: the time
until a full second passes in which every request is answered 200. Target:
recovery < 5 s. Start the gateway with the limit under test, e.g.
``AGENTCORE_RATE_LIMIT__CLASSES='{control={rate=2000,burst=500}}'``
(``agentcore loadtest run burst`` does): above the base load (100 users at up
to 10 requests/s from one address), below a spike.
"""

from __future__ import annotations

import time
from typing import Any

from common import JSONRPC, GatewayUser, Recorder, api_key_headers, write_summary
from locust import LoadTestShape, constant, events, task
from locust.env import Environment

RECORDER = Recorder()
BASE_SHARE = 0.1
CYCLE_S, SPIKE_AT_S, SPIKE_S = 45, 20, 15
SPIKES: list[tuple[float, float]] = []
STARTED: list[float] = []


class BurstUser(GatewayUser):
    wait_time = constant(0.1)

    def on_start(self) -> None:
        self.register_own_agent()

    @task
    def ping(self) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "agent.ping",
            "params": {"agent_id": self.agent_id},
        }
        started = time.time()
        with self.client.post(
            JSONRPC,
            json=body,
            name="agent.ping (burst)",
            headers=api_key_headers(),
            catch_response=True,
        ) as response:
            status = response.status_code
            RECORDER.add(started, (time.time() - started) * 1000, status)
            if status == 200 and "result" in (response.json() or {}):
                response.success()
            elif status == 429 and response.headers.get("Retry-After", "0") >= "1":
                response.success()  # rate limiting doing its job
            else:
                response.failure(f"HTTP {status}")


class Spikes(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        run_time: float = self.get_run_time()  # type: ignore[no-untyped-call]
        options = self.runner.environment.parsed_options if self.runner else None
        limit = getattr(options, "run_time", None)
        if limit and run_time > limit:
            return None
        users = int(getattr(options, "num_users", None) or 100)
        phase = run_time % CYCLE_S
        if not STARTED:
            STARTED.append(time.time())
        if SPIKE_AT_S <= phase < SPIKE_AT_S + SPIKE_S:
            spike_start = time.time() - (phase - SPIKE_AT_S)
            if not SPIKES or abs(SPIKES[-1][0] - spike_start) > 1:
                SPIKES.append((spike_start, spike_start + SPIKE_S))
            return users, max(users / 2, 1)
        return max(int(users * BASE_SHARE), 1), max(users / 2, 1)


def _recovery_s(spike_end: float, samples: list[tuple[float, float, int]]) -> float | None:
    """Seconds after ``spike_end`` until one full second of only 200s."""
    after = [s for s in samples if s[0] >= spike_end]
    if not after:
        return None
    window_start = spike_end
    for started, _, status in after:
        if status != 200:
            window_start = started
        elif started - window_start >= 1.0:
            return max(0.0, window_start - spike_end)
    return None


@events.quitting.add_listener
def _summarise(environment: Environment, **_: Any) -> None:
    samples = sorted(RECORDER.samples)
    by_status: dict[int, int] = {}
    for sample in samples:
        by_status[sample[2]] = by_status.get(sample[2], 0) + 1
    recoveries = [_recovery_s(end, samples) for _, end in SPIKES]
    write_summary(
        "burst",
        {
            "requests": len(samples),
            "statuses": by_status,
            "rate_limited": by_status.get(429, 0),
            "server_errors": sum(n for s, n in by_status.items() if s >= 500),
            "spikes": len(SPIKES),
            "recovery_s": recoveries,
            "max_recovery_s": max((r for r in recoveries if r is not None), default=None),
        },
    )
