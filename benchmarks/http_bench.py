"""HTTP throughput of the gateway against nginx and a FastAPI reference, in one run.

Each server runs with one worker on its own loopback port, pinned to CPU 0;
``wrk`` (one thread, pinned to CPU 1) drives two routes in turn. Every server
is started (and checked and warmed up) first; then, in each of ``--rounds``
rounds, each server and route gets its slice of ``--duration``, in turn, so
that a slow spell of a shared machine falls on all of them alike. A row's
req/s is the mean over its rounds, and each ratio is also printed per round
(its spread shows how far to trust it). The routes:

* ``GET /api/v1/health``;
* ``POST /api/v1/jsonrpc`` with a JSON-RPC ``agent.ping`` for an agent that
  was registered first.

Servers: the gateway (``agentcore serve``, default configuration, a fresh
temporary data directory) once per ``--gateway-servers`` entry; nginx answering
both routes with a fixed body (the ceiling); a FastAPI + pydantic app
(``reference_fastapi.py``, what most Python gateways look like).

The protection layer's overhead: for each ``--protection-servers`` entry the
gateway also runs twice more: ``-bare`` (authentication
off, rate limiting off) and ``-protected`` (``auth.mode = "api_key"`` with a
key of tenant ``bench`` created by ``agentcore keys create`` before the server
starts, sent by wrk as ``Authorization: Bearer``; rate limiting on with a limit
far above the load). The agent is registered with that key, so it belongs to
the key's tenant, and every ping is an authenticated, rate-limited call. The
goal: protected ping / bare ping >= 0.85. Before measuring, the script checks
that the protection is what the variant says: an unauthenticated ping gets 401
from ``-protected`` and a result from the others, and ping answers carry
``X-RateLimit-Limit`` with the configured burst (``-protected``) or none
(``-bare``); a variant that fails the check is not measured, and its ratio is
INVALID.

A wrk Lua ``response`` callback counts every status other than 200 and, on the
ping route, every 200 whose body has no ``"result"`` (a JSON-RPC error); wrk's
own socket-error line is parsed too. A row with any of those is marked
invalid, and a ratio built on an invalid row is never a PASS, so a benchmark
of errors cannot pass as throughput.

The script installs nothing: a missing ``wrk`` ends the run with the command to
install it, a missing ``nginx`` skips the ceiling (ratios against it are then
unavailable). Every process it starts is stopped on exit, Ctrl-C and errors
included. Run ``python benchmarks/http_bench.py --help`` for the options;
``benchmarks/README.md`` explains the output and the goals.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
REPO_SRC = HERE.parent / "src"
REFERENCE_APP = HERE / "reference_fastapi.py"
FLOOR_APP = HERE / "floor_asgi.py"

HOST = "127.0.0.1"
HEALTH_PATH = "/api/v1/health"
RPC_PATH = "/api/v1/jsonrpc"
AGENT_ID = "bench-agent"
REGISTER: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "agent.register",
    "params": {
        "agent_card": {
            "agent_id": AGENT_ID,
            "name": "bench",
            "version": "1.0.0",
            "capabilities": ["text"],
            "endpoints": [
                {"url": "http://127.0.0.1:9/", "type": "http", "protocols": ["jsonrpc-2.0"]}
            ],
        }
    },
}
PING: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "agent.ping",
    "params": {"agent_id": AGENT_ID},
}
#: The fixed bodies nginx returns: shaped like the gateway's answers.
NGINX_HEALTH_BODY = (
    '{"status":"healthy","version":"0.0.0","uptime_s":1.0,"workers":1,'
    '"dependencies":{"database":{"status":"up","backend":"sqlite",'
    '"latency_ms":0.1}}}'
)
NGINX_PING_BODY = (
    '{"jsonrpc":"2.0","result":{"agent_id":"bench-agent","status":"active",'
    '"last_seen":"2026-01-01T00:00:00+00:00"},"id":1}'
)

SERVER_CPU = 0
WRK_CPU = 1
#: Seconds a server gets to answer its first health check.
STARTUP_TIMEOUT_S = 60.0
#: Seconds a server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0
#: Seconds wrk may overrun its ``-d`` before it is killed.
WRK_GRACE_S = 30.0
#: wrk's per-request timeout; slower answers count as socket timeouts.
WRK_TIMEOUT = "2s"

INSTALL_HINT = "apt-get install wrk nginx-light"
ROUTES = ("health", "ping")
KINDS = ("gateway", "nginx", "fastapi", "floor")
GATEWAY_SERVERS = ("uvicorn", "granian")
#: The tenant of the API key the ``-protected`` variants authenticate with.
BENCH_TENANT = "bench"
#: The ``-protected`` variants' rate limit (requests/s and burst): far above
#: what one worker can answer, so it is checked on every request but never hit.
PROTECTED_RATE_LIMIT = 10_000_000
#: ``-bare``: the protection layer off (the gateway's default has rate limiting
#: on, with a limit far above the load, and authentication off).
BARE_ENV = {"AGENTCORE_AUTH__MODE": "off", "AGENTCORE_RATE_LIMIT__ENABLED": "false"}
PROTECTED_ENV = {
    "AGENTCORE_AUTH__MODE": "api_key",
    "AGENTCORE_RATE_LIMIT__ENABLED": "true",
    "AGENTCORE_RATE_LIMIT__RATE": str(PROTECTED_RATE_LIMIT),
    "AGENTCORE_RATE_LIMIT__BURST": str(PROTECTED_RATE_LIMIT),
}
#: A key as ``agentcore keys create`` prints it.
KEY_LINE = re.compile(r"^key:\s+(ak_\S+)\s*$", re.M)


@dataclass(frozen=True)
class Goal:
    """``numerator route / denominator route >= minimum`` for every gateway variant."""

    route: str
    reference: str
    minimum: float


GOALS = (
    Goal("health", "nginx", 0.40),
    Goal("ping", "nginx", 0.25),
    Goal("ping", "fastapi", 3.0),
)
#: ``gateway-<server>-protected ping / gateway-<server>-bare ping``.
PROTECTION_GOAL = Goal("ping", "bare", 0.85)


@dataclass(frozen=True)
class Target:
    """A server to start and measure."""

    name: str
    port: int
    argv: list[str]
    env: dict[str, str]
    #: Whether ``agent.register`` must be sent before pinging.
    register: bool
    #: A command that creates an API key and prints it (``key: ak_...``), run
    #: before the server starts; wrk and the checks then send it as a bearer token.
    key_argv: list[str] | None = None
    #: Checked before measuring: whether a ping without credentials must get 401.
    requires_auth: bool = False
    #: Checked before measuring: the ``X-RateLimit-Limit`` the ping answers
    #: must carry ('' for none); None: not checked.
    ratelimit_limit: str | None = None


@dataclass
class Result:
    """One wrk run: one server, one route."""

    server: str
    route: str
    requests: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    #: Responses whose status was not 200 (counted by the Lua ``response`` callback).
    non_200: int = 0
    #: 200 responses to the ping without a ``"result"`` member (JSON-RPC errors).
    rpc_errors: int = 0
    #: wrk's own "Non-2xx or 3xx responses" line (wrk counts statuses > 399 there).
    wrk_non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    #: CPU used during the run, in % of one CPU: the server (its whole process
    #: group), wrk, and everything else on the machine (other users, steal time).
    server_cpu_pct: float | None = None
    #: Server CPU time per answered request, in microseconds: less sensitive to
    #: other load than req/s, so the figure to compare between noisy runs.
    server_cpu_us_per_request: float | None = None
    wrk_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    error: str = ""
    wrk_output: str = ""

    @property
    def skewed(self) -> bool:
        """Other processes used enough CPU during the run to distort it."""
        return self.other_cpu_pct is not None and self.other_cpu_pct >= NOISY_PCT

    @property
    def valid(self) -> bool:
        return (
            not self.error
            and self.requests > 0
            and self.non_200 == 0
            and self.rpc_errors == 0
            and self.wrk_non_2xx_3xx == 0
            and sum(self.socket_errors.values()) == 0
        )


@dataclass
class Ratio:
    label: str
    variant: str
    route: str
    reference: str
    minimum: float
    value: float | None
    verdict: str
    #: The same ratio in each round (the variant's and the reference's slices of that round).
    per_round: list[float] = field(default_factory=list)


# -- output -------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


# -- processes ----------------------------------------------------------------


class Processes:
    """Every server this run starts; :meth:`stop_all` ends them, children included.

    Each server gets its own session (so Ctrl-C in the terminal reaches only this
    script, which then stops them in order) and is stopped by its process group:
    SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`.
    """

    def __init__(self) -> None:
        self._running: list[tuple[subprocess.Popen[bytes], TextIO]] = []

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        log = log_path.open("w")
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self._running.append((proc, log))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for entry in list(self._running):
            if entry[0] is proc:
                self._running.remove(entry)
                _terminate(proc)
                entry[1].close()

    def stop_all(self) -> None:
        while self._running:
            self.stop(self._running[-1][0])


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)
    # Worker processes the server left behind share its process group.
    _signal_group(proc, signal.SIGKILL)


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind like Ctrl-C so every server is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


# -- HTTP checks --------------------------------------------------------------

# No proxies: http_proxy in the environment must not capture loopback checks.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Answer:
    status: int
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes


def http(
    method: str,
    url: str,
    payload: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> Answer:
    data = None if payload is None else json.dumps(payload).encode()
    sent = dict(headers or {})
    if data is not None:
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return Answer(
                int(response.status),
                {k.lower(): v for k, v in response.headers.items()},
                bytes(response.read()),
            )
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}\n{tail(log_path)}")
        with contextlib.suppress(OSError):
            if http("GET", url, timeout_s=1.0).status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"no 200 from {url} within {STARTUP_TIMEOUT_S:.0f} s\n{tail(log_path)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    | {line}" for line in text[-lines:])


def check_rpc(
    base: str, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> tuple[str, Answer]:
    """Send one JSON-RPC call; return what is wrong with the answer ('' if nothing), and it."""
    answer = http("POST", base + RPC_PATH, payload, headers)
    snippet = answer.body[:300].decode(errors="replace")
    if answer.status != 200:
        return f"{payload['method']}: HTTP {answer.status}: {snippet}", answer
    try:
        document = json.loads(answer.body)
    except ValueError:
        return f"{payload['method']}: not JSON: {snippet}", answer
    if not isinstance(document, dict) or "result" not in document:
        return f"{payload['method']}: no result: {snippet}", answer
    return "", answer


def check_protection(target: Target, base: str, ping: Answer) -> str:
    """What differs from the protection ``target`` says it has ('' if nothing).

    ``ping`` is the answer to an authenticated ping (a plain one without a key).
    """
    if target.requires_auth:
        anonymous = http("POST", base + RPC_PATH, PING)
        if anonymous.status != 401:
            return f"authentication is off: a ping without a key got HTTP {anonymous.status}"
    if target.ratelimit_limit is not None:
        found = ping.headers.get("x-ratelimit-limit", "")
        if found != target.ratelimit_limit:
            want = target.ratelimit_limit or "none"
            return (
                f"rate limiting is not as configured: X-RateLimit-Limit "
                f"{found or 'absent'} on a ping, expected {want}"
            )
    return ""


def create_key(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """Run ``agentcore keys create``; the key it printed. RuntimeError if it failed."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"keys create: {exc}") from exc
    found = KEY_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"keys create exited with {done.returncode}, printed no key: "
            f"{(done.stdout + done.stderr).strip()[:300]}"
        )
    return found[1]


# -- CPU accounting -----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Other processes using this much of one CPU during a run skew it (flagged under the table).
NOISY_PCT = 10.0
#: A machine is idle enough to start measuring below this share of all CPUs busy.
IDLE_BELOW = 0.10


def busy_cpu_s() -> float | None:
    """CPU seconds all CPUs were busy since boot (steal time included); None without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of process group ``pgid``."""
    ticks = 0
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            rest = text[text.rfind(")") + 2 :].split()
            if int(rest[2]) == pgid:
                ticks += int(rest[11]) + int(rest[12])
    return ticks / CLOCK_TICKS


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_share(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over the next ``seconds`` (0..1); None without /proc."""
    before = busy_cpu_s()
    time.sleep(seconds)
    after = busy_cpu_s()
    if before is None or after is None:
        return None
    return (after - before) / seconds / (os.cpu_count() or 1)


def wait_idle(limit_s: float) -> float | None:
    """Wait up to ``limit_s`` for the machine to go quiet; return the last busy share."""
    deadline = time.monotonic() + limit_s
    share = busy_share()
    while share is not None and share >= IDLE_BELOW and time.monotonic() < deadline:
        share = busy_share()
    return share


# -- wrk ----------------------------------------------------------------------

LUA_TEMPLATE = """\
-- Generated by benchmarks/http_bench.py.
wrk.method = "{method}"
{body}
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non200 = 0
  rpc_errors = 0
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif {check_result} and not string.find(body, '"result"', 1, true) then
    rpc_errors = rpc_errors + 1
  end
end

function done(summary, latency, requests)
  local bad, rpc = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non200")
    rpc = rpc + thread:get("rpc_errors")
  end
  io.write(string.format("BENCH non200=%d rpc_errors=%d\\n", bad, rpc))
end
"""


def write_lua(
    directory: Path, route: str, headers: Mapping[str, str] | None = None, prefix: str = ""
) -> Path:
    """The wrk script for ``route``, sending ``headers`` with every request."""
    lines = [
        f'wrk.headers["{name}"] = [==[{value}]==]\n' for name, value in (headers or {}).items()
    ]
    if route == "ping":
        body = (
            f"wrk.body = [==[{json.dumps(PING, separators=(',', ':'))}]==]\n"
            'wrk.headers["Content-Type"] = "application/json"\n' + "".join(lines)
        )
        script = LUA_TEMPLATE.format(method="POST", body=body, check_result="true")
    else:
        script = LUA_TEMPLATE.format(method="GET", body="".join(lines), check_result="false")
    path = directory / f"{prefix}{route}.lua"
    path.write_text(script)
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(result: Result, text: str) -> None:
    result.wrk_output = text
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.M):
        result.requests = int(m[1])
        result.duration_s = to_ms(m[2], m[3]) / 1000.0
    if m := re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M):
        result.requests_per_s = float(m[1])
    for pct, value, unit in re.findall(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        if pct == "50":
            result.p50_ms = to_ms(value, unit)
        else:
            result.p99_ms = to_ms(value, unit)
    # wrk prints the socket-error line only when there were some.
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    counts = [int(m[i]) for i in range(1, 5)] if m else [0, 0, 0, 0]
    result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), counts, strict=True))
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text):
        result.wrk_non_2xx_3xx = int(m[1])
    if m := re.search(r"^BENCH non200=(\d+) rpc_errors=(\d+)", text, re.M):
        result.non_200 = int(m[1])
        result.rpc_errors = int(m[2])
    else:
        result.error = "wrk printed no Lua status counts"
    if not result.requests_per_s and not result.error:
        result.error = "wrk reported no throughput"


@dataclass(frozen=True)
class Wrk:
    executable: str
    pin: list[str]
    threads: int
    connections: int

    def run(self, url: str, script: Path, seconds: int) -> subprocess.CompletedProcess[str]:
        argv = [
            *self.pin,
            self.executable,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            WRK_TIMEOUT,
            "-s",
            str(script),
            url,
        ]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + WRK_GRACE_S, check=False
        )

    def measure(
        self, server: str, route: str, url: str, script: Path, seconds: int, server_pgid: int
    ) -> Result:
        result = Result(server=server, route=route)
        started = time.monotonic()
        busy, own, wrk = busy_cpu_s(), group_cpu_s(server_pgid), children_cpu_s()
        try:
            done = self.run(url, script, seconds)
        except subprocess.TimeoutExpired:
            result.error = f"wrk did not finish within {seconds + WRK_GRACE_S:.0f} s"
            return result
        wall = time.monotonic() - started
        own = group_cpu_s(server_pgid) - own
        wrk = children_cpu_s() - wrk
        busy_after = busy_cpu_s()
        result.server_cpu_pct = 100 * own / wall
        result.wrk_cpu_pct = 100 * wrk / wall
        if busy is not None and busy_after is not None:
            result.other_cpu_pct = max(0.0, 100 * (busy_after - busy - own - wrk) / wall)
        parse_wrk(result, done.stdout)
        if result.requests:
            result.server_cpu_us_per_request = 1e6 * own / result.requests
        if done.returncode != 0:
            result.error = f"wrk exited with {done.returncode}: {done.stderr.strip()[:300]}"
        return result


# -- targets ------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """The environment of the servers: this one minus the gateway's own settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTCORE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


def with_paths(env: dict[str, str], *first: str) -> dict[str, str]:
    """``env`` with ``first``, then the repository's ``src/`` when agentcore is not
    installed, ahead of its PYTHONPATH."""
    paths = list(first)
    if importlib.util.find_spec("agentcore") is None and (REPO_SRC / "agentcore").is_dir():
        paths.append(str(REPO_SRC))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH")) if p)
    return env


def gateway_target(
    server: str, port: int, data_dir: Path, pin: list[str], protection: str = ""
) -> Target:
    """The gateway under ``server``: its default configuration, or with
    ``protection`` ``"bare"`` (auth and rate limiting off) or ``"protected"``
    (API key auth, a rate limit far above the load)."""
    env = with_paths(base_env())
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
        str(data_dir),
        "--server",
        server,
        "--workers",
        "1",
    ]
    name = f"gateway-{server}"
    if protection == "bare":
        return Target(f"{name}-bare", port, argv, env | BARE_ENV, register=True, ratelimit_limit="")
    if protection == "protected":
        env |= PROTECTED_ENV
        key_argv = [
            sys.executable,
            "-m",
            "agentcore.cli",
            "keys",
            "create",
            "--tenant",
            BENCH_TENANT,
            "--name",
            "http-bench",
            "--data-dir",
            str(data_dir),
        ]
        return Target(
            f"{name}-protected",
            port,
            argv,
            env,
            register=True,
            key_argv=key_argv,
            requires_auth=True,
            ratelimit_limit=str(PROTECTED_RATE_LIMIT),
        )
    return Target(name, port, argv, env, register=True)


def nginx_config(directory: Path, port: int) -> Path:
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(f"""\
# Generated by benchmarks/http_bench.py: a fixed-body ceiling, one process.
worker_processes 1;
daemon off;
master_process off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location = {HEALTH_PATH} {{ return 200 '{NGINX_HEALTH_BODY}'; }}
        location = {RPC_PATH} {{ return 200 '{NGINX_PING_BODY}'; }}
    }}
}}
""")
    return conf


def nginx_target(executable: str, port: int, directory: Path, pin: list[str]) -> Target:
    conf = nginx_config(directory, port)
    argv = [
        *pin,
        executable,
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(conf),
    ]
    return Target("nginx", port, argv, base_env(), register=False)


def floor_target(server: str, port: int, pin: list[str]) -> Target:
    """An ASGI app that does nothing, under ``server`` as ``agentcore serve`` runs the gateway."""
    argv = [
        *pin,
        sys.executable,
        str(FLOOR_APP),
        "--host",
        HOST,
        "--port",
        str(port),
        "--server",
        server,
    ]
    env = with_paths(base_env(), str(HERE))
    return Target(f"floor-{server}", port, argv, env, register=False)


def fastapi_target(port: int, pin: list[str]) -> Target:
    argv = [*pin, sys.executable, str(REFERENCE_APP), "--host", HOST, "--port", str(port)]
    return Target("fastapi", port, argv, base_env(), register=True)


# -- machine ------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "unknown"


def gateway_revision() -> str:
    """The checkout's commit, and whether src/ differs from it ('' outside a git checkout).

    When the gateway would import ``agentcore`` from elsewhere (an installed
    copy, or a tree put first on ``PYTHONPATH``), that is what is said instead.
    """
    spec = importlib.util.find_spec("agentcore")
    if spec is not None and spec.origin:
        package = Path(spec.origin).resolve().parent
        if package != (REPO_SRC / "agentcore").resolve():
            return f"agentcore from {package} (not this checkout's src/)"
    git = shutil.which("git")
    if git is None or not (HERE.parent / ".git").exists():
        return ""
    head = tool_version([git, "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        [git, "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return f"commit {head}" + (" + uncommitted changes in src/" if dirty else "")


def machine(wrk: str | None, nginx: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wrk": tool_version([wrk, "-v"]) if wrk else "wrk not installed",
        "nginx": tool_version([nginx, "-v"]) if nginx else "nginx not installed",
        "gateway_revision": gateway_revision(),
    }
    for package in ("uvicorn", "granian", "fastapi", "pydantic", "msgspec"):
        info[package] = version_of(package)
    return info


# -- report -------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_table(results: Sequence[Result]) -> None:
    width = max([18, *(len(r.server) for r in results)])
    header = (
        f"{'server':<{width}} {'route':<7} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-200':>8} {'rpc err':>8} {'sock err':>8} "
        f"{'srv cpu%':>8} {'us/req':>7} {'wrk cpu%':>8} {'other%':>6}"
    )
    out(header)
    out("-" * len(header))
    for r in results:
        rps = f"{r.requests_per_s:,.0f}" if r.requests_per_s else "-"
        out(
            f"{r.server:<{width}} {r.route:<7} {rps:>10} {fmt_ms(r.p50_ms):>8} "
            f"{fmt_ms(r.p99_ms):>8} {r.non_200:>8} {r.rpc_errors:>8} "
            f"{sum(r.socket_errors.values()):>8} {fmt_pct(r.server_cpu_pct):>8} "
            f"{fmt_us(r.server_cpu_us_per_request):>7} "
            f"{fmt_pct(r.wrk_cpu_pct):>8} {fmt_pct(r.other_cpu_pct):>6}"
        )
    for r in results:
        if r.error:
            out(f"  ! {r.server} {r.route}: {r.error}")
        elif not r.valid:
            out(
                f"  ! {r.server} {r.route}: errors during the run; its figures are not throughput"
                f" (wrk: non-2xx/3xx {r.wrk_non_2xx_3xx}, socket {r.socket_errors})"
            )
        if r.skewed and r.other_cpu_pct is not None:
            out(
                f"  ! {r.server} {r.route}: other processes used {r.other_cpu_pct:.0f}% of a CPU"
                " during the run; its figures are skewed"
            )


def ratio(
    by_key: Mapping[tuple[str, str], Result],
    label: str,
    variant: str,
    route: str,
    reference: str,
    minimum: float,
    unavailable: str = "",
) -> Ratio:
    """``variant``'s req/s on ``route`` over ``reference``'s, judged against ``minimum``."""
    mine = by_key.get((variant, route))
    ref = by_key.get((reference, route))
    value: float | None = None
    if unavailable:
        verdict = f"unavailable ({unavailable})"
    elif mine is None or ref is None:
        verdict = "unavailable (not measured)"
    elif not (mine.valid and ref.valid) or not ref.requests_per_s:
        verdict = "INVALID (errors in the run)"
    else:
        value = mine.requests_per_s / ref.requests_per_s
        verdict = "PASS" if value >= minimum else "FAIL"
        if mine.skewed or ref.skewed:
            verdict += " (a row is skewed by other load; re-run on a quiet machine)"
    return Ratio(label, variant, route, reference, minimum, value, verdict)


def ratios(
    results: Sequence[Result], variants: Sequence[str], unavailable: Mapping[str, str]
) -> list[Ratio]:
    by_key = {(r.server, r.route): r for r in results}
    return [
        ratio(
            by_key,
            f"{variant} {goal.route} / {goal.reference} {goal.route}",
            variant,
            goal.route,
            goal.reference,
            goal.minimum,
            unavailable.get(goal.reference, ""),
        )
        for variant in variants
        for goal in GOALS
    ]


def protection_ratios(results: Sequence[Result], servers: Sequence[str]) -> list[Ratio]:
    """For each server: its ``-protected`` ping req/s over its ``-bare`` ping req/s."""
    by_key = {(r.server, r.route): r for r in results}
    goal = PROTECTION_GOAL
    return [
        ratio(
            by_key,
            f"gateway-{server}: protected {goal.route} / bare {goal.route}",
            f"gateway-{server}-protected",
            goal.route,
            f"gateway-{server}-bare",
            goal.minimum,
        )
        for server in servers
    ]


def add_rounds(
    found: Sequence[Ratio], per_round: Mapping[tuple[str, str], Sequence[Result]]
) -> None:
    """Each ratio's value in each round, where both of its rows were measured validly."""
    for r in found:
        if r.value is None:
            continue
        mine = per_round.get((r.variant, r.route), ())
        ref = per_round.get((r.reference, r.route), ())
        r.per_round = [
            m.requests_per_s / f.requests_per_s
            for m, f in zip(mine, ref, strict=False)
            if m.valid and f.valid and f.requests_per_s
        ]


def print_ratios(found: Sequence[Ratio], empty: str = "no gateway variant was measured") -> None:
    if not found:
        out(empty)
    for r in found:
        value = "-" if r.value is None else f"{r.value:.3f}"
        spread = ""
        if len(r.per_round) > 1:
            spread = (
                f"  rounds {min(r.per_round):.3f}..{max(r.per_round):.3f}, "
                f"median {statistics.median(r.per_round):.3f}"
            )
        out(f"{r.label:<44} {value:>7}  (goal >= {r.minimum:.2f})  {r.verdict}{spread}")


# -- the run ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="HTTP throughput of the gateway vs nginx and a FastAPI reference (wrk)."
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=10,
        help="seconds per server and route, split over the rounds (default 10)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds: every server and route is measured once per round, in "
        "turn, for duration/rounds seconds (default 5)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="warm-up seconds per server, split over the routes (default 2)",
    )
    parser.add_argument(
        "--only",
        default=",".join(KINDS),
        help="comma-separated subset of gateway,nginx,fastapi,floor (default all)",
    )
    parser.add_argument(
        "--gateway-servers",
        default="uvicorn,granian",
        help="comma-separated gateway ASGI servers to run the gateway under with "
        "its default configuration; 'none' for none (default "
        "uvicorn,granian)",
    )
    parser.add_argument(
        "--protection-servers",
        default="uvicorn",
        metavar="LIST",
        help="comma-separated gateway ASGI servers to also run bare (auth and "
        "rate limiting off) and protected (API key auth, a rate limit far "
        "above the load), for the protection-layer overhead ratio; "
        "'none' for none (default uvicorn, the default server)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each round, wait up to S seconds for the CPUs to be "
        f"under {IDLE_BELOW * 100:.0f}%% busy (default 0: do not wait)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.kinds = _choices(parser, "--only", args.only, KINDS)
    args.servers = _choices(
        parser, "--gateway-servers", args.gateway_servers, GATEWAY_SERVERS, allow_none=True
    )
    args.protection = _choices(
        parser, "--protection-servers", args.protection_servers, GATEWAY_SERVERS, allow_none=True
    )
    if args.duration < 1 or args.connections < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--duration, --rounds and --connections must be >= 1, --warmup >= 0")
    if not 1 <= args.threads <= args.connections:
        parser.error("--threads must be between 1 and --connections")
    return args


def _choices(
    parser: argparse.ArgumentParser,
    flag: str,
    raw: str,
    allowed: Sequence[str],
    allow_none: bool = False,
) -> list[str]:
    if allow_none and raw.strip() == "none":
        return []
    picked = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = sorted(set(picked) - set(allowed))
    if unknown or not picked:
        extra = " or none" if allow_none else ""
        parser.error(f"{flag}: choose from {','.join(allowed)}{extra} (got {raw!r})")
    return list(dict.fromkeys(picked))


def pinning() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and for wrk, and a line saying what was done."""
    taskset = shutil.which("taskset")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if taskset and {SERVER_CPU, WRK_CPU} <= cpus:
        return (
            [taskset, "-c", str(SERVER_CPU)],
            [taskset, "-c", str(WRK_CPU)],
            f"server on CPU {SERVER_CPU}, wrk on CPU {WRK_CPU} (taskset)",
        )
    why = "taskset not found" if not taskset else f"CPUs {sorted(cpus)} available"
    return [], [], f"not pinned ({why})"


@dataclass
class Running:
    """A started, checked and warmed-up server, ready to be measured."""

    target: Target
    proc: subprocess.Popen[bytes]
    urls: dict[str, str]
    scripts: dict[str, Path]
    log_path: Path


def start_target(
    target: Target,
    procs: Processes,
    wrk: Wrk,
    workdir: Path,
    args: argparse.Namespace,
    scripts: Mapping[str, Path],
) -> Running | list[Result]:
    """Start ``target``, check it and warm it up; the results saying why it cannot be
    measured instead, when it cannot (the server is then stopped)."""
    log_path = workdir / f"{target.name}.log"
    base = f"http://{HOST}:{target.port}"
    urls = {"health": base + HEALTH_PATH, "ping": base + RPC_PATH}
    headers: dict[str, str] = {}
    if target.key_argv is not None:
        try:
            key = create_key(target.key_argv, target.env)
        except RuntimeError as exc:
            progress(f"{target.name}: no API key: {exc}")
            return [Result(target.name, route, error="no API key") for route in ROUTES]
        headers["Authorization"] = f"Bearer {key}"
        scripts = {route: write_lua(workdir, route, headers, f"{target.name}-") for route in ROUTES}
    progress(f"{target.name}: starting on port {target.port}")
    proc = procs.start(target.argv, target.env, log_path)
    try:
        wait_ready(proc, urls["health"], log_path)
    except RuntimeError as exc:
        progress(f"{target.name}: did not start: {exc}")
        procs.stop(proc)
        return [Result(target.name, route, error="server did not start") for route in ROUTES]
    # With authentication on, the agent belongs to the key's tenant: it is
    # registered with the same key the pings are sent with.
    problem = check_rpc(base, REGISTER, headers)[0] if target.register else ""
    ping_problem, ping = check_rpc(base, PING, headers)
    problem = problem or ping_problem
    if problem:
        progress(
            f"{target.name}: check failed ({problem}); measuring anyway, "
            "the error counts will show it"
        )
    elif mismatch := check_protection(target, base, ping):
        progress(f"{target.name}: {mismatch}; not measured")
        procs.stop(proc)
        return [Result(target.name, route, error=mismatch) for route in ROUTES]
    per_route = math.ceil(args.warmup / len(ROUTES))
    if per_route:
        progress(f"{target.name}: warming up {per_route * len(ROUTES)} s")
        for route in ROUTES:
            wrk.run(urls[route], scripts[route], per_route)
    return Running(target, proc, urls, dict(scripts), log_path)


def measure_round(running: Running, wrk: Wrk, seconds: int) -> list[Result]:
    """One slice of ``seconds`` per route on a running server."""
    results = []
    for route in ROUTES:
        result = wrk.measure(
            running.target.name,
            route,
            running.urls[route],
            running.scripts[route],
            seconds,
            running.proc.pid,
        )
        if running.proc.poll() is not None:
            result.error = result.error or f"server exited with status {running.proc.returncode}"
            progress(f"{running.target.name} died:\n{tail(running.log_path)}")
        results.append(result)
    return results


def merge(rounds: Sequence[Result]) -> Result:
    """One server's and route's rounds as one result: requests and time summed (so
    req/s is the mean over the rounds), latency percentiles the median of the
    rounds', errors summed, CPU shares weighted by time."""
    first = rounds[0]
    merged = Result(first.server, first.route)
    merged.requests = sum(r.requests for r in rounds)
    merged.duration_s = sum(r.duration_s for r in rounds)
    merged.requests_per_s = merged.requests / merged.duration_s if merged.duration_s else 0.0
    for name in ("p50_ms", "p99_ms"):
        values = [v for r in rounds if (v := getattr(r, name)) is not None]
        setattr(merged, name, statistics.median(values) if values else None)
    merged.non_200 = sum(r.non_200 for r in rounds)
    merged.rpc_errors = sum(r.rpc_errors for r in rounds)
    merged.wrk_non_2xx_3xx = sum(r.wrk_non_2xx_3xx for r in rounds)
    for r in rounds:
        for kind, count in r.socket_errors.items():
            merged.socket_errors[kind] = merged.socket_errors.get(kind, 0) + count
    timed = [r for r in rounds if r.duration_s]
    for name in ("server_cpu_pct", "wrk_cpu_pct", "other_cpu_pct"):
        values = [(getattr(r, name), r.duration_s) for r in timed if getattr(r, name) is not None]
        if values:
            setattr(merged, name, sum(v * d for v, d in values) / sum(d for _, d in values))
    if merged.server_cpu_pct is not None and merged.requests:
        merged.server_cpu_us_per_request = (
            1e6 * merged.server_cpu_pct / 100 * merged.duration_s / merged.requests
        )
    merged.error = "; ".join(dict.fromkeys(r.error for r in rounds if r.error))
    merged.wrk_output = "\n".join(r.wrk_output for r in rounds)
    return merged


def run(args: argparse.Namespace) -> int:
    wrk_path = shutil.which("wrk")
    nginx_path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    info = machine(wrk_path, nginx_path)
    server_pin, wrk_pin, pin_note = pinning()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    unavailable: dict[str, str] = {}

    out("HTTP throughput benchmark (benchmarks/http_bench.py)")
    out(f"date:     {info['date']}")
    out(f"machine:  {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}")
    out(
        f"software: Python {info['python']}, {info['wrk']}, {info['nginx']}, "
        f"uvicorn {info['uvicorn']}, granian {info['granian']}, fastapi {info['fastapi']}, "
        f"pydantic {info['pydantic']}"
    )
    if info["gateway_revision"]:
        out(f"gateway:  {info['gateway_revision']}")
    out(f"command:  {command}")
    out(
        f"load:     wrk -t{args.threads} -c{args.connections} --latency, "
        f"{args.rounds} rounds of {max(1, round(args.duration / args.rounds))} s per server "
        f"and route (every server started first, measured in turn each round), "
        f"{args.warmup} s warm-up per server; one server worker; {pin_note}"
        + (
            f"; waits up to {args.wait_idle:g} s for an idle machine before each round"
            if args.wait_idle
            else ""
        )
    )
    if "gateway" in args.kinds and args.protection:
        out(
            f"protection: gateway-<server>-bare: AGENTCORE_AUTH__MODE=off, "
            f"AGENTCORE_RATE_LIMIT__ENABLED=false; gateway-<server>-protected: "
            f"AGENTCORE_AUTH__MODE=api_key (a key of tenant {BENCH_TENANT}, sent as "
            f"Authorization: Bearer on both routes; health stays open), rate limit "
            f"{PROTECTED_RATE_LIMIT}/s burst {PROTECTED_RATE_LIMIT}; "
            f"for {','.join(args.protection)}"
        )
    out(f"loadavg:  {info['loadavg_before']} (before the run; other load skews the figures)")

    if wrk_path is None:
        out(f"wrk is not installed: nothing to measure. Install it with: {INSTALL_HINT}")
        return 2
    if "nginx" in args.kinds and nginx_path is None:
        unavailable["nginx"] = "nginx not installed"
        out(
            f"nginx is not installed: skipping the ceiling, ratios vs nginx are unavailable. "
            f"Install it with: {INSTALL_HINT}"
        )
    elif "nginx" not in args.kinds:
        unavailable["nginx"] = "nginx not measured (--only)"
    if "fastapi" in args.kinds and not all(
        importlib.util.find_spec(m) for m in ("fastapi", "pydantic", "uvicorn")
    ):
        unavailable["fastapi"] = "fastapi/pydantic/uvicorn not installed"
        out(
            "fastapi, pydantic or uvicorn is missing: skipping the FastAPI reference "
            "(pip install fastapi pydantic 'uvicorn[standard]')."
        )
    elif "fastapi" not in args.kinds:
        unavailable["fastapi"] = "fastapi not measured (--only)"
    servers = list(args.servers) if "gateway" in args.kinds else []
    protection = list(args.protection) if "gateway" in args.kinds else []
    if "granian" in servers + protection and importlib.util.find_spec("granian") is None:
        servers = [s for s in servers if s != "granian"]
        protection = [s for s in protection if s != "granian"]
        out(
            "granian is not installed: skipping the granian gateway variants (pip install granian)."
        )

    results: list[Result] = []
    per_round: dict[tuple[str, str], list[Result]] = {}
    procs = Processes()
    previous = {s: signal.signal(s, _raise_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with tempfile.TemporaryDirectory(prefix="agentcore-http-bench-") as tmp:
            workdir = Path(tmp)
            wrk = Wrk(wrk_path, wrk_pin, args.threads, args.connections)
            scripts = {route: write_lua(workdir, route) for route in ROUTES}
            targets: list[Target] = []
            if "nginx" in args.kinds and nginx_path is not None:
                targets.append(nginx_target(nginx_path, free_port(), workdir / "nginx", server_pin))
            if "fastapi" in args.kinds and "fastapi" not in unavailable:
                targets.append(fastapi_target(free_port(), server_pin))
            if "floor" in args.kinds:
                targets.extend(floor_target(s, free_port(), server_pin) for s in servers)
            for server in dict.fromkeys(servers + protection):
                variants = ([""] if server in servers else []) + (
                    ["bare", "protected"] if server in protection else []
                )
                for variant in variants:
                    data_dir = workdir / "-".join(filter(None, ("data", server, variant)))
                    targets.append(
                        gateway_target(server, free_port(), data_dir, server_pin, variant)
                    )
            budget = len(targets) * (len(ROUTES) * args.duration + args.warmup + 5)
            budget += math.ceil(args.rounds * max(args.wait_idle, 1.0))
            progress(f"{len(targets)} servers, {args.rounds} rounds, about {budget} s")
            running: list[Running] = []
            for target in targets:
                started = start_target(target, procs, wrk, workdir, args, scripts)
                if isinstance(started, Running):
                    running.append(started)
                else:
                    results.extend(started)
            # Every server measured in every round, in turn: a slow minute of the
            # machine falls on all of them, not on whichever ran then.
            slice_s = max(1, round(args.duration / args.rounds))
            rounds: dict[tuple[str, str], list[Result]] = {}
            for n in range(1, args.rounds + 1):
                share = wait_idle(args.wait_idle)
                note = f" (machine {share:.0%} busy before)" if share is not None else ""
                progress(f"round {n} of {args.rounds}: {slice_s} s per server and route{note}")
                for server in running:
                    for result in measure_round(server, wrk, slice_s):
                        rounds.setdefault((result.server, result.route), []).append(result)
            results.extend(merge(found) for found in rounds.values())
            per_round.update(rounds)
    finally:
        procs.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    variants = [f"gateway-{s}" for s in servers]
    found = ratios(results, variants, unavailable)
    # The same goals for an app that does nothing: a goal the floor misses is out of
    # reach for any ASGI app on this server and machine.
    floor = (
        [
            r
            for r in ratios(results, [f"floor-{s}" for s in servers], unavailable)
            if r.reference == "nginx"
        ]
        if "floor" in args.kinds
        else []
    )
    protected = protection_ratios(results, protection)
    for group in (found, floor, protected):
        add_rounds(group, per_round)
    out()
    print_table(results)
    out()
    out("ratios (req/s):")
    print_ratios(found)
    if floor:
        out()
        out("the floor (an ASGI app doing nothing, on each server) against the same goals:")
        print_ratios(floor)
    if protection:
        out()
        out("protection layer overhead (req/s; API key auth and rate limiting on / both off):")
        print_ratios(protected)
    out(f"loadavg after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "command": command,
                    "pinning": pin_note,
                    "settings": {
                        "duration_s": args.duration,
                        "rounds": args.rounds,
                        "connections": args.connections,
                        "threads": args.threads,
                        "warmup_s": args.warmup,
                        "wait_idle_s": args.wait_idle,
                    },
                    "results": [
                        asdict(r) | {"valid": r.valid, "skewed": r.skewed} for r in results
                    ],
                    "ratios": [asdict(r) for r in found],
                    "floor_ratios": [asdict(r) for r in floor],
                    "protection_ratios": [asdict(r) for r in protected],
                },
                indent=2,
            )
            + "\n"
        )
        progress(f"wrote {args.json}")
    return 0 if all(r.valid for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        progress("interrupted; every server was stopped")
        return 128 + signal.SIGINT
    except Interrupted as exc:
        progress(f"{exc}; every server was stopped")
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
