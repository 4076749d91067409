"""Gateway overhead on LLM calls, with a zero-latency fake provider.

Starts ``agentcore fake-llm --latency-ms 0`` and ``agentcore serve`` (one
worker, a fresh data directory, the fake as its only provider) as separate
processes on loopback, then:

1. **overhead at a fixed rate** (``--rate`` requests/s, default 1000, for
   ``--seconds``): ``POST /v1/chat/completions`` over keep-alive connections
   from a small raw-socket client; each answer's ``Server-Timing:
   gateway;dur=`` (handler time not spent waiting on the provider) is
   collected. Goals: p50 <= 1 ms, p99 <= 5 ms. The client's end-to-end
   latency through the gateway and straight to the fake are printed too;
   their difference is the overhead as a client sees it (HTTP parsing and
   the extra hop included).
2. **max completions/s** on one worker: ``wrk`` (closed loop,
   ``--connections``) for ``--seconds`` when installed.

Every process started is stopped on exit. The figures depend on the machine;
on a 2-core box the fake, the gateway and the client share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BODY = json.dumps(
    {"model": "fake-small", "messages": [{"role": "user", "content": "hello there"}]}
).encode()
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
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            if s.recv(100).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise SystemExit(f"process on port {port} did not become ready")


@contextlib.contextmanager
def processes() -> Iterator[tuple[int, int]]:
    """(fake port, gateway port), both serving."""
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
            yield fake_port, gw_port
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
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
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
        return "wrk not installed: max throughput not measured"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the paced run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with processes() as (fake_port, gw_port):
        asyncio.run(paced(gw_port, 200, 1, 4))  # warm up pools and caches
        direct, _, _ = asyncio.run(paced(fake_port, args.rate, min(3.0, args.seconds), 8))
        lat, over, errors = asyncio.run(paced(gw_port, args.rate, args.seconds, 8))
        achieved = len(lat) / args.seconds
        print(
            f"paced run: {len(lat)} requests in {args.seconds:g} s = {achieved:.0f}/s, "
            f"{errors} errors"
        )
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
        print(f"max throughput, wrk -c{args.connections} for {args.seconds:g} s:")
        print(wrk(gw_port, args.seconds, args.connections))


if __name__ == "__main__":
    main()
