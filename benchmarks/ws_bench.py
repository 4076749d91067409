"""WebSocket connections: N idle subscribers on one gateway worker, memory and broadcast latency.

The script starts the gateway itself (``python -m agentcore.cli serve``, one
worker, a fresh temporary ``--data-dir``, ``AGENTCORE_*`` variables not passed
on, rate limits set far above what the benchmark sends) or uses a running one
(``--url``; its RSS then needs ``--pid``), and then, with one asyncio client
process (uvloop when installed):

1. warms the server up (a few connections subscribe, one event is published
   and received, they close) and reads its RSS (``VmRSS`` of
   ``/proc/<pid>/status`` of the worker: under Granian the ``serve`` process's
   only child, under uvicorn with one worker the ``serve`` process itself);
2. opens N WebSockets to ``/api/v1/ws/events``, at most ``--concurrency`` at
   a time, each sending one ``subscribe`` for this run's event type and waiting
   for ``subscribed``; client sockets are spread over several loopback source
   addresses (127.0.0.2 ... 127.0.0.9) so that repeated runs do not run out
   of ephemeral ports (about 28,000 per source address and destination, and
   closed sockets stay in TIME-WAIT for 60 s);
3. lets them sit idle (``--settle`` seconds) and reads the RSS again: the
   growth divided by the connections open is the memory per idle connection;
4. publishes ``--broadcasts`` events, one ``POST
   /api/v1/integration/events/publish`` each, ``--interval`` seconds apart;
   each event carries its sequence number and send time, and every connection
   records when it received it. The latency is the client's receive time minus
   the time the publish request started (one machine, one clock);
5. closes every connection and stops the server.

Every connection answers the server's keepalive ``{"type": "ping"}`` with
``{"type": "pong"}``. A connection the server closes before the end is
counted as dropped, with its close code. The client's own cyclic garbage
collector is off while it runs (so that its pauses are not blamed on the
server), and the client's event-loop lag during each broadcast is printed, so
a client-bound latency shows as such. Loopback only; everything is bounded in
time (``--timeout``). ``benchmarks/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import ipaddress
import json
import math
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
REPO_SRC = HERE.parent / "src"

HOST = "127.0.0.1"
WS_PATH = "/api/v1/ws/events"
PUBLISH_PATH = "/api/v1/integration/events/publish"
HEALTH_PATH = "/api/v1/health"
METRICS_PATH = "/metrics"
PONG = '{"type":"pong"}'

#: Loopback source addresses the client sockets are spread over.
SOURCE_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 10))
#: The gateway's HTTP rate limit in this run (requests/s and burst): never hit.
RATE_LIMIT = 10_000_000
SERVER_ENV = {
    "AGENTCORE_RATE_LIMIT__RATE": str(RATE_LIMIT),
    "AGENTCORE_RATE_LIMIT__BURST": str(RATE_LIMIT),
}
#: Seconds the gateway gets to answer its first health check.
STARTUP_TIMEOUT_S = 60.0
#: Seconds it gets to exit after SIGTERM (it closes every stream first) before SIGKILL.
STOP_TIMEOUT_S = 15.0
#: Connections opened, subscribed and closed before the first RSS reading.
WARMUP_CONNECTIONS = 20
#: File descriptors the client needs besides its connections.
SPARE_FDS = 64
#: The client's event-loop lag probe period (seconds).
LAG_PROBE_S = 0.01

#: The issue's targets.
TARGET_KB_PER_CONNECTION = 30.0
TARGET_P99_MS = 1000.0

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- the server ---------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so that the server is stopped."""


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclass
class Server:
    base: str
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    log: TextIO | None = None
    log_path: Path | None = None
    argv: list[str] = field(default_factory=list)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        if proc is not None:
            _signal_group(proc.pid, signal.SIGKILL)  # anything it left in its group
        if self.log is not None:
            self.log.close()
            self.log = None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTCORE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    if importlib.util.find_spec("agentcore") is None and (REPO_SRC / "agentcore").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_SRC), env.get("PYTHONPATH")) if p)
    return env | SERVER_ENV


def start_server(workdir: Path, pin: Sequence[str]) -> Server:
    port = free_port()
    argv = [
        *pin,
        sys.executable,
        "-m",
        "agentcore.cli",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    log_path = workdir / "gateway.log"
    log = log_path.open("w")
    try:
        proc = subprocess.Popen(
            argv,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    # taskset execs the server, so the pid is the gateway's; wait_ready() swaps in its worker.
    return Server(f"http://{HOST}:{port}", proc.pid, proc, log, log_path, argv)


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- /proc --------------------------------------------------------------------------


def worker_pid(pid: int) -> int:
    """The process that serves: Granian's worker, a child of the ``serve`` process
    started by multiprocessing's spawn (beside its resource tracker); else ``pid``
    itself (uvicorn with one worker serves in the ``serve`` process)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return pid


def rss_kb(pid: int | None) -> int | None:
    """``VmRSS`` of ``pid`` in KiB; None when unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cpu_s() -> float | None:
    """CPU seconds all CPUs were busy since boot (steal included); None without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuWindow:
    """CPU used by the server, this client and everything else over a stretch of time."""

    wall: float
    server: float | None
    client: float
    busy: float | None

    @classmethod
    def now(cls, pid: int | None) -> CpuWindow:
        return cls(time.monotonic(), proc_cpu_s(pid), self_cpu_s(), busy_cpu_s())

    def since(self, start: CpuWindow) -> dict[str, float | None]:
        """CPU used since ``start`` by the server, the client and other processes: in
        milliseconds and as a share of one CPU (percent); /proc counts in 10 ms ticks."""
        wall = max(self.wall - start.wall, 1e-9)
        server = None if self.server is None or start.server is None else self.server - start.server
        client = self.client - start.client
        other = None
        if self.busy is not None and start.busy is not None and server is not None:
            other = max(0.0, (self.busy - start.busy) - server - client)

        def pct(x: float | None) -> float | None:
            return None if x is None else round(100.0 * x / wall, 1)

        def ms(x: float | None) -> float | None:
            return None if x is None else round(1000.0 * x)

        return {
            "seconds": round(wall, 3),
            "server_cpu_pct": pct(server),
            "client_cpu_pct": pct(client),
            "other_cpu_pct": pct(other),
            "server_cpu_ms": ms(server),
            "client_cpu_ms": ms(client),
            "other_cpu_ms": ms(other),
        }


# -- HTTP (a few requests: the standard library over asyncio streams) ---------------


async def http(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    started: Callable[[], None] | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; ``started`` is called just before it is sent."""
    parts = urlsplit(base)
    host = parts.hostname or HOST
    port = parts.port or 80
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if started is not None:
                started()
            writer.write(request)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer: {raw[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _unchunk(payload)
    return int(status_line[1]), payload


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(
                f"the gateway exited with status {server.proc.returncode}\n{tail(server.log_path)}"
            )
        with contextlib.suppress(OSError, TimeoutError):
            status, _ = await http(server.base, "GET", HEALTH_PATH, timeout_s=2.0)
            if status == 200:
                if server.proc is not None and server.pid is not None:
                    server.pid = worker_pid(server.pid)
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway did not answer {HEALTH_PATH} within {STARTUP_TIMEOUT_S:g} s")


def parse_histogram(text: str, name: str) -> dict[str, float]:
    """Bucket counts (by ``le``), ``count`` and ``sum`` of an unlabelled Prometheus histogram."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if key.startswith(name + "_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            found[le] = number
        elif key == name + "_count":
            found["count"] = number
        elif key == name + "_sum":
            found["sum"] = number
    return found


def histogram_quantile(
    before: Mapping[str, float], after: Mapping[str, float], q: float
) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of the observations in between."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return None
    bounds = sorted(
        (math.inf if le == "+Inf" else float(le), after[le] - before.get(le, 0.0))
        for le in after
        if le not in ("count", "sum")
    )
    for bound, cumulative in bounds:
        if cumulative >= q * count:
            return bound
    return None


# -- the client -----------------------------------------------------------------------


@dataclass
class Run:
    """What every connection shares: the counters its reader updates."""

    event_type: str
    #: reached[k]: connections that have received k events of this run.
    reached: Counter[int] = field(default_factory=Counter)
    closing: bool = False
    dropped: int = 0
    drop_reasons: Counter[str] = field(default_factory=Counter)
    pings: int = 0
    #: Set whenever an event arrives or a connection is dropped (waiters clear it).
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
        return True


class Client:
    __slots__ = ("closed_by_server", "events", "other", "reader", "run", "ws")

    def __init__(self, ws: ClientConnection, run: Run) -> None:
        self.ws = ws
        self.run = run
        #: (receive time, raw message) of every event; parsed after the measurement.
        self.events: list[tuple[float, str]] = []
        self.other = 0
        self.closed_by_server = False
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        run = self.run
        try:
            async for message in self.ws:
                now = time.time()
                if not isinstance(message, str):
                    self.other += 1
                elif message.startswith('{"type":"event"'):
                    self.events.append((now, message))
                    run.reached[len(self.events)] += 1
                    run.changed.set()
                elif message.startswith('{"type":"ping"'):
                    run.pings += 1
                    await self.ws.send(PONG)
                else:
                    kind = json.loads(message).get("type")
                    if kind == "event":
                        self.events.append((now, message))
                        run.reached[len(self.events)] += 1
                        run.changed.set()
                    elif kind == "ping":
                        run.pings += 1
                        await self.ws.send(PONG)
                    else:
                        self.other += 1
        except ConnectionClosed:
            pass
        finally:
            if not run.closing:
                self.closed_by_server = True
                run.dropped += 1
                run.drop_reasons[f"{self.ws.close_code} {self.ws.close_reason or ''}".strip()] += 1
                run.changed.set()


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(values)))
    return values[min(rank, len(values)) - 1]


def summary_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    ordered = sorted(latencies_s)

    def ms(x: float | None) -> float | None:
        return None if x is None else round(x * 1000.0, 1)

    return {
        "p50_ms": ms(percentile(ordered, 50)),
        "p95_ms": ms(percentile(ordered, 95)),
        "p99_ms": ms(percentile(ordered, 99)),
        "max_ms": ms(ordered[-1] if ordered else None),
    }


class LagProbe:
    """The client's event-loop lag: how late a ``LAG_PROBE_S`` sleep wakes up."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.max_s = max(self.max_s, loop.time() - start - LAG_PROBE_S)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def reset(self) -> float:
        value, self.max_s = self.max_s, 0.0
        return value

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, sources: Sequence[str]) -> None:
        self.args = args
        self.server = server
        self.sources = list(sources)
        parts = urlsplit(server.base)
        self.ws_url = f"ws://{parts.hostname}:{parts.port or 80}{WS_PATH}"
        self.headers: dict[str, str] = (
            {"Authorization": f"Bearer {args.token}"} if args.token else {}
        )
        run_id = secrets.token_hex(4)
        self.run = Run(event_type=f"wsbench.r{run_id}")
        self.clients: list[Client] = []
        self.failures: Counter[str] = Counter()
        self.compressed = 0
        self.open_times: list[float] = []
        self.results: dict[str, Any] = {"phase": "starting"}
        self.probe = LagProbe()

    # -- connections ----------------------------------------------------------------

    async def open_one(self, index: int, subscribe_id: int = 1) -> Client:
        kwargs: dict[str, Any] = {}
        if self.sources:
            kwargs["local_addr"] = (self.sources[index % len(self.sources)], 0)
        ws = await connect(
            self.ws_url,
            additional_headers=self.headers or None,
            compression=None if self.args.client_compression == "none" else "deflate",
            open_timeout=self.args.open_timeout,
            ping_interval=None,  # the gateway's keepalive is its app-level ping
            close_timeout=2.0,
            max_queue=64,
            proxy=None,
            **kwargs,
        )
        try:
            request = {"type": "subscribe", "id": subscribe_id, "topics": [self.run.event_type]}
            await ws.send(json.dumps(request))
            async with asyncio.timeout(self.args.open_timeout):
                while True:
                    answer = json.loads(await ws.recv())
                    if answer.get("type") == "subscribed":
                        break
                    if answer.get("type") == "error":
                        raise RuntimeError(f"subscribe refused: {answer.get('error')}")
                    if answer.get("type") == "ping":
                        await ws.send(PONG)
        except BaseException:
            ws.transport.abort()
            raise
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
        if extensions and "permessage-deflate" in extensions:
            self.compressed += 1
        client = Client(ws, self.run)
        client.reader = asyncio.create_task(client.read())
        return client

    async def open_all(self, n: int) -> float:
        next_index = 0
        started = time.monotonic()

        async def worker() -> None:
            nonlocal next_index
            while next_index < n:
                index = next_index
                next_index += 1
                t0 = time.monotonic()
                try:
                    client = await self.open_one(index)
                except Exception as exc:  # counted and reported, never fatal
                    self.failures[_describe(exc)] += 1
                    continue
                self.open_times.append(time.monotonic() - t0)
                self.clients.append(client)

        last_report = started
        workers = [asyncio.create_task(worker()) for _ in range(min(self.args.concurrency, n))]
        try:
            pending = set(workers)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=1.0)
                if time.monotonic() - last_report >= 2.0:
                    last_report = time.monotonic()
                    progress(f"  {len(self.clients)} open, {sum(self.failures.values())} failed")
        finally:
            for task in workers:
                task.cancel()
        return time.monotonic() - started

    async def close_all(self) -> float:
        self.run.closing = True
        started = time.monotonic()
        semaphore = asyncio.Semaphore(1000)

        async def close(client: Client) -> None:
            async with semaphore:
                try:
                    async with asyncio.timeout(5.0):
                        await client.ws.close()
                except (TimeoutError, OSError):
                    client.ws.transport.abort()

        await asyncio.gather(*(close(c) for c in self.clients), return_exceptions=True)
        readers = [c.reader for c in self.clients if c.reader is not None]
        if readers:
            _, stuck = await asyncio.wait(readers, timeout=5.0)
            for task in stuck:
                task.cancel()
        return time.monotonic() - started

    def abort_all(self) -> None:
        self.run.closing = True
        for client in self.clients:
            client.ws.transport.abort()
            if client.reader is not None:
                client.reader.cancel()

    # -- broadcasts -------------------------------------------------------------------

    async def metrics_histogram(self) -> dict[str, float] | None:
        try:
            status, body = await http(
                self.server.base, "GET", METRICS_PATH, headers=self.headers, timeout_s=10.0
            )
        except (OSError, TimeoutError):
            return None
        if status != 200:
            return None
        found = parse_histogram(
            body.decode(errors="replace"), "agentcore_stream_publish_to_send_seconds"
        )
        return found or None

    async def broadcast(self, seq: int) -> dict[str, Any]:
        alive = len(self.clients) - self.run.dropped
        before = await self.metrics_histogram()
        sent_at = 0.0

        def mark() -> None:
            nonlocal sent_at
            sent_at = time.time()

        self.probe.reset()
        cpu0 = CpuWindow.now(self.server.pid)
        # The send time in the event is taken just before the request, like ``sent_at``.
        data: dict[str, Any] = {"bench": "ws_bench", "seq": seq, "sent_at": time.time()}
        payload = {"event_type": self.run.event_type, "data": data}
        status, body = await http(
            self.server.base,
            "POST",
            PUBLISH_PATH,
            json.dumps(payload).encode(),
            headers=self.headers,
            started=mark,
        )
        acked = time.time() - sent_at
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        run = self.run
        await run.wait_until(
            lambda: run.reached[seq] >= len(self.clients) - run.dropped, self.args.deliver_timeout
        )
        waited = time.monotonic() - cpu0.wall
        cpu = CpuWindow.now(self.server.pid).since(cpu0)
        lag = self.probe.reset()
        after = await self.metrics_histogram()
        server_side: dict[str, float | None] = {}
        if before is not None and after is not None:
            server_side = {
                "writes": after.get("count", 0.0) - before.get("count", 0.0),
                "p50_le_s": histogram_quantile(before, after, 0.50),
                "p99_le_s": histogram_quantile(before, after, 0.99),
            }
        return {
            "seq": seq,
            "event_id": json.loads(body).get("event_id"),
            "sent_at": sent_at,
            "alive_before": alive,
            "publish_ack_ms": round(acked * 1000.0, 1),
            "waited_s": round(waited, 3),
            "client_loop_max_lag_ms": round(lag * 1000.0, 1),
            "cpu": cpu,
            "server_publish_to_write": server_side,
        }

    def tally(self, broadcasts: list[dict[str, Any]]) -> dict[str, Any]:
        """Parse what every connection received: deliveries and latencies per broadcast."""
        by_seq = {b["seq"]: b for b in broadcasts}
        latencies: dict[int, list[float]] = {seq: [] for seq in by_seq}
        duplicates: Counter[int] = Counter()
        complete = 0
        for client in self.clients:
            seen: set[int] = set()
            for received_at, raw in client.events:
                data = json.loads(raw).get("data") or {}
                seq = data.get("seq")
                if not isinstance(seq, int) or seq not in by_seq:
                    continue
                if seq in seen:
                    duplicates[seq] += 1
                    continue
                seen.add(seq)
                latencies[seq].append(received_at - by_seq[seq]["sent_at"])
            if len(seen) == len(by_seq):
                complete += 1
        pooled: list[float] = []
        for seq, broadcast in by_seq.items():
            broadcast["delivered"] = len(latencies[seq])
            broadcast["duplicates"] = duplicates[seq]
            broadcast["latency"] = summary_ms(latencies[seq])
            pooled += latencies[seq]
        return {
            "complete_connections": complete,
            "latency": summary_ms(pooled),
            "deliveries": len(pooled),
        }

    # -- the run ----------------------------------------------------------------------

    async def warm_up(self) -> None:
        clients = [await self.open_one(i, subscribe_id=0) for i in range(WARMUP_CONNECTIONS)]
        status, body = await http(
            self.server.base,
            "POST",
            PUBLISH_PATH,
            json.dumps({"event_type": self.run.event_type, "data": {"warmup": True}}).encode(),
            headers=self.headers,
        )
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        if not await self.run.wait_until(lambda: all(c.events for c in clients), 10.0):
            raise RuntimeError("the warm-up event did not reach every warm-up connection")
        self.run.closing = True
        for client in clients:
            await client.ws.close()
            if client.reader is not None:
                await client.reader
        self.run.closing = False
        self.run.reached.clear()
        self.compressed = 0

    async def run_all(self) -> None:
        args = self.args
        results = self.results
        results["phase"] = "warm-up"
        await self.warm_up()
        await asyncio.sleep(1.0)
        rss_before = rss_kb(self.server.pid)
        results["rss_before_kb"] = rss_before

        results["phase"] = "opening"
        progress(f"opening {args.connections} connections, {args.concurrency} at a time")
        cpu0 = CpuWindow.now(self.server.pid)
        open_s = await self.open_all(args.connections)
        results["open"] = {
            "established": len(self.clients),
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures.most_common(5)),
            "seconds": round(open_s, 2),
            "per_connection_ms": summary_ms(sorted(self.open_times)),
            "compression_negotiated": self.compressed,
            "cpu": CpuWindow.now(self.server.pid).since(cpu0),
        }
        progress(f"{len(self.clients)} open in {open_s:.2f} s; idle {args.settle:g} s")

        results["phase"] = "idle"
        await asyncio.sleep(args.settle)
        rss_open = rss_kb(self.server.pid)
        results["rss_open_kb"] = rss_open
        established = len(self.clients)
        if rss_before is not None and rss_open is not None and established:
            results["kb_per_connection"] = round((rss_open - rss_before) / established, 2)

        results["phase"] = "broadcasting"
        self.probe.start()
        broadcasts: list[dict[str, Any]] = []
        results["broadcasts"] = broadcasts
        for seq in range(1, args.broadcasts + 1):
            if seq > 1:
                rest = broadcasts[-1]["sent_at"] + args.interval - time.time()
                await asyncio.sleep(max(rest, 0.5))
            broadcasts.append(await self.broadcast(seq))
            progress(
                f"broadcast {seq}: {self.run.reached[seq]} of "
                f"{len(self.clients) - self.run.dropped} received"
            )
        await self.probe.stop()
        await asyncio.sleep(0.5)  # stragglers
        results["totals"] = self.tally(broadcasts)
        results["rss_after_broadcasts_kb"] = rss_kb(self.server.pid)
        results["pings_answered"] = self.run.pings
        results["dropped"] = self.run.dropped
        results["drop_reasons"] = dict(self.run.drop_reasons)

        results["phase"] = "closing"
        results["close_s"] = round(await self.close_all(), 2)
        await asyncio.sleep(2.0)
        results["rss_after_close_kb"] = rss_kb(self.server.pid)
        results["phase"] = "done"


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- environment --------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def usable_sources(wanted: Sequence[str]) -> list[str]:
    """The source addresses this host lets a socket bind to (loopback 127.0.0.x on Linux)."""
    usable = []
    for address in wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError:
                continue
        usable.append(address)
    return usable


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def pinning(enabled: bool) -> tuple[list[str], int | None, str]:
    """taskset prefix for the server, the client's CPU, and what was done."""
    if not enabled:
        return [], None, "not pinned (--no-pin)"
    taskset = shutil.which("taskset")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if taskset and {0, 1} <= cpus:
        return [taskset, "-c", "0"], 1, "server on CPU 0, client on CPU 1"
    why = "taskset not found" if not taskset else f"CPUs {sorted(cpus)} available"
    return [], None, f"not pinned ({why})"


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gateway_revision() -> str:
    git = shutil.which("git")
    if git is None or not (HERE.parent / ".git").exists():
        return "unknown (not a git checkout)"
    head = subprocess.run(
        [git, "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        [git, "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return f"commit {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine() -> dict[str, Any]:
    loop = "uvloop " + version_of("uvloop") if importlib.util.find_spec("uvloop") else "asyncio"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "websockets": version_of("websockets"),
        "uvicorn": version_of("uvicorn"),
        "client_loop": loop,
        "gateway_revision": gateway_revision(),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- report -----------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def verdicts(results: Mapping[str, Any], wanted: int) -> list[tuple[str, bool | None]]:
    opened = results.get("open", {})
    established = opened.get("established", 0)
    broadcasts = results.get("broadcasts", [])
    totals = results.get("totals", {})
    kb = results.get("kb_per_connection")
    p99 = totals.get("latency", {}).get("p99_ms")
    every = (
        bool(broadcasts)
        and all(b.get("delivered") == established for b in broadcasts)
        and results.get("dropped", 0) == 0
    )
    return [
        (
            f"established {established:,} of {wanted:,}, none failed",
            established == wanted and opened.get("failed", 0) == 0,
        ),
        (
            f"server memory per idle connection {fmt(kb)} KB (goal <= "
            f"{TARGET_KB_PER_CONNECTION:g} KB)",
            None if kb is None else kb <= TARGET_KB_PER_CONNECTION,
        ),
        (
            "every broadcast reached every established connection, none dropped",
            every if broadcasts else None,
        ),
        (
            f"publish-to-receive p99 {fmt(p99, ' ms')} (goal < {TARGET_P99_MS:g} ms)",
            None if p99 is None else p99 < TARGET_P99_MS,
        ),
    ]


def report(
    info: Mapping[str, Any],
    results: Mapping[str, Any],
    args: argparse.Namespace,
    command: str,
    pin_note: str,
    sources: Sequence[str],
) -> list[tuple[str, bool | None]]:
    print("WebSocket connections benchmark (benchmarks/ws_bench.py)")
    print(f"date:     {info['date']}")
    print(f"machine:  {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}")
    print(
        f"software: Python {info['python']}, websockets {info['websockets']}, "
        f"uvicorn {info['uvicorn']}, client loop {info['client_loop']}"
    )
    print(f"gateway:  {info['gateway_revision']}")
    print(f"command:  {command}")
    print(f"server:   {info['server']}")
    print(
        f"client:   one process, {args.concurrency} opens at a time, source addresses "
        f"{', '.join(sources) if sources else 'default'}, offers "
        f"{'permessage-deflate' if args.client_compression == 'deflate' else 'no compression'}, "
        f"client GC off; {pin_note}"
    )
    print(f"loadavg:  {info['loadavg_before']} (before the run)")
    print()
    opened = results.get("open")
    if opened:
        per = opened["per_connection_ms"]
        print(
            f"connections:   {opened['established']:,} established, {opened['failed']:,} "
            f"failed, opened in {opened['seconds']:.2f} s "
            f"(one open+subscribe p50 {fmt(per['p50_ms'])} ms, p99 {fmt(per['p99_ms'])} ms; "
            f"server CPU {fmt(opened['cpu']['server_cpu_pct'])} %)"
        )
        for reason, count in opened["failures"].items():
            print(f"  ! failed: {count:,} x {reason}")
        print(f"compression:   negotiated on {opened['compression_negotiated']:,} connections")
    rss0, rss1 = results.get("rss_before_kb"), results.get("rss_open_kb")
    if rss0 is not None or rss1 is not None:
        print(
            f"server RSS:    {fmt(rss0)} KB before, {fmt(rss1)} KB with the connections open "
            f"and idle {args.settle:g} s: {fmt(results.get('kb_per_connection'))} KB "
            "per connection"
        )
        print(
            f"               {fmt(results.get('rss_after_broadcasts_kb'))} KB after the "
            f"broadcasts, {fmt(results.get('rss_after_close_kb'))} KB 2 s after closing them"
        )
    elif "open" in results:
        print("server RSS:    unknown (give --pid with --url)")
    broadcasts = results.get("broadcasts", [])
    if broadcasts and "delivered" in broadcasts[0]:
        print()
        print(
            f"{'broadcast':>9} {'delivered':>10} {'of':>7} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8} {'max ms':>8} {'ack ms':>7} {'srv p99<=':>9} {'cli lag':>8} "
            f"{'srv cpu':>8} {'other':>8}"
        )
        print("-" * 110)
        for b in broadcasts:
            lat = b["latency"]
            srv = b["server_publish_to_write"].get("p99_le_s")
            print(
                f"{b['seq']:>9} {b['delivered']:>10,} {b['alive_before']:>7,} "
                f"{fmt(lat['p50_ms']):>8} {fmt(lat['p95_ms']):>8} {fmt(lat['p99_ms']):>8} "
                f"{fmt(lat['max_ms']):>8} {fmt(b['publish_ack_ms']):>7} "
                f"{(f'{srv * 1000:g} ms' if srv is not None else 'n/a'):>9} "
                f"{fmt(b['client_loop_max_lag_ms']):>5} ms "
                f"{fmt(b['cpu']['server_cpu_ms']):>5} ms {fmt(b['cpu']['other_cpu_ms']):>5} ms"
            )
            if b["duplicates"]:
                print(f"  ! broadcast {b['seq']}: {b['duplicates']} duplicate deliveries")
        totals = results["totals"]
        lat = totals["latency"]
        print(
            f"{'overall':>9} {totals['deliveries']:>10,} {'':>7} {fmt(lat['p50_ms']):>8} "
            f"{fmt(lat['p95_ms']):>8} {fmt(lat['p99_ms']):>8} {fmt(lat['max_ms']):>8}"
        )
        print(
            f"connections that received every broadcast: {totals['complete_connections']:,}; "
            f"dropped by the server: {results['dropped']:,}; server pings answered: "
            f"{results['pings_answered']:,}"
        )
        for reason, count in results.get("drop_reasons", {}).items():
            print(f"  ! dropped: {count:,} x close {reason}")
    if "close_s" in results:
        print(f"closed every connection in {results['close_s']:.2f} s")
    if results.get("phase") != "done":
        print(f"! the run ended during {results.get('phase')}: {results.get('error', '')}")
    print()
    found = verdicts(results, args.connections)
    for label, ok in found:
        print(f"{label:<88} {'n/a' if ok is None else 'PASS' if ok else 'FAIL'}")
    print(f"loadavg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return found


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="N idle WebSocket subscribers on one gateway worker: memory per "
        "connection and broadcast delivery latency (loopback only)."
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=10_000,
        metavar="N",
        help="connections to open (default 10000)",
    )
    parser.add_argument(
        "--broadcasts",
        type=int,
        default=5,
        metavar="K",
        help="events to publish to all of them (default 5)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds between broadcasts (default 3)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=500,
        help="connections being opened at once (default 500)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="S",
        help="idle seconds before the second RSS reading (default 5)",
    )
    parser.add_argument(
        "--deliver-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a broadcast to reach everyone (default 10)",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for one connection's handshake and subscribe (default 30)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="bound on the whole run, server start included (default 600)",
    )
    parser.add_argument(
        "--url",
        help="a running gateway (http://127.0.0.1:PORT) instead of starting one; loopback only",
    )
    parser.add_argument("--pid", type=int, help="with --url: the worker process, for its RSS")
    parser.add_argument("--token", help="API key or JWT for a gateway with authentication on")
    parser.add_argument(
        "--client-compression",
        choices=["deflate", "none"],
        default="deflate",
        help="offer permessage-deflate like browsers do (default), or not",
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=len(SOURCE_ADDRESSES),
        metavar="K",
        help="spread client sockets over 127.0.0.2..127.0.0.(K+1) (default 8; "
        "0: the default source address)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server to CPU 0 and the client to CPU 1",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.broadcasts < 1 or args.concurrency < 1:
        parser.error("--connections, --broadcasts and --concurrency must be at least 1")
    if not 0 <= args.sources <= len(SOURCE_ADDRESSES):
        parser.error(f"--sources: 0..{len(SOURCE_ADDRESSES)}")
    if args.url:
        host = urlsplit(args.url).hostname or ""
        if not is_loopback(host):
            parser.error(f"--url: loopback only (got host {host!r})")
    elif args.pid is not None:
        parser.error("--pid goes with --url")
    return args


async def amain(
    args: argparse.Namespace,
    info: dict[str, Any],
    results: dict[str, Any],
    sources: Sequence[str],
    pin: Sequence[str],
    workdir: Path,
    started: list[Server],
) -> None:
    bench: Bench | None = None
    server: Server | None = None
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        # Like Ctrl-C: unwind through the finally clauses, so the server is stopped.
        results["error"] = f"interrupted ({signum.name})"
        if main_task is not None:
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with asyncio.timeout(args.timeout):
            if args.url:
                server = Server(args.url.rstrip("/"), args.pid)
                info["server"] = f"{server.base} (given), pid {args.pid or 'unknown'}"
            else:
                server = start_server(workdir, pin)
                started.append(server)
                info["server"] = (
                    f"started: {shlex.join(server.argv)} (pid {server.pid}), with "
                    + " ".join(f"{k}={v}" for k, v in SERVER_ENV.items())
                )
            progress(f"gateway: {info['server']}")
            await wait_ready(server)
            bench = Bench(args, server, sources)
            bench.results = results
            await bench.run_all()
    except TimeoutError:
        results["error"] = f"--timeout {args.timeout:g} s reached"
        if bench is not None:
            bench.abort_all()
    except Exception as exc:
        results["error"] = _describe(exc)
        if bench is not None:
            bench.abort_all()
        raise
    finally:
        if server is not None:
            progress("stopping the gateway")
            await asyncio.to_thread(server.stop)
            if server.proc is not None and results.get("phase") != "done":
                log_tail = tail(server.log_path)
                if log_tail:
                    progress("gateway log (last lines):\n" + log_tail)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_fd_limit()
    if args.connections + SPARE_FDS + WARMUP_CONNECTIONS > limit:
        print(
            f"ws_bench: {args.connections} connections need about "
            f"{args.connections + SPARE_FDS + WARMUP_CONNECTIONS} file descriptors; the limit "
            f"is {limit} (raise the hard limit: ulimit -Hn)",
            file=sys.stderr,
        )
        return 2
    sources = usable_sources(SOURCE_ADDRESSES[: args.sources])
    pin, client_cpu, pin_note = pinning(not args.no_pin and not args.url)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    gc.collect()
    gc.freeze()
    gc.disable()  # the client's collector pauses would land in the measured latency
    info = machine()
    info["server"] = "not started"
    info["fd_limit"] = limit
    results: dict[str, Any] = {"phase": "starting"}
    command = "python " + shlex.join(["benchmarks/ws_bench.py", *sys.argv[1:]])
    runner_kwargs: dict[str, Any] = {}
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        runner_kwargs["loop_factory"] = uvloop.new_event_loop
    code = 0
    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        try:
            with asyncio.Runner(**runner_kwargs) as runner:
                runner.run(amain(args, info, results, sources, pin, Path(tmp), started))
        except (KeyboardInterrupt, Interrupted, asyncio.CancelledError) as exc:
            results.setdefault("error", f"interrupted ({_describe(exc)})")
            code = 130
        except Exception as exc:  # reported with whatever was measured
            results.setdefault("error", _describe(exc))
            code = 3
        finally:
            for server in started:  # stopped already unless the loop was torn down
                server.stop()
    found = report(info, results, args, command, pin_note, sources)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "command": command,
                    "settings": vars(args),
                    "pinning": pin_note,
                    "sources": sources,
                    "results": results,
                    "verdicts": [{"check": label, "pass": ok} for label, ok in found],
                },
                indent=2,
            )
            + "\n"
        )
    if code:
        return code
    if results.get("phase") != "done":
        return 3  # --timeout: what was measured is printed, but the run is incomplete
    return 0 if all(ok is not False for _, ok in found) else 1


if __name__ == "__main__":
    sys.exit(main())
