"""Component benchmarks of the integration layer: webhooks, event publishing, delivery, memory.

The seed's pytest-benchmark suite (docs/performance.md, "Integration layer
components"). Each test builds the gateway in-process with
``create_app(build_config(...))`` on a SQLite file in a temporary directory,
drives it through ``httpx.ASGITransport`` with a fixed number of concurrent
clients, prints its figures in one block and asserts the seed targets; a
missed target fails the test with the measured figure. Deliveries go to a
receiver on 127.0.0.1 served by the same event loop.

The file is not named ``test_*.py``, so the default ``pytest`` run never
collects it; name it on the command line::

    pytest tests/load/integration_performance_benchmarks.py -v -m benchmark -s

What the figures are: client and gateway share one event loop on one core,
so a latency is the whole in-process round trip (httpx client, middleware,
handler, SQLite commit) including the wait behind the other concurrent
requests, and a throughput is what one gateway worker sustains with its
background tasks (event-log writer, webhook dispatcher) running. Memory is
the RSS of the whole pytest process (``/proc/self/status``), interpreter and
libraries included. ``AGENTCORE_BENCH_SCALE`` (default 1) multiplies every
operation count, for quick trial runs.

``AGENTCORE_BENCH_GATEWAY=process`` measures a real server instead: each
test starts ``agentcore serve`` on a free loopback port (its own SQLite file,
the test's settings in a TOML file, ``AGENTCORE_*`` variables of the caller
ignored; ``AGENTCORE_BENCH_SERVER_ARGS`` adds flags, e.g. ``--server
uvicorn``) and drives it over keep-alive sockets with a minimal HTTP/1.1
client (:class:`LoopbackClient`: tens of microseconds a request, where httpx
over sockets needs about 2 ms here and would be what the run measures).
Latency is then the socket round trip; memory and CPU are the gateway's
(its process and children, from ``/proc``); the receiver of the delivery
test stays in the pytest process::

    AGENTCORE_BENCH_GATEWAY=process \
        pytest tests/load/integration_performance_benchmarks.py -v -m benchmark -s
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
import standardwebhooks

from agentcore.app import Gateway as AppGateway
from agentcore.app import create_app
from agentcore.config import build_config

T = TypeVar("T")

SCALE = float(os.environ.get("AGENTCORE_BENCH_SCALE", "1"))
#: ``inprocess`` (default) or ``process`` (a real server on loopback; see the module docstring).
GATEWAY = os.environ.get("AGENTCORE_BENCH_GATEWAY", "inprocess")
SERVER_ARGS = shlex.split(os.environ.get("AGENTCORE_BENCH_SERVER_ARGS", ""))
WEBHOOKS = "/api/v1/integration/webhooks"
PUBLISH = "/api/v1/integration/events/publish"

# Seed targets (INT-011).
MIN_REGISTRATIONS_PER_S = 1_000.0
MIN_PUBLISHED_PER_S = 1_000.0
MAX_PUBLISH_P95_MS = 10.0
MAX_WEBHOOK_P95_MS = 50.0
MIN_SUCCESS_RATE = 0.999
MAX_PEAK_RSS_MB = 500.0
MAX_REGISTRATION_GROWTH_MB = 200.0


def scaled(count: int) -> int:
    return max(1, round(count * SCALE))


class Benchmark(Protocol):
    """The part of pytest-benchmark's ``benchmark`` fixture used here (it is untyped)."""

    extra_info: dict[str, Any]

    def pedantic(self, target: Callable[[], T], rounds: int = 1, iterations: int = 1) -> T: ...


def once(benchmark: Benchmark, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Time the whole scenario once under pytest-benchmark (its table shows the wall time)."""
    return benchmark.pedantic(lambda: asyncio.run(scenario()), rounds=1, iterations=1)


# -- measurement ---------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            found = re.search(rf"^{field_name}:\s+(\d+) kB", status.read(), re.MULTILINE)
    except OSError:  # the process ended meanwhile
        return 0
    return int(found.group(1)) if found else 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker processes)."""
    found = [pid]
    for member in found:
        with contextlib.suppress(OSError), open(f"/proc/{member}/task/{member}/children") as kids:
            found.extend(int(c) for c in kids.read().split())
    return found


class Measured:
    """The processes whose memory and CPU a test reports: this one, or the gateway's tree."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()

    def rss_mb(self) -> float:
        return sum(_status_kb(p, "VmRSS") for p in _tree(self.pid)) / 1024

    def peak_rss_mb(self) -> float:
        """Peak RSS (summed over the processes) since :meth:`reset_peak_rss` or their start."""
        return sum(_status_kb(p, "VmHWM") for p in _tree(self.pid)) / 1024

    def reset_peak_rss(self) -> bool:
        """Reset the kernel's peak-RSS mark (Linux >= 4.0); False when not allowed."""
        try:
            for p in _tree(self.pid):
                with open(f"/proc/{p}/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
        except OSError:
            return False
        return True

    def cpu_s(self) -> float:
        if self.pid == os.getpid():
            return time.process_time()
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in _tree(self.pid):
            with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (exact, no interpolation)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Run:
    """Outcome of ``count`` calls: latencies in seconds of the ones that succeeded."""

    name: str
    count: int
    concurrency: int
    elapsed_s: float = 0.0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s else math.nan

    @property
    def success_rate(self) -> float:
        return self.ok / self.count if self.count else math.nan

    def ms(self, p: float) -> float:
        return percentile(sorted(self.latencies_s), p) * 1000

    def line(self) -> str:
        failed = sum(self.failures.values())
        return (
            f"{self.name:<22}{self.count:>8,} {self.concurrency:>4} {self.elapsed_s:>8.2f}"
            f" {self.per_s:>9,.0f} {self.ms(50):>8.2f} {self.ms(95):>8.2f} {self.ms(99):>8.2f}"
            f" {self.ms(100):>8.2f} {failed:>6} {self.success_rate * 100:>8.3f}"
        )


RUN_HEADER = (
    f"{'operation':<22}{'count':>8} {'conc':>4} {'time s':>8} {'ops/s':>9} {'p50 ms':>8}"
    f" {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>6} {'success%':>8}"
)


class Answer(Protocol):
    """The part of a response the benchmarks read (``httpx.Response`` is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class Client(Protocol):
    """The part of a client the benchmarks use (``httpx.AsyncClient`` is one)."""

    async def get(self, url: str, *, params: Mapping[str, Any] | None = None) -> Answer: ...

    async def post(self, url: str, *, json: Any = None) -> Answer: ...


#: One request: the client and the call's index -> (failure reason or None).
Call = Callable[[Client, int], Awaitable[str | None]]


async def drive(client: Client, name: str, count: int, concurrency: int, call: Call) -> Run:
    """Make ``count`` calls with ``concurrency`` clients, each taking the next index."""
    run = Run(name, count, concurrency)
    indexes = itertools.count()

    async def worker() -> None:
        while (i := next(indexes)) < count:
            started = time.perf_counter()
            try:
                failure = await call(client, i)
            except (httpx.HTTPError, OSError, EOFError) as exc:  # counted: the run measures them
                failure = type(exc).__name__
            if failure is None:
                run.latencies_s.append(time.perf_counter() - started)
                run.ok += 1
            else:
                run.failures[failure] = run.failures.get(failure, 0) + 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    run.elapsed_s = time.perf_counter() - started
    return run


def expect(response: Answer, status: int, key: str) -> str | None:
    """None when the answer has ``status`` and a JSON body with ``key``; else why not."""
    if response.status_code != status:
        return f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    return None if isinstance(body, dict) and key in body else f"no {key!r}"


class Targets:
    """Seed targets checked after a run; the test fails once, listing every miss."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.missed: list[str] = []

    def at_least(self, what: str, measured: float, target: float, unit: str = "") -> None:
        self._check(what, measured, target, measured >= target, ">=", unit)

    def below(self, what: str, measured: float, target: float, unit: str = "") -> None:
        self._check(what, measured, target, measured < target, "<", unit)

    def _check(
        self, what: str, measured: float, target: float, ok: bool, op: str, unit: str
    ) -> None:
        line = f"{what}: {measured:,.3f}{unit} (target {op} {target:,g}{unit})"
        self.lines.append(f"  {'PASS' if ok else 'FAIL'}  {line}")
        if not ok:
            self.missed.append(line)

    def success(self, run: Run) -> None:
        self.at_least(
            f"{run.name} success rate", run.success_rate * 100, MIN_SUCCESS_RATE * 100, "%"
        )
        if run.failures:
            self.lines.append(f"        {run.name} failures: {run.failures}")

    def report(self, title: str, body: list[str], benchmark: Benchmark) -> None:
        print(f"\n==== {title} ====")
        print(f"gateway: {describe_gateway()}")
        for line in body:
            print(line)
        print("targets:")
        for line in self.lines:
            print(line)
        print("=" * (len(title) + 10))
        benchmark.extra_info["targets"] = self.lines
        assert not self.missed, "seed targets missed: " + "; ".join(self.missed)


# -- the gateway and a receiver ------------------------------------------------


def describe_gateway() -> str:
    if GATEWAY == "process":
        args = " ".join(SERVER_ARGS) or "default server"
        return (
            f"`agentcore serve` on 127.0.0.1 ({args}), driven over keep-alive sockets;"
            " memory and CPU are the gateway's processes"
        )
    return "in-process (httpx ASGITransport); memory and CPU are the pytest process's"


@dataclass
class Gateway:
    """A gateway under test: the client that drives it and the processes it runs in."""

    client: Client
    measured: Measured


@contextlib.asynccontextmanager
async def gateway(data_dir: Path, **webhooks: Any) -> AsyncIterator[Gateway]:
    """A started gateway on a SQLite file under ``data_dir`` (see ``GATEWAY``), and its client."""
    settings: dict[str, dict[str, Any]] = {
        "database": {"data_dir": str(data_dir)},
        "server": {"log_level": "warning"},
        "webhooks": {"allowed_networks": ["127.0.0.0/8"], **webhooks},
    }
    if GATEWAY == "process":
        async with served(data_dir, settings) as started:
            yield started
        return
    app: AppGateway = create_app(build_config(settings))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, Measured())
    finally:
        await app.shutdown()


def _toml(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of strings, numbers, booleans and lists of them (JSON spells those as TOML does)."""
    lines: list[str] = []
    for table, values in settings.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, without the caller's ``AGENTCORE_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.asynccontextmanager
async def served(
    data_dir: Path, settings: Mapping[str, Mapping[str, Any]]
) -> AsyncIterator[Gateway]:
    """``agentcore serve`` with ``settings`` on a free loopback port, until the block ends."""
    config = data_dir / "bench.toml"
    config.write_text(_toml(settings))
    port = _free_port()
    command = [sys.executable, "-m", "agentcore.cli", "serve", "--config", str(config)]
    proc = _start([*command, "--port", str(port), *SERVER_ARGS], data_dir / "gateway.log")
    client = LoopbackClient("127.0.0.1", port, connections=64)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}: {data_dir}/gateway.log")
            with contextlib.suppress(OSError, EOFError):
                if (await client.get("/api/v1/health")).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not answer /api/v1/health within 30 s")
            await asyncio.sleep(0.1)
        yield Gateway(client, Measured(proc.pid))
    finally:
        await client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class LoopbackAnswer:
    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class LoopbackClient:
    """HTTP/1.1 with keep-alive over up to ``connections`` sockets; JSON in, JSON out.

    Just enough of HTTP for the gateway's answers (``content-length`` bodies;
    a ``connection: close`` answer retires its socket), so the client costs a
    few tens of microseconds a request and the gateway is what is measured.
    """

    def __init__(self, host: str, port: int, connections: int) -> None:
        self._host, self._port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(connections)

    async def get(self, url: str, *, params: Mapping[str, Any] | None = None) -> LoopbackAnswer:
        return await self._request("GET", f"{url}?{urlencode(params)}" if params else url, b"")

    async def post(self, url: str, *, json: Any = None) -> LoopbackAnswer:
        body = b"" if json is None else _json_bytes(json)
        return await self._request("POST", url, body)

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def _request(self, method: str, target: str, body: bytes) -> LoopbackAnswer:
        async with self._slots:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self._host, self._port)
            try:
                head = (
                    f"{method} {target} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body)
                status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
                headers = {}
                for line in rest.decode("latin-1").split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if "content-length" not in headers:
                    raise EOFError(f"answer without content-length: {headers}")
                answer = await reader.readexactly(int(headers["content-length"]))
            except BaseException:
                writer.close()
                raise
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer))
            return LoopbackAnswer(int(status_line.split(b" ", 2)[1]), answer)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@contextlib.contextmanager
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="agentcore-bench-") as path:
        yield Path(path)


def registration(events: list[str], ids: list[str] | None = None) -> Call:
    """Register a webhook (to the discard port on loopback); keep its id in ``ids``."""

    async def call(client: Client, i: int) -> str | None:
        body = {"name": f"bench-{i}", "url": "http://127.0.0.1:9/hook", "events": events}
        response = await client.post(WEBHOOKS, json=body)
        failure = expect(response, 201, "id")
        if failure is None and ids is not None:
            ids.append(response.json()["id"])
        return failure

    return call


def lookup(ids: list[str], suffix: str = "", key: str = "id") -> Call:
    """GET one of ``ids`` (round robin), or its ``suffix`` sub-resource."""

    async def call(client: Client, i: int) -> str | None:
        response = await client.get(f"{WEBHOOKS}/{ids[i % len(ids)]}{suffix}")
        return expect(response, 200, key)

    return call


async def warm_up(client: Client) -> None:
    """One call of each kind, so first-use imports and caches are not measured."""
    ids: list[str] = []
    assert await registration(["bench.never.*"], ids)(client, 0) is None
    assert await publication("bench.warmup")(client, 0) is None
    assert await lookup(ids)(client, 0) is None


def publication(event_type: str) -> Call:
    async def call(client: Client, i: int) -> str | None:
        body = {"event_type": event_type, "data": {"n": i}, "source": "bench"}
        return expect(await client.post(PUBLISH, json=body), 202, "event_id")

    return call


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1: records each POST, answers 200.

    It runs on the caller's event loop, so its cost is part of what the test
    measures (a few tens of microseconds a request).
    """

    def __init__(self, expected: int) -> None:
        self.received: list[Received] = []
        self.expected = expected
        self.complete = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._connections:
                writer.close()
            await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = request_line.split(" ")[1]
                self.received.append(Received(path, headers, body, time.perf_counter()))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                if len(self.received) >= self.expected:
                    self.complete.set()
        self._connections.discard(writer)
        writer.close()


# -- the benchmarks ------------------------------------------------------------


@pytest.mark.benchmark
class TestWebhookManagerPerformance:
    REGISTRATIONS = scaled(10_000)
    READS = scaled(1_000)
    #: Fewer lists: a page of 50 costs far more than a get (see docs/performance.md).
    LISTS = scaled(200)
    CONCURRENCY = 10

    def test_high_volume_registration(self, benchmark: Benchmark) -> None:
        """10,000 registrations through the API, then list, get and stats of them."""

        async def scenario() -> tuple[list[Run], float, float]:
            ids: list[str] = []
            with data_dir() as path:
                async with gateway(path) as gw:
                    client = gw.client
                    await warm_up(client)
                    before = gw.measured.rss_mb()
                    register = registration(["bench.never.*"], ids)
                    runs = [
                        await drive(
                            client, "register", self.REGISTRATIONS, self.CONCURRENCY, register
                        )
                    ]
                    after = gw.measured.rss_mb()
                    pages = max(1, len(ids) // 50)

                    async def list_page(client: Client, i: int) -> str | None:
                        params = {"limit": 50, "offset": (i % pages) * 50}
                        return expect(await client.get(WEBHOOKS, params=params), 200, "data")

                    reads: list[tuple[str, int, Call]] = [
                        ("list (50 a page)", self.LISTS, list_page),
                        ("get", self.READS, lookup(ids)),
                        ("stats", self.READS, lookup(ids, "/stats", "attempts")),
                    ]
                    for name, count, call in reads:
                        runs.append(await drive(client, name, count, self.CONCURRENCY, call))
                    return runs, before, after

        runs, before, after = once(benchmark, scenario)
        register = runs[0]
        growth = after - before
        targets = Targets()
        targets.at_least("registrations/s", register.per_s, MIN_REGISTRATIONS_PER_S)
        for run in runs:
            targets.below(f"{run.name} p95", run.ms(95), MAX_WEBHOOK_P95_MS, " ms")
            targets.success(run)
        targets.below(
            f"RSS growth, {register.count:,} registrations",
            growth,
            MAX_REGISTRATION_GROWTH_MB,
            " MB",
        )
        benchmark.extra_info.update(registrations_per_s=register.per_s, rss_growth_mb=growth)
        targets.report(
            "webhook manager: registrations through the API",
            [
                RUN_HEADER,
                *(run.line() for run in runs),
                f"RSS {before:.1f} MB before the registrations, {after:.1f} MB after"
                f" ({growth:+.1f} MB)",
            ],
            benchmark,
        )


@pytest.mark.benchmark
class TestEventPublisherPerformance:
    PUBLICATIONS = scaled(50_000)
    CONCURRENCY = 10

    def test_high_volume_publication(self, benchmark: Benchmark) -> None:
        """50,000 events published through the API; every 202 is a committed, distinct event."""

        async def scenario() -> Run:
            event_ids: set[int] = set()

            async def publish(client: Client, i: int) -> str | None:
                body = {"event_type": "bench.published", "data": {"n": i}, "source": "bench"}
                response = await client.post(PUBLISH, json=body)
                failure = expect(response, 202, "event_id")
                if failure is None:
                    event_ids.add(response.json()["event_id"])
                return failure

            with data_dir() as path:
                async with gateway(path) as gw:
                    await warm_up(gw.client)
                    run = await drive(
                        gw.client, "publish", self.PUBLICATIONS, self.CONCURRENCY, publish
                    )
            assert len(event_ids) == run.ok, f"{run.ok} acknowledged, {len(event_ids)} distinct ids"
            return run

        run = once(benchmark, scenario)
        targets = Targets()
        targets.at_least("events published/s", run.per_s, MIN_PUBLISHED_PER_S)
        targets.below("publish p95", run.ms(95), MAX_PUBLISH_P95_MS, " ms")
        targets.success(run)
        benchmark.extra_info.update(published_per_s=run.per_s, p95_ms=run.ms(95))
        targets.report(
            "event publisher: publications through the API", [RUN_HEADER, run.line()], benchmark
        )


@pytest.mark.benchmark
class TestDeliveryServicePerformance:
    ENDPOINTS = 10
    EVENTS = scaled(500)
    CONCURRENCY = 64
    WAIT_S = 120.0

    def test_concurrent_deliveries(self, benchmark: Benchmark) -> None:
        """10 webhooks x 500 events = 5,000 signed deliveries to a receiver on loopback."""
        expected = self.ENDPOINTS * self.EVENTS

        async def scenario() -> tuple[Receiver, dict[str, str], dict[int, float], float, Run]:
            receiver = Receiver(expected)
            await receiver.start()
            secrets: dict[str, str] = {}
            sent_at: dict[int, float] = {}

            async def publish(client: Client, i: int) -> str | None:
                started = time.perf_counter()
                body = {"event_type": "bench.delivered", "data": {"n": i}, "source": "bench"}
                response = await client.post(PUBLISH, json=body)
                failure = expect(response, 202, "event_id")
                if failure is None:
                    sent_at[response.json()["event_id"]] = started
                return failure

            try:
                with data_dir() as path:
                    async with gateway(
                        path,
                        concurrency=self.CONCURRENCY,
                        poll_interval_s=0.01,
                        per_endpoint_concurrency=self.CONCURRENCY,
                    ) as gw:
                        client = gw.client
                        for k in range(self.ENDPOINTS):
                            body = {"url": receiver.url(f"/hook/{k}"), "events": ["bench.*"]}
                            response = await client.post(WEBHOOKS, json=body)
                            assert response.status_code == 201, response.text
                            secrets[f"/hook/{k}"] = response.json()["secret"]
                        started = time.perf_counter()
                        run = await drive(client, "publish", self.EVENTS, 10, publish)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(receiver.complete.wait(), self.WAIT_S)
                        elapsed = time.perf_counter() - started
            finally:
                await receiver.close()
            return receiver, secrets, sent_at, elapsed, run

        receiver, secrets, sent_at, elapsed, published = once(benchmark, scenario)
        got = receiver.received
        unique = {r.headers.get("webhook-id") for r in got}
        verified = 0
        for r in got:
            try:
                body = standardwebhooks.Webhook(secrets[r.path]).verify(r.body, r.headers)
            except (standardwebhooks.WebhookVerificationError, KeyError):
                continue
            verified += 1
            r.at -= sent_at.get(body["event_id"], r.at)  # now publish -> receipt, seconds
        delivery = Run("deliver (end to end)", expected, self.CONCURRENCY, elapsed, len(unique))
        delivery.latencies_s = [r.at for r in got]
        targets = Targets()
        targets.success(published)
        targets.at_least(
            "delivered / expected", len(unique) / expected * 100, MIN_SUCCESS_RATE * 100, "%"
        )
        targets.at_least(
            "valid signatures / received", verified / max(1, len(got)) * 100, 100.0, "%"
        )
        benchmark.extra_info.update(deliveries_per_s=len(unique) / elapsed)
        targets.report(
            "delivery service: signed deliveries to a receiver on 127.0.0.1",
            [
                RUN_HEADER,
                published.line(),
                delivery.line(),
                f"{len(got):,} requests received, {len(unique):,} distinct webhook-ids,"
                f" {len(got) - len(unique)} duplicates; {verified:,} verified with"
                f" standardwebhooks; {len(unique) / elapsed:,.0f} deliveries/s from the first"
                f" publish to the last receipt ({elapsed:.2f} s)",
                "latency columns of 'deliver': publish request sent -> receiver got the POST",
            ],
            benchmark,
        )


@pytest.mark.benchmark
class TestResourceUtilization:
    OPERATIONS = scaled(100_000)
    CONCURRENCY = 10

    def test_memory_efficiency_under_load(self, benchmark: Benchmark) -> None:
        """100,000 mixed operations: publish 50 %, register 20 %, get 30 %; peak RSS."""

        async def scenario() -> tuple[Run, list[float], float, float, bool, float]:
            ids: list[str] = []
            register = registration(["bench.never.*"], ids)
            publish = publication("bench.mixed")
            get = lookup(ids)

            async def mixed(client: Client, i: int) -> str | None:
                kind = i % 10
                if kind < 5:
                    return await publish(client, i)
                if kind < 7:
                    return await register(client, i)
                return await get(client, i)

            samples: list[float] = []

            with data_dir() as path:
                # The webhook dispatcher runs, matching the 50,000 events against the
                # 20,000 webhooks registered meanwhile (through its pattern index).
                async with gateway(path) as gw:
                    client, measured = gw.client, gw.measured

                    async def sample() -> None:
                        while True:
                            samples.append(measured.rss_mb())
                            await asyncio.sleep(0.5)

                    await warm_up(client)
                    await registration(["bench.never.*"], ids)(client, 0)
                    reset = measured.reset_peak_rss()
                    before = measured.rss_mb()
                    cpu = measured.cpu_s()
                    sampler = asyncio.create_task(sample())
                    run = await drive(client, "mixed", self.OPERATIONS, self.CONCURRENCY, mixed)
                    sampler.cancel()
                    cpu = measured.cpu_s() - cpu
                    samples.append(measured.rss_mb())
                    peak = measured.peak_rss_mb()
            return run, samples, before, cpu, reset, peak

        run, samples, before, cpu_s, reset, peak = once(benchmark, scenario)
        half = samples[len(samples) // 2]
        targets = Targets()
        targets.below(f"peak RSS, {run.count:,} operations", peak, MAX_PEAK_RSS_MB, " MB")
        targets.success(run)
        benchmark.extra_info.update(peak_rss_mb=peak, growth_mb=samples[-1] - before)
        targets.report(
            "resource utilisation: mixed operations",
            [
                RUN_HEADER,
                run.line(),
                f"RSS {before:.1f} MB before, {half:.1f} MB half-way, {samples[-1]:.1f} MB after"
                f" ({samples[-1] - before:+.1f} MB; second half {samples[-1] - half:+.1f} MB)",
                f"peak RSS {peak:.1f} MB"
                + (" (since the run began)" if reset else " (since the process started)"),
                f"CPU {cpu_s:.1f} s for {run.elapsed_s:.1f} s wall"
                f" ({cpu_s / run.elapsed_s * 100:.0f} % of one core),"
                f" {cpu_s / run.count * 1e6:.0f} us per operation",
            ],
            benchmark,
        )
