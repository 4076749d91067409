"""Webhook delivery cost: the gateway's sender on aiohttp against the same sender on httpx.

Delivers ``--deliveries`` signed webhook POSTs per round (Standard Webhooks
headers, as the delivery worker builds them; ``--concurrency`` at once)
through :class:`agentcore.webhooks.sender.HttpSender` (aiohttp, the
gateway's) and through :class:`HttpxSender`, the same sender whose request
goes through an ``httpx.AsyncClient`` set up as the gateway's was before
issue 15 (pinned address, ``Host`` header, redirects off, no proxies from the
environment, up to 512 bytes of an error body). Both go through the SSRF
policy's lookup and check of every attempt.

The receiver is a separate process (``--serve``: a minimal keep-alive
HTTP/1.1 server on raw asyncio, on 127.0.0.1), so only the sending side's
CPU is counted: ``time.process_time()`` of this process, per delivery. The
clients take turns, round by round (A, B, A, B, ...; ``--rounds`` each, after
one warm-up round each that opens the connections), so load from other work
on the machine falls on both alike; the figures to compare are the ratios of
rounds next to each other, and the median of those ratios.

Bounded: at most ``--deliveries`` x (``--rounds`` + 1) x 3 requests (three clients), and the
run stops after ``--max-seconds``; the receiver exits with this process (its
stdin closes) or after ``--max-seconds`` itself.

    .venv/bin/python benchmarks/webhook_delivery_bench.py --deliveries 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any, cast

import httpx

from agentcore.webhooks import signing
from agentcore.webhooks.delivery import USER_AGENT
from agentcore.webhooks.sender import MAX_ERROR_BODY, HttpSender
from agentcore.webhooks.ssrf import AddressPolicy, parse_url

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: A typical event payload (about 300 bytes).
PAYLOAD = (
    b'{"type":"task.updated","timestamp":"2026-01-01T00:00:00.000Z","event_id":123456,'
    b'"data":{"task_id":"task_01HZX3T7Q9ZK5V8N2M4R6P1W0Y","state":"completed",'
    b'"agent_id":"agent-42","tenant":"default","result":{"summary":"done","tokens":512}}}'
)
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


# -- the receiver (its own process) ---------------------------------------------------


class Receiver(asyncio.Protocol):
    """Answers every request 200 "ok" on a kept-alive connection; knows only Content-Length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            answers += 1
        if answers and self.transport is not None:
            self.transport.write(ANSWER * answers)


async def serve(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin_closed, max_seconds)
    server.close()


@contextlib.contextmanager
def receiver(max_seconds: float) -> Iterator[tuple[int, int]]:
    """(port, pid) of a receiver process, stopped on leaving."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--max-seconds", str(max_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline()), proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the httpx sender (the baseline) --------------------------------------------------


class HttpxSender(HttpSender):
    """The gateway's sender with its request made by httpx, as it was before issue 15.

    ``keep_alive=False`` is that sender exactly: it left a 2xx answer unread,
    so httpx closed the connection and the next delivery opened a new one.
    ``keep_alive=True`` reads the (small) body first, so the connection is
    reused, as aiohttp reuses it: the libraries' own cost, side by side.
    """

    def __init__(self, policy: AddressPolicy, max_connections: int, keep_alive: bool) -> None:
        super().__init__(policy, max_connections)
        self._keep_alive = keep_alive
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def _post(
        self, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int | None, str | None, float | None]:
        target = parse_url(url)
        (address, *_) = await self._policy.resolve(target)
        request_headers = {**headers, "host": f"{target.host}:{target.port}"}
        pinned = httpx.URL(url).copy_with(host=str(address))
        async with self._client.stream(
            "POST", pinned, content=body, headers=request_headers, timeout=30.0
        ) as response:
            if 200 <= response.status_code < 300:
                if self._keep_alive:
                    await response.aread()
                return response.status_code, None, None
            data = b""
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= MAX_ERROR_BODY:
                    break
            return response.status_code, f"HTTP {response.status_code}", None

    async def close(self) -> None:
        await self._client.aclose()


# -- the run ----------------------------------------------------------------------------


async def deliver(sender: HttpSender, url: str, count: int, concurrency: int) -> None:
    async def one_at_a_time(n: int) -> None:
        for i in range(n):
            body = PAYLOAD
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                **signing.headers([SECRET], f"msg_{i}", int(time.time()), body),
            }
            result = await sender.send(url, headers, body, 30.0)
            if not result.ok:
                raise SystemExit(f"delivery failed: {result}")

    await asyncio.gather(*(one_at_a_time(count // concurrency) for _ in range(concurrency)))


async def rounds(args: argparse.Namespace, port: int, pid: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/hook"
    policy = AddressPolicy(["127.0.0.0/8"])
    senders: dict[str, HttpSender] = {
        "aiohttp": HttpSender(policy, args.concurrency),
        "httpx": HttpxSender(policy, args.concurrency, keep_alive=True),
        "httpx-before": HttpxSender(policy, args.concurrency, keep_alive=False),
    }
    per_round = args.deliveries // args.concurrency * args.concurrency
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in senders}
    lines = []
    deadline = time.monotonic() + args.max_seconds
    try:
        for sender in senders.values():  # warm-up: connections opened, code warm
            await deliver(sender, url, min(per_round, 500), args.concurrency)
        for n in range(args.rounds):
            order = list(senders.items())
            if n % 2:
                order.reverse()
            for name, sender in order:
                received, cpu, wall = cpu_s(pid), time.process_time(), time.perf_counter()
                await deliver(sender, url, per_round, args.concurrency)
                wall = time.perf_counter() - wall
                cpu = time.process_time() - cpu
                received = cpu_s(pid) - received
                figures[name].append(
                    (cpu / per_round * 1e6, per_round / wall, received / per_round * 1e6)
                )
                us, rate, rx = figures[name][-1]
                lines.append(
                    f"  round {n + 1} {name:12s} {us:7.1f} us CPU a delivery, "
                    f"{rate:6.0f} deliveries/s (receiver {rx:5.1f} us a request)"
                )
            if time.monotonic() > deadline:
                lines.append(f"  stopped after {n + 1} rounds: --max-seconds reached")
                break
    finally:
        for sender in senders.values():
            await sender.close()
    for name, rows in figures.items():
        lines.append(
            f"  median {name:12s} {statistics.median(r[0] for r in rows):7.1f} us CPU a delivery, "
            f"{statistics.median(r[1] for r in rows):6.0f} deliveries/s"
        )
    for name in ("httpx", "httpx-before"):
        ratios = [h[0] / a[0] for h, a in zip(figures[name], figures["aiohttp"], strict=False)]
        lines.append(
            f"  {name} / aiohttp CPU a delivery, round by round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )
    return lines


def on_uvloop(work: Callable[[], Any]) -> Any:
    """Run on uvloop when installed, as the gateway's own delivery does under uvicorn."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work())
    return uvloop.run(work())


def header(args: argparse.Namespace) -> str:
    versions = ", ".join(f"{n} {metadata.version(n)}" for n in ("aiohttp", "httpx", "uvloop"))
    one, five, _ = os.getloadavg()
    return "\n".join(
        [
            "Webhook delivery benchmark (benchmarks/webhook_delivery_bench.py)",
            f"date:     {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
            f"machine:  {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"load average {one:.2f} {five:.2f} before the run",
            f"software: Python {platform.python_version()}, {versions}",
            f"run:      {args.deliveries} deliveries a round, {args.concurrency} at once, "
            f"{args.rounds} rounds each, interleaved",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000, help="deliveries per round")
    parser.add_argument("--concurrency", type=int, default=16, help="deliveries at once")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per client")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop after this long")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        on_uvloop(lambda: serve(args.max_seconds))
        return
    print(header(args))
    with receiver(args.max_seconds + 30) as (port, pid):
        print("\n".join(on_uvloop(lambda: rounds(args, port, pid))))


if __name__ == "__main__":
    main()
