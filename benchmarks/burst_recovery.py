"""Burst and recovery: rate limiting under a seed-like burst, and how soon the gateway is back.

The pattern is open loop: every request has a scheduled send time and is sent
then, whatever the earlier answers, so a slow gateway cannot slow the load
down (a closed loop would hide overload as lower throughput)::

    baseline   --baseline-rate req/s for --baseline-s, over --connections keep-alive connections
    burst      --burst-rate req/s for --burst-s, over --burst-connections connections
    recovery   --baseline-rate req/s for --recovery-s, over --connections connections

Every ``--health-every``-th request is ``GET /api/v1/health`` (an open route,
never rate limited); the others are JSON-RPC ``agent.ping`` for an agent
registered first (route class ``control``, rate limited per client). All
requests come from one client address, so the whole burst is one client's:
per-client rate limiting answers it with 429s, and load shedding (503) is
not expected to take part.

Measured per request: the scheduled time, the time the request was written,
the status (0 for a connection error) and the latency from writing the
request to reading the whole answer. Per phase the script prints the counts
by status, the p50/p95/p99 latency of admitted (200) requests, the achieved
rate and the client's largest lag behind its schedule (a large lag means the
client, not the gateway, could not keep up, and the figures say so).

Recovery time: the recovery phase is cut into 250 ms windows; a window is
normal when all its requests got a 200 and their p95 latency is within
``max(2 x baseline p99, baseline p99 + 10 ms)``. The gateway has recovered at
the start of the first second of normal windows in a row; abnormal windows
after that are counted and printed (on a shared machine they are usually
someone else's load).

Objectives checked (exit status 1 if one is missed): only 200 and 429, 429s
during the burst, admitted burst latency p95 < 50 ms and p99 < 100 ms, and
recovery < 5 s.

Usage::

    python benchmarks/burst_recovery.py                # starts a gateway: control 200/s, burst 100
    python benchmarks/burst_recovery.py --burst-rate 2000 --json burst.json
    python benchmarks/burst_recovery.py --url http://127.0.0.1:8001  # a running gateway

The client is one asyncio process (uvloop when installed) on raw streams with
pre-encoded requests and the garbage collector paused, to keep its own
overhead out of the figures; on a shared machine it still takes CPU from the
gateway, so compare runs on the same machine. A gateway the script starts
runs in its own process group with a temporary data directory and is stopped
when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

JSONRPC = "/api/v1/jsonrpc"
HEALTH = "/api/v1/health"
AGENT_ID = "burst-agent"
#: Latency objectives for admitted requests during the burst, and the recovery bound (seconds).
SLO_P95_S = 0.050
SLO_P99_S = 0.100
SLO_RECOVERY_S = 5.0
#: Width of the windows the recovery time is measured in, and how long they must stay
#: normal in a row to count as recovered (seconds).
WINDOW_S = 0.25
STABLE_S = 1.0
#: Every time is taken from this clock: uvloop's ``loop.time()`` has only millisecond resolution.
clock = time.perf_counter
#: Connections of a phase are opened this long before it starts, so connecting is not measured.
PRECONNECT_S = 0.3


@dataclass(frozen=True)
class Phase:
    name: str
    #: Requests per second, spread evenly over the phase.
    rate: float
    duration_s: float
    connections: int


@dataclass(frozen=True)
class Sample:
    phase: str
    route: str
    #: Seconds from the start of the run.
    scheduled_s: float
    sent_s: float
    latency_s: float
    #: HTTP status; 0 when the connection failed.
    status: int
    error: str = ""


@dataclass
class PhaseFigures:
    name: str
    start_s: float
    duration_s: float
    target_rate: float
    #: Requests over the time from the phase's start to the last send.
    achieved_rate: float
    statuses: dict[str, int]
    #: Statuses per route ("ping", "health").
    routes: dict[str, dict[str, int]]
    admitted: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    max_lag_ms: float
    errors: list[str] = field(default_factory=list)


@dataclass
class Report:
    phases: list[PhaseFigures]
    #: Seconds from the end of the burst until the gateway was back to normal;
    #: None: not within the run.
    recovery_s: float | None
    #: Abnormal windows after the recovery (machine noise, or a gateway that relapsed).
    windows_abnormal_after: int
    recovery_threshold_ms: float
    slo: dict[str, bool]

    def phase(self, name: str) -> PhaseFigures:
        return next(p for p in self.phases if p.name == name)

    @property
    def passed(self) -> bool:
        return all(self.slo.values())


def seed_pattern(
    baseline_rate: float = 100.0,
    baseline_s: float = 2.0,
    burst_rate: float = 1000.0,
    burst_s: float = 3.0,
    recovery_s: float = 6.0,
    connections: int = 10,
    burst_connections: int = 100,
) -> list[Phase]:
    return [
        Phase("baseline", baseline_rate, baseline_s, connections),
        Phase("burst", burst_rate, burst_s, burst_connections),
        Phase("recovery", baseline_rate, recovery_s, connections),
    ]


# -- requests on raw asyncio streams --------------------------------------------------


def http_request(method: str, host: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def requests_for(host: str, health_every: int) -> list[tuple[str, bytes]]:
    """One cycle of the request mix: ``health_every - 1`` pings, then one health check."""
    ping = json.dumps(
        {"jsonrpc": "2.0", "method": "agent.ping", "params": {"agent_id": AGENT_ID}, "id": 1}
    ).encode()
    cycle = [("ping", http_request("POST", host, JSONRPC, ping))] * max(health_every - 1, 1)
    if health_every > 0:
        cycle.append(("health", http_request("GET", host, HEALTH)))
    return cycle


class Connection:
    """One keep-alive HTTP/1.1 connection; reads just enough of an answer to frame it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send ``request``; return the status and whether the connection stays open."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        keep_alive = True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        if length:
            await self.reader.readexactly(length)
        return status, keep_alive

    def close(self) -> None:
        self.writer.close()


async def _connection_worker(
    host: str,
    port: int,
    phase: Phase,
    phase_start: float,
    index: int,
    mix: Sequence[tuple[str, bytes]],
    origin: float,
    samples: list[Sample],
) -> None:
    """Send the phase's requests ``index``, ``index + connections``, ... on one connection."""
    total = round(phase.rate * phase.duration_s)
    conn: Connection | None = None
    delay = phase_start - PRECONNECT_S - clock()
    if delay > 0:
        await asyncio.sleep(delay)
    with contextlib.suppress(OSError):
        conn = await Connection.open(host, port)
    try:
        for k in range(index, total, phase.connections):
            scheduled = phase_start + k / phase.rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            route, request = mix[k % len(mix)]
            sent = clock()
            error = ""
            try:
                if conn is None:
                    conn = await Connection.open(host, port)
                status, keep_alive = await conn.exchange(request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                status, keep_alive, error = 0, False, f"{type(exc).__name__}: {exc}"
            except ValueError as exc:  # a malformed status line
                status, keep_alive, error = 0, False, f"bad answer: {exc}"
            done = clock()
            samples.append(
                Sample(
                    phase.name,
                    route,
                    scheduled - origin,
                    sent - origin,
                    done - sent,
                    status,
                    error,
                )
            )
            if not keep_alive and conn is not None:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


async def _drive(url: str, phases: Sequence[Phase], health_every: int) -> list[Sample]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    mix = requests_for(parts.netloc, health_every)
    origin = clock() + PRECONNECT_S + 0.1
    samples: list[Sample] = []
    workers = []
    start = origin
    for phase in phases:
        for i in range(phase.connections):
            workers.append(_connection_worker(host, port, phase, start, i, mix, origin, samples))
        start += phase.duration_s
    await asyncio.gather(*workers)
    return samples


def drive(url: str, phases: Sequence[Phase], health_every: int = 5) -> list[Sample]:
    """Run the pattern against ``url`` and return every request's sample, in completion order.

    Runs its own event loop (uvloop when installed) with the garbage collector
    paused, so the client adds as little of its own latency as it can.
    """
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            samples = runner.run(_drive(url, phases, health_every))
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


# -- figures -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _status(sample: Sample) -> str:
    return str(sample.status) if sample.status else "error"


def phase_figures(samples: Sequence[Sample], phase: Phase, start_s: float) -> PhaseFigures:
    mine = [s for s in samples if s.phase == phase.name]
    admitted = [s.latency_s for s in mine if s.status == 200]
    statuses = Counter(_status(s) for s in mine)
    routes: dict[str, Counter[str]] = {}
    for s in mine:
        routes.setdefault(s.route, Counter())[_status(s)] += 1
    sending_s = max((s.sent_s for s in mine), default=start_s) - start_s
    errors = sorted({s.error for s in mine if s.error})[:5]
    return PhaseFigures(
        name=phase.name,
        start_s=round(start_s, 3),
        duration_s=phase.duration_s,
        target_rate=phase.rate,
        achieved_rate=round(len(mine) / max(sending_s, phase.duration_s - 1 / phase.rate), 1),
        statuses=dict(sorted(statuses.items())),
        routes={route: dict(sorted(c.items())) for route, c in sorted(routes.items())},
        admitted=len(admitted),
        p50_ms=_ms(percentile(admitted, 50)),
        p95_ms=_ms(percentile(admitted, 95)),
        p99_ms=_ms(percentile(admitted, 99)),
        max_ms=_ms(max(admitted, default=None)),
        max_lag_ms=_ms(max((s.sent_s - s.scheduled_s for s in mine), default=0.0)) or 0.0,
        errors=errors,
    )


def recovery_time(
    samples: Sequence[Sample], burst_end_s: float, duration_s: float, threshold_s: float
) -> tuple[float | None, int]:
    """When the gateway was back to normal, and how many windows were abnormal after that.

    A window is normal when every request scheduled in it got a 200 and their
    p95 latency is within ``threshold_s``. Returns the seconds from
    ``burst_end_s`` to the start of the first run of normal windows lasting
    ``STABLE_S`` (None when there is none), and the abnormal windows after it
    (noise on a shared machine, reported rather than hidden).
    """
    count = max(math.ceil(duration_s / WINDOW_S), 1)
    windows: list[list[Sample]] = [[] for _ in range(count)]
    for s in samples:
        if s.phase == "recovery":
            i = min(int((s.scheduled_s - burst_end_s) / WINDOW_S), count - 1)
            windows[max(i, 0)].append(s)
    normal = []
    for window in windows:
        p95 = percentile([s.latency_s for s in window], 95)
        normal.append(all(s.status == 200 for s in window) and (p95 is None or p95 <= threshold_s))
    run = max(round(STABLE_S / WINDOW_S), 1)
    for start in range(count - run + 1):
        if all(normal[start : start + run]):
            return round(start * WINDOW_S, 3), normal[start + run :].count(False)
    return None, normal.count(False)


def report(samples: Sequence[Sample], phases: Sequence[Phase]) -> Report:
    figures = []
    start = 0.0
    burst_end = 0.0
    for phase in phases:
        figures.append(phase_figures(samples, phase, start))
        start += phase.duration_s
        if phase.name == "burst":
            burst_end = start
    baseline = next(f for f in figures if f.name == "baseline")
    base_p99 = (baseline.p99_ms or 0.0) / 1000
    threshold = max(2 * base_p99, base_p99 + 0.010)
    recovery_phase = next(p for p in phases if p.name == "recovery")
    recovered, blips = recovery_time(samples, burst_end, recovery_phase.duration_s, threshold)
    burst = next(f for f in figures if f.name == "burst")
    statuses = {status for f in figures for status in f.statuses}
    slo = {
        "only 200 and 429": statuses <= {"200", "429"},
        "429 during the burst": burst.statuses.get("429", 0) > 0,
        "burst p95 < 50 ms": burst.p95_ms is not None and burst.p95_ms < SLO_P95_S * 1000,
        "burst p99 < 100 ms": burst.p99_ms is not None and burst.p99_ms < SLO_P99_S * 1000,
        "recovery < 5 s": recovered is not None and recovered < SLO_RECOVERY_S,
    }
    return Report(figures, recovered, blips, round(threshold * 1000, 2), slo)


def format_report(result: Report) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"{'phase':<9} {'target/s':>8} {'sent/s':>8} {'statuses':<28} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} {'lag ms':>7}"
    ]
    for f in result.phases:
        statuses = " ".join(f"{k}:{v}" for k, v in f.statuses.items())
        lines.append(
            f"{f.name:<9} {f.target_rate:>8.0f} {f.achieved_rate:>8.1f} {statuses:<28} "
            f"{ms(f.p50_ms):>7} {ms(f.p95_ms):>7} {ms(f.p99_ms):>7} {ms(f.max_ms):>7} "
            f"{f.max_lag_ms:>7.1f}"
        )
        for route, counts in f.routes.items():
            lines.append(f"  {route:<7} {' '.join(f'{k}:{v}' for k, v in counts.items())}")
        lines.extend(f"  error: {e}" for e in f.errors)
    recovered = "not within the run" if result.recovery_s is None else f"{result.recovery_s:.2f} s"
    lines.append(
        f"recovery: {recovered} after the burst (first {STABLE_S:g} s of {WINDOW_S * 1000:.0f} ms "
        f"windows with all 200 and p95 <= {result.recovery_threshold_ms:.1f} ms; "
        f"abnormal windows after it: {result.windows_abnormal_after})"
    )
    lines.append("latencies: admitted (200) requests, write to last byte read")
    lines.extend(f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in result.slo.items())
    return "\n".join(lines)


# -- a gateway of our own -------------------------------------------------------------


def register_agent(url: str, timeout_s: float = 10.0) -> None:
    """Register the agent the pings are for; raise if the gateway does not answer with a result."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "agent.register",
            "params": {
                "agent_card": {"agent_id": AGENT_ID, "name": AGENT_ID, "capabilities": ["burst"]},
                "override_existing": True,
            },
            "id": 1,
        }
    ).encode()
    request = urllib.request.Request(
        url + JSONRPC, body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    if "result" not in answer:
        raise RuntimeError(f"agent.register failed: {answer}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def gateway(rate: float, burst: int, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``agentcore serve`` with a control-class limit; yield its URL; stop it."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="agentcore-burst-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
        src = Path(__file__).resolve().parent.parent / "src"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
        env["AGENTCORE_RATE_LIMIT__CLASSES"] = f"{{control={{rate={rate:g},burst={burst}}}}}"
        env.update(extra_env or {})
        log = open(Path(data) / "gateway.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcore.cli",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                data,
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, Path(data) / "gateway.log")
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + HEALTH + "/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not become ready in {timeout_s:g} s:\n{log.read_text()}")


def run(url: str, phases: Sequence[Phase], health_every: int = 5) -> Report:
    """Register the agent, drive the pattern, and compute the figures."""
    register_agent(url)
    return report(drive(url, phases, health_every), phases)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Burst and recovery of the gateway under a seed-like burst pattern.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", help="a running gateway; default: start one with --limit-*")
    parser.add_argument("--limit-rate", type=float, default=200.0, help="control class req/s")
    parser.add_argument("--limit-burst", type=int, default=100, help="control class burst")
    parser.add_argument("--baseline-rate", type=float, default=100.0, help="req/s")
    parser.add_argument("--baseline-s", type=float, default=2.0)
    parser.add_argument("--burst-rate", type=float, default=1000.0, help="req/s")
    parser.add_argument("--burst-s", type=float, default=3.0)
    parser.add_argument("--recovery-s", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=10, help="baseline and recovery")
    parser.add_argument("--burst-connections", type=int, default=100)
    parser.add_argument(
        "--health-every", type=int, default=5, help="every Nth request is a health check"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    phases = seed_pattern(
        args.baseline_rate,
        args.baseline_s,
        args.burst_rate,
        args.burst_s,
        args.recovery_s,
        args.connections,
        args.burst_connections,
    )
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(gateway(args.limit_rate, args.limit_burst))
        limit = f"control {args.limit_rate:g}/s, burst {args.limit_burst}"
        print(f"gateway {url} (rate limit: {'its own' if args.url else limit})")
        print(
            "pattern: "
            + ", ".join(
                f"{p.name} {p.rate:g}/s for {p.duration_s:g} s on {p.connections} connections"
                for p in phases
            )
            + f"; every {args.health_every}th request is GET {HEALTH}"
        )
        result = run(url, phases, args.health_every)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
