"""Rate limits measured on real gateway processes with two workers.

Exactness is the point here, and it needs real processes: 400 concurrent
JSON-RPC requests against a limit of 50 (rate 0.01/s, so nothing refills
during the burst). With the Redis backend the two workers share one count, so
at most 50 are admitted, and (to show the test can fail) at least 45. With
the in-process backend each worker counts on its own: up to 2 x 50, each worker
at most 50, and /api/v1/health says so.

Which worker served what is read from each worker's own prometheus-client
file (``counter_<pid>.db``); every test first sends health checks until both
workers have answered, so the burst meets two live workers. Requests come
from a random loopback source address (127.x.y.z): the limiter keys anonymous
callers by IP, so this run's Redis key (``agentcore:rl:control:ip:<address>``)
is its own, and is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from tests.support import ServerProcess, unavailable

pytestmark = pytest.mark.server

ServerFactory = Callable[..., ServerProcess]

REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
JSONRPC = "/api/v1/jsonrpc"
LIST = {"jsonrpc": "2.0", "method": "agent.list", "params": {}, "id": 1}
BURST = 50
REQUESTS = 400
CONNECTIONS = 400
#: The control class limit: 50 at once, then one per 100 s.
CLASS_LIMIT = f"{{control={{rate=0.01,burst={BURST}}}}}"


@pytest.fixture
def source() -> str:
    """A loopback address of this test's own (Linux routes all of 127/8 to lo)."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


@pytest.fixture
def redis_keys(source: str) -> Iterator[redis.Redis]:
    client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        client.close()
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    try:
        yield client
    finally:
        for name in client.scan_iter(match=f"agentcore:rl:*:ip:{source}"):
            client.delete(name)
        client.close()


def start(server_factory: ServerFactory, **env: str) -> ServerProcess:
    return server_factory(
        "--workers",
        "2",
        env={"AGENTCORE_RATE_LIMIT__CLASSES": CLASS_LIMIT, **env},
    ).start()


# -- who served what -------------------------------------------------------------------


def per_worker(multiproc_dir: Path, scratch: Path) -> dict[int, Counter[str]]:
    """For each worker pid: health checks served, JSON-RPC requests admitted and refused."""
    out: dict[int, Counter[str]] = {}
    for path in multiproc_dir.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        own = scratch / str(pid)
        own.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, own / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(own))  # type: ignore[no-untyped-call]
        counts: Counter[str] = Counter()
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "agentcore_http_requests_total":
                    route, status = sample.labels["route"], sample.labels["status"]
                    if route == "/api/v1/health":
                        counts["health"] += int(sample.value)
                    elif route == JSONRPC and status == "200":
                        counts["admitted"] += int(sample.value)
                elif sample.name == "agentcore_rate_limited_total":
                    counts["refused"] += int(sample.value)
        out[pid] = counts
    return out


def after_burst(multiproc_dir: Path, scratch: Path) -> dict[int, Counter[str]]:
    """:func:`per_worker` once every burst request is counted.

    A worker counts a served request just after sending its response, so the
    last few may land a moment after the client has read them.
    """
    deadline = time.monotonic() + 5
    while True:
        served = per_worker(multiproc_dir, scratch / f"after-{time.monotonic_ns()}")
        counted = sum(c["admitted"] + c["refused"] for c in served.values())
        if counted >= REQUESTS or time.monotonic() > deadline:
            return served
        time.sleep(0.05)


def until_both_workers_answer(server: ServerProcess, multiproc_dir: Path, scratch: Path) -> None:
    """Health checks on fresh connections until two workers have served one (bounded)."""
    deadline = time.monotonic() + 20
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.url, timeout=10, limits=limits) as http:
        while True:
            for _ in range(10):
                assert http.get("/api/v1/health").status_code == 200
            served = per_worker(multiproc_dir, scratch / "warm-up")
            if sum(1 for counts in served.values() if counts["health"]) == 2:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"both workers did not answer within 20 s: {served}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


REQUEST_BODY = json.dumps(LIST).encode()
REQUEST = (
    f"POST {JSONRPC} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(REQUEST_BODY)}\r\n\r\n"
).encode() + REQUEST_BODY


async def _connection(port: int, source: str, count: int) -> list[Reply]:
    """``count`` requests one after the other on one keep-alive connection from ``source``.

    Plain asyncio streams: httpx's pool slows down badly past a few dozen
    connections (measured: 400 requests over 100 connections took ~8 s).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    replies: list[Reply] = []
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
            body = await reader.readexactly(int(headers["content-length"]))
            replies.append(Reply(int(head[0].split()[1]), headers, body))
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


async def _burst(port: int, source: str) -> list[Reply]:
    per_connection = REQUESTS // CONNECTIONS
    async with asyncio.timeout(60):
        done = await asyncio.gather(
            *(_connection(port, source, per_connection) for _ in range(CONNECTIONS))
        )
    return [reply for replies in done for reply in replies]


def burst(server: ServerProcess, source: str) -> list[Reply]:
    """REQUESTS concurrent JSON-RPC calls from ``source`` over CONNECTIONS connections."""
    return asyncio.run(_burst(server.port, source))


def statuses(replies: list[Reply]) -> Counter[int]:
    return Counter(r.status for r in replies)


def check_refusal(reply: Reply) -> None:
    assert reply.status == 429
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.headers["x-ratelimit-limit"] == str(BURST)
    body: dict[str, Any] = json.loads(reply.body)
    assert (body["id"], body["error"]["code"]) == (None, -32029)


# -- the measurements ------------------------------------------------------------------


def test_redis_backend_is_exact_across_two_workers(
    server_factory: ServerFactory, redis_keys: redis.Redis, source: str, tmp_path: Path
) -> None:
    server = start(
        server_factory,
        AGENTCORE_RATE_LIMIT__BACKEND="redis",
        AGENTCORE_RATE_LIMIT__REDIS_URL=REDIS_URL,
    )
    multiproc_dir = tmp_path / "data" / "prometheus"
    until_both_workers_answer(server, multiproc_dir, tmp_path)

    replies = burst(server, source)
    served = after_burst(multiproc_dir, tmp_path)
    health = httpx.get(f"{server.url}/api/v1/health", timeout=10).json()

    counts = statuses(replies)
    admitted = counts[200]
    assert set(counts) <= {200, 429}, counts
    assert BURST - 5 <= admitted <= BURST, counts
    assert counts[429] == REQUESTS - admitted
    check_refusal(next(r for r in replies if r.status == 429))
    # Both workers took part, and together they admitted no more than the one limit.
    assert len(served) == 2
    assert all(c["admitted"] + c["refused"] > 0 for c in served.values()), served
    assert sum(c["admitted"] for c in served.values()) == admitted, served
    assert redis_keys.exists(f"agentcore:rl:control:ip:{source}")
    assert health["rate_limit"] == {
        "enabled": True,
        "backend": "redis",
        "on_backend_error": "open",
        "status": "up",
    }


def test_memory_backend_limits_each_worker_apart(
    server_factory: ServerFactory, source: str, tmp_path: Path
) -> None:
    server = start(server_factory)
    multiproc_dir = tmp_path / "data" / "prometheus"
    until_both_workers_answer(server, multiproc_dir, tmp_path)

    replies = burst(server, source)
    served = after_burst(multiproc_dir, tmp_path)
    health = httpx.get(f"{server.url}/api/v1/health", timeout=10).json()
    log = server.log.read_text()

    counts = statuses(replies)
    admitted = counts[200]
    assert set(counts) <= {200, 429}, counts
    # Each worker admits its own 50: more than one limit, at most two.
    assert BURST < admitted <= 2 * BURST, (counts, served)
    assert all(c["admitted"] <= BURST for c in served.values()), served
    assert sum(c["admitted"] for c in served.values()) == admitted, served
    check_refusal(next(r for r in replies if r.status == 429))
    assert "per worker" in health["rate_limit"]["warning"]
    assert "limits are per worker" in log


def test_forged_x_forwarded_for_does_not_change_identity_on_a_real_socket(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(
        env={"AGENTCORE_RATE_LIMIT__CLASSES": "{control={rate=0.001,burst=1}}"}
    ).start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        first = http.post(JSONRPC, json=LIST, headers={"x-forwarded-for": "198.51.100.1"})
        forged = http.post(JSONRPC, json=LIST, headers={"x-forwarded-for": "198.51.100.2"})

    assert first.status_code == 200
    assert forged.status_code == 429
