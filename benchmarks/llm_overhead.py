"""Gateway overhead on LLM calls, with a zero-latency fake provider.

Starts ``agentcore fake-llm --latency-ms 0`` and ``agentcore serve`` (one
worker, a fresh data directory, the fake as its only provider) as separate
processes on loopback, then:

0. **outbound call cost**: in this process, ``--calls`` chat completions to
   the fake, one at a time and 16 at once over a keep-alive pool, through
   the gateway's transport (``HttpTransport``, aiohttp) and through an
   ``httpx.AsyncClient`` set up as the providers' client was before it
   (CPU microseconds per call: what each call costs a gateway worker).
1. **the fake alone**: ``wrk -c64`` straight at it, with the CPU it used
   per request (a slow fake would cap the figures below).
2. **overhead at a fixed rate** (``--rate`` requests/s, default 1000, for
   ``--seconds``): ``POST /v1/chat/completions`` over keep-alive connections
   from a small raw-socket client; each answer's ``Server-Timing:
   gateway;dur=`` (handler time not spent waiting on the provider) is
   collected. Goals: p50 <= 1 ms, p99 <= 5 ms. The client's end-to-end
   latency through the gateway and straight to the fake are printed too;
   their difference is the overhead as a client sees it (HTTP parsing and
   the extra hop included).
3. **max completions/s** on one worker: ``wrk`` (closed loop,
   ``--connections``) for ``--seconds`` when installed, with the CPU the
   gateway's and the fake's processes used per completion.

Every process started is stopped on exit. The figures depend on the machine;
on a 2-core box the fake, the gateway and the client share the cores, so the
load average (other work on the machine) is printed before each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

BODY = json.dumps(
    {"model": "fake-small", "messages": [{"role": "user", "content": "hello there"}]}
).encode()
T = TypeVar("T")
TIMING = re.compile(rb"server-timing: gateway;dur=([\d.]+), provider;dur=([\d.]+)", re.I)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process on port {port} exited early")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
            if s.recv(100).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise SystemExit(f"process on port {port} did not become ready")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a process group."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields from the state on: pgrp is the third
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


@contextlib.contextmanager
def processes(server: str = "") -> Iterator[tuple[int, int, dict[str, int]]]:
    """(fake port, gateway port, process group of each), both serving; ``server``:
    the gateway's ASGI server (``granian`` or ``uvicorn``; empty: the default)."""
    fake_port, gw_port = free_port(), free_port()
    cli = [sys.executable, "-m", "agentcore.cli"]
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.toml"
        config.write_text(
            f"""
[llm]
total_timeout_s = 10
[[llm.providers]]
name = "fake"
base_url = "http://127.0.0.1:{fake_port}/v1"
[[llm.providers.models]]
name = "fake-small"
latency_ms = 1
[rate_limit]
enabled = false
"""
            + (f'[server]\nserver = "{server}"\n' if server else "")
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}
        try:
            fake = subprocess.Popen(
                [*cli, "fake-llm", "--port", str(fake_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started.append(fake)
            wait_ready(fake_port, "/v1/models", fake)
            gateway = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--port",
                    str(gw_port),
                    "--config",
                    str(config),
                    "--data-dir",
                    tmp,
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started.append(gateway)
            wait_ready(gw_port, "/api/v1/health/live", gateway)
            yield fake_port, gw_port, {"fake": fake.pid, "gateway": gateway.pid}
        finally:
            for proc in started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


async def paced(
    port: int, rate: float, seconds: float, connections: int
) -> tuple[list[float], list[float], int]:
    """(client latencies s, gateway;dur ms, errors) at ``rate`` requests/s."""
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )
    latencies: list[float] = []
    overhead: list[float] = []
    errors = 0
    interval = connections / rate
    start = time.perf_counter() + 0.05
    end = start + seconds

    async def connection(offset: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        due = start + offset
        while due < end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])  # type: ignore[index]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            timing = TIMING.search(head)
            if timing:
                overhead.append(float(timing[1]))
            due += interval
        writer.close()

    await asyncio.gather(*(connection(i * interval / connections) for i in range(connections)))
    return latencies, overhead, errors


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def wrk(port: int, seconds: float, connections: int) -> str:
    if shutil.which("wrk") is None:
        return ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
            f"wrk.body = {json.dumps(BODY.decode())}\n"
        )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    os.unlink(script.name)
    return out


def wrk_figures(out: str) -> tuple[float, int, str]:
    """(requests/s, requests, the non-2xx line or "") of wrk's output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: \d+", out)
    if rate is None or count is None:
        raise SystemExit(f"wrk failed:\n{out}")
    return float(rate[1]), int(count[1]), non2xx[0] if non2xx else ""


def measured_wrk(
    port: int, seconds: float, connections: int, groups: dict[str, int]
) -> tuple[str, float, int, dict[str, float]]:
    """wrk's output, requests/s, requests, and CPU seconds each process group used meanwhile."""
    before = {name: group_cpu_s(pgid) for name, pgid in groups.items()}
    out = wrk(port, seconds, connections)
    used = {name: group_cpu_s(pgid) - before[name] for name, pgid in groups.items()}
    rate, count, _ = wrk_figures(out) if out else (0.0, 0, "")
    return out, rate, count, used


async def call_cost(port: int, calls: int) -> list[str]:
    """CPU per outbound call to the fake: the gateway's transport against httpx."""
    import httpx

    from agentcore.llm.transport.base import Endpoint
    from agentcore.llm.transport.http import HttpTransport

    base = f"http://127.0.0.1:{port}/v1"
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    transport = HttpTransport(Endpoint("fake", base, headers))
    # As the providers' client was set up before the transport seam.
    client = httpx.AsyncClient(
        base_url=base + "/",
        headers=headers,
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        trust_env=False,
    )

    async def via_transport() -> None:
        reply = await transport.post("chat/completions", BODY, time.monotonic() + 30)
        assert reply.status == 200 and json.loads(reply.body)["choices"]

    async def via_httpx() -> None:
        response = await client.post(
            "chat/completions", content=BODY, timeout=httpx.Timeout(30.0, connect=5.0)
        )
        assert response.status_code == 200 and json.loads(response.content)["choices"]

    async def run(call: Callable[[], Awaitable[None]], n: int, at_once: int) -> tuple[float, float]:
        async def worker() -> None:
            for _ in range(n // at_once):
                await call()

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(at_once)))
        done = n // at_once * at_once
        return done / (time.perf_counter() - wall), (time.process_time() - cpu) / done * 1e6

    lines = []
    try:
        for name, call in (
            ("httpx (before)", via_httpx),
            ("HttpTransport (aiohttp)", via_transport),
        ):
            await run(call, 300, 16)  # connections opened, code warm
            for at_once in (1, 16):
                rate, cpu_us = await run(call, calls, at_once)
                lines.append(
                    f"  {name:24s} {at_once:2d} at once: {cpu_us:7.1f} us CPU a call, "
                    f"{rate:6.0f} calls/s"
                )
    finally:
        await client.aclose()
        await transport.close()
    return lines


def on_uvloop(work: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed, as the gateway's own calls do."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def header(server: str) -> str:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        names = re.findall(r"^model name\s*:\s*(.+)$", info.read(), re.M)
        cpu = names[0] if names else ""
    from agentcore.config import build_config

    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("aiohttp", "httpx", "granian", "uvicorn", "uvloop")
    )
    return "\n".join(
        [
            "LLM overhead benchmark (benchmarks/llm_overhead.py)",
            f"date:     {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
            f"machine:  {os.cpu_count()} CPUs, {cpu}, {platform.system()} {platform.release()}",
            f"software: Python {platform.python_version()}, {versions}",
            f"gateway:  agentcore serve (server {server or build_config().server.server}, "
            "1 worker); "
            "fake: agentcore fake-llm (uvicorn)",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the paced run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--calls", type=int, default=3000, help="calls per outbound-cost run")
    parser.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        help="the gateway's ASGI server (default: its own)",
    )
    args = parser.parse_args()
    print(header(args.server or ""))
    with processes(args.server or "") as (fake_port, gw_port, groups):
        print(f"\n0. outbound call cost, {args.calls} calls each ({load()}):")
        print("\n".join(on_uvloop(call_cost(fake_port, args.calls))))
        print(f"\n1. the fake alone, wrk -c64 for {args.seconds:g} s ({load()}):")
        out, rate, count, used = measured_wrk(fake_port, args.seconds, 64, groups)
        if out:
            print(
                f"  {rate:.0f} requests/s, fake CPU {used['fake'] / count * 1e6:.0f} us a request "
                f"({used['fake'] / args.seconds:.0%} of a core) {wrk_figures(out)[2]}"
            )
        asyncio.run(paced(gw_port, 200, 1, 4))  # warm up pools and caches
        print(f"\n2. paced run ({load()}):")
        direct, _, _ = asyncio.run(paced(fake_port, args.rate, min(3.0, args.seconds), 8))
        lat, over, errors = asyncio.run(paced(gw_port, args.rate, args.seconds, 8))
        achieved = len(lat) / args.seconds
        print(f"  {len(lat)} requests in {args.seconds:g} s = {achieved:.0f}/s, {errors} errors")
        print(
            f"  gateway overhead (Server-Timing gateway;dur): p50 {pct(over, 0.5):.3f} ms, "
            f"p99 {pct(over, 0.99):.3f} ms, max {max(over):.3f} ms "
            f"(goals: p50 <= 1 ms, p99 <= 5 ms)"
        )
        print(
            f"  client latency via gateway: p50 {pct(lat, 0.5) * 1000:.3f} ms, "
            f"p99 {pct(lat, 0.99) * 1000:.3f} ms"
        )
        print(
            f"  client latency direct to fake: p50 {pct(direct, 0.5) * 1000:.3f} ms, "
            f"p99 {pct(direct, 0.99) * 1000:.3f} ms"
        )
        print(
            f"  added by the gateway as the client sees it: p50 "
            f"{(statistics.median(lat) - statistics.median(direct)) * 1000:.3f} ms"
        )
        print(f"\n3. max throughput, wrk -c{args.connections} for {args.seconds:g} s ({load()}):")
        out, rate, count, used = measured_wrk(gw_port, args.seconds, args.connections, groups)
        if not out:
            print("  wrk not installed: max throughput not measured")
            return
        print(out.rstrip())
        print(
            f"  {rate:.0f} completions/s {wrk_figures(out)[2]}; CPU a completion: gateway "
            f"{used['gateway'] / count * 1e6:.0f} us ({used['gateway'] / args.seconds:.0%} of a "
            f"core), fake {used['fake'] / count * 1e6:.0f} us "
            f"({used['fake'] / args.seconds:.0%} of a core)"
        )
        print(f"  {load()}")


if __name__ == "__main__":
    main()
