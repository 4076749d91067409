"""One load-test run: start what the scenario needs, warm up, run Locust, measure, judge.

For each scenario the runner

1. starts the scenario's helpers (a fake LLM provider, a webhook receiver) and,
   unless ``--host`` names a running gateway, a gateway of its own
   (``agentcore serve`` on a free port, a fresh data directory inside the
   result folder, the scenario's settings; optionally pinned with
   ``taskset``/``nice``);
2. warms up (a short Locust run of the same scenario, discarded);
3. reads ``/metrics``, then runs Locust headless as a child process
   (``--csv <out>/<scenario> --csv-full-history``, ``AGENTCORE_LOADTEST_OUT=<out>``,
   :mod:`.locust_plugin` alongside to record every request), while a sampler
   thread reads, every second, the CPU and RSS of the gateway's and Locust's
   process trees from ``/proc``, the machine's CPU, and the gateway's
   WebSocket gauge; a progress line is printed every few seconds;
4. reads ``/metrics`` again; for ``http`` measures raw throughput with wrk;
5. stops everything it started (on errors and Ctrl-C too) and writes the
   result folder: Locust's CSVs, ``summary.json``, ``report.html``,
   ``samples.csv``, the logs.

Every process started here is stopped by its own handle, never by name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentcore import apikeys
from agentcore.loadtest import figures as figures_mod
from agentcore.loadtest import latency, report, scrape, wrk
from agentcore.loadtest.sampler import MachineSampler, ProcessSampler, usable_cpus
from agentcore.loadtest.scenarios import CATALOGUE, Scenario, parse_duration
from agentcore.loadtest.targets import Level, Verdict, overall

PLUGIN = Path(__file__).with_name("locust_plugin.py")
AGENTCORE = (sys.executable, "-m", "agentcore.cli")


@dataclass(frozen=True)
class Options:
    """``agentcore loadtest run`` options; None: the scenario's (seed's) default."""

    out: Path
    scenarios_dir: Path
    targets: dict[str, tuple[Level, ...]]
    users: int | None = None
    spawn_rate: float | None = None
    run_time: str | None = None
    host: str | None = None
    processes: int | None = None
    warmup: str = "auto"
    wrk: bool = True
    wrk_time: float | None = None
    gateway_config: str | None = None
    gateway_workers: int | None = None
    gateway_cpus: str | None = None
    gateway_nice: int | None = None
    api_key: str | None = None
    progress_s: float = 5.0
    cooldown_s: float = 30.0
    inconclusive_ok: bool = False
    #: The environment the gateway and Locust start from (the CLI passes ``os.environ``).
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    scenario: str
    verdict: Verdict
    out: Path
    error: str = ""


# -- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s:.0f} s")


@dataclass
class Gateway:
    url: str
    pid: int | None = None
    api_key: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    cpus: int = 1


class _Receiver(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: one line per delivery would drown the run's output."""


@contextlib.contextmanager
def helpers(scenario: Scenario, out: Path) -> Iterator[dict[str, str]]:
    """Start the scenario's helpers; yield the environment that tells Locust and the gateway."""
    env: dict[str, str] = {}
    started: list[subprocess.Popen[bytes]] = []
    server: ThreadingHTTPServer | None = None
    try:
        if "fake-llm" in scenario.helpers:
            port = free_port()
            with open(out / "fake-llm.log", "ab") as log:
                proc = subprocess.Popen(
                    [*AGENTCORE, "fake-llm", "--port", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            started.append(proc)
            _wait_port(port, proc)
            base = f"http://127.0.0.1:{port}/v1"
            env["AGENTCORE_LLM__PROVIDERS"] = (
                f'[{{name="fake", base_url="{base}", models=[{{name="fake-small"}}]}}]'
            )
            env["AGENTCORE_LOADTEST_LLM_URL"] = base
            env["AGENTCORE_LOADTEST_LLM_MODEL"] = "fake-small"
        if "receiver" in scenario.helpers:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            env["AGENTCORE_LOADTEST_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_port}/hook"
            env["AGENTCORE_WEBHOOKS__ALLOWED_NETWORKS"] = '["127.0.0.0/8"]'
        yield env
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        for proc in started:
            _stop(proc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"helper exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"helper on port {port} did not start")


@contextlib.contextmanager
def gateway(opts: Options, scenario: Scenario, out: Path, env: dict[str, str]) -> Iterator[Gateway]:
    """The gateway under test: ``--host`` as given, or one started (and stopped) here."""
    if opts.host:
        yield Gateway(opts.host.rstrip("/"), api_key=opts.api_key)
        return
    port = free_port()
    data = out / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    full_env = {**opts.environ, **scenario.gateway_env, **env}
    if scenario.auth:
        full_env["AGENTCORE_AUTH__MODE"] = "api_key"
    config = ["--config", opts.gateway_config] if opts.gateway_config else []
    api_key = None
    if scenario.auth:
        # The default scopes, and metrics:read: the runner scrapes /metrics with this key.
        scopes = [*apikeys.default_scopes(), "metrics:read"]
        created = subprocess.run(
            [
                *AGENTCORE,
                "keys",
                "create",
                "--tenant",
                "loadtest",
                *(arg for scope in scopes for arg in ("--scope", scope)),
                "--data-dir",
                str(data),
                *config,
            ],
            env=full_env,
            capture_output=True,
            text=True,
            check=True,
        )
        api_key = next(
            line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key:")
        )
    command = [*AGENTCORE, "serve", "--port", str(port)]
    command += ["--data-dir", str(data), "--log-level", "warning", *config]
    if opts.gateway_workers:
        command += ["--workers", str(opts.gateway_workers)]
    if opts.gateway_nice is not None:
        command = ["nice", "-n", str(opts.gateway_nice), *command]
    if opts.gateway_cpus:
        command = ["taskset", "-c", opts.gateway_cpus, *command]
    with open(out / "gateway.log", "ab") as log:
        proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        cpus = min(opts.gateway_workers or 1, usable_cpus(proc.pid))
        yield Gateway(url, proc.pid, api_key, proc, cpus)
    finally:
        _stop(proc)


# -- sampling ---------------------------------------------------------------------


class Sampling:
    """A thread sampling every ``interval_s`` until stopped; ``samples`` is its record."""

    def __init__(self, gw: Gateway, headers: dict[str, str], interval_s: float = 1.0) -> None:
        self.gw = gw
        self.headers = headers
        self.interval_s = interval_s
        self.samples: list[dict[str, float | None]] = []
        self.locust_pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._gateway = ProcessSampler(gw.pid) if gw.pid else None
        self._locust: ProcessSampler | None = None
        self._machine = MachineSampler()
        self._last_cpu: tuple[float, float] | None = None
        self._last_answered: tuple[float, float] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def latest(self) -> dict[str, float | None]:
        return self.samples[-1] if self.samples else {}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def sample(self) -> dict[str, float | None]:
        now = time.time()
        row: dict[str, float | None] = {"t": now}
        if self._locust is None and self.locust_pid is not None:
            self._locust = ProcessSampler(self.locust_pid)
        if self._locust is not None:
            tree = self._locust.sample(now)
            row["locust_cpu_percent"] = tree.cpu_percent if tree else None
            row["locust_max_process_cpu_percent"] = tree.max_process_cpu_percent if tree else None
        row["machine_cpu_percent"] = self._machine.sample()
        metrics: scrape.Samples = {}
        with contextlib.suppress(OSError):
            metrics = scrape.parse(scrape.fetch(self.gw.url, self.headers, timeout=2))
        if metrics:
            row["ws_connections"] = scrape.total(
                metrics, "agentcore_stream_connections", transport="websocket"
            )
            # The gateway's own count of answers: progress that does not wait
            # for Locust's buffered CSV.
            answered = scrape.total(metrics, "agentcore_http_requests_total")
            previous_answered, self._last_answered = self._last_answered, (now, answered)
            if previous_answered is not None and now > previous_answered[0]:
                row["gateway_rps"] = (answered - previous_answered[1]) / (
                    now - previous_answered[0]
                )
        if self._gateway is not None:
            tree = self._gateway.sample(now)
            row["gateway_cpu_percent"] = tree.cpu_percent if tree else None
            row["gateway_rss_mb"] = tree.rss_bytes / 2**20 if tree else None
        elif metrics:
            cpu = scrape.total(metrics, "process_cpu_seconds_total")
            previous, self._last_cpu = self._last_cpu, (now, cpu)
            if previous is not None and now > previous[0]:
                row["gateway_cpu_percent"] = (cpu - previous[1]) / (now - previous[0]) * 100
            row["gateway_rss_mb"] = scrape.total(metrics, "process_resident_memory_bytes") / 2**20
        return row


# -- Locust -----------------------------------------------------------------------


def locust_command(
    scenario_file: Path,
    host: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    csv_prefix: Path | None,
    processes: int | None,
    record: bool,
) -> list[str]:
    files = f"{scenario_file},{PLUGIN}" if record else str(scenario_file)
    command = [sys.executable, "-m", "locust", "-f", files, "--headless", "--host", host]
    command += ["--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--run-time", run_time]
    command += ["--stop-timeout", "5", "--only-summary"]
    if csv_prefix is not None:
        command += ["--csv", str(csv_prefix), "--csv-full-history"]
    if processes:
        command += ["--processes", str(processes)]
    return command


def _history_tail(path: Path) -> dict[str, str]:
    """The newest ``Aggregated`` row of Locust's stats history (empty before the first)."""
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("Name") == "Aggregated"]
    except OSError:
        return {}
    return rows[-1] if rows else {}


def _progress(started: float, total_s: float, history: Path, sample: dict[str, Any]) -> str:
    """One line: the gateway's answers per second (its /metrics), resources, Locust's view."""
    row = _history_tail(history)

    def num(key: str) -> str:
        value = sample.get(key)
        return f"{value:.0f}" if value is not None else "-"

    return (
        f"  [{time.monotonic() - started:4.0f}s/{total_s:.0f}s] gateway {num('gateway_rps')} req/s"
        f", CPU {num('gateway_cpu_percent')}%, RSS {num('gateway_rss_mb')} MB"
        f"; locust CPU {num('locust_cpu_percent')}%, users {row.get('User Count', '-')}"
        f", p95 {row.get('95%', '-')} ms, failures/s {row.get('Failures/s', '-')}"
    )


def _environment(
    environ: Mapping[str, str], gw: Gateway, scenario: Scenario, out: Path, extra: dict[str, str]
) -> dict[str, str]:
    env = {**environ, **extra, "AGENTCORE_LOADTEST_OUT": str(out)}
    if gw.api_key:
        env["AGENTCORE_LOADTEST_API_KEY"] = gw.api_key
    if scenario.auth:
        env["AGENTCORE_LOADTEST_AUTH"] = "1"
    return env


def warmup_seconds(spec: str, run_time_s: float) -> float:
    """``auto``: 20 % of runs of a minute or more, at most 2 minutes (the seed's advice); else 0."""
    if spec == "auto":
        return min(120.0, run_time_s * 0.2) if run_time_s >= 60 else 0.0
    return parse_duration(spec)


# -- one scenario -------------------------------------------------------------------


def run_scenario(opts: Options, scenario: Scenario, out: Path) -> Outcome:
    scenario_file = opts.scenarios_dir / scenario.file
    if not scenario_file.exists():
        return Outcome(scenario.name, "N/A", out, f"{scenario_file} not found")
    out.mkdir(parents=True, exist_ok=True)
    users = opts.users or scenario.users
    spawn_rate = opts.spawn_rate or scenario.spawn_rate
    run_time = opts.run_time or scenario.run_time
    run_time_s = parse_duration(run_time)
    levels = opts.targets.get(scenario.name, ())
    print(f"== {scenario.name}: {users} users, spawn {spawn_rate:g}/s, {run_time} -> {out}")
    with helpers(scenario, out) as helper_env, gateway(opts, scenario, out, helper_env) as gw:
        headers = {"Authorization": f"Bearer {gw.api_key}"} if gw.api_key else {}
        env = _environment(opts.environ, gw, scenario, out, helper_env)
        warm = warmup_seconds(opts.warmup, run_time_s)
        if warm > 0:
            print(f"  warm-up {warm:.0f} s (discarded)")
            with open(out / "warmup.log", "ab") as log:
                subprocess.run(
                    locust_command(
                        scenario_file,
                        gw.url,
                        users,
                        spawn_rate,
                        f"{warm:.0f}s",
                        None,
                        opts.processes,
                        record=False,
                    ),
                    env={**env, "AGENTCORE_LOADTEST_OUT": str(out / "warmup")},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=warm + 120,
                    check=False,
                )
        before = scrape.parse(scrape.fetch_patiently(gw.url, headers))
        sampling = Sampling(gw, headers)
        sampling.sample()  # first reading: the baseline of the CPU deltas
        command = locust_command(
            scenario_file,
            gw.url,
            users,
            spawn_rate,
            run_time,
            out / scenario.name,
            opts.processes,
            record=True,
        )
        (out / "locust-command.txt").write_text(" ".join(command) + "\n")
        started = time.monotonic()
        with open(out / "locust.log", "ab") as log:
            proc = subprocess.Popen(
                command,
                env=env,
                cwd=opts.scenarios_dir.parent.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            sampling.locust_pid = proc.pid
            sampling.start()
            deadline = started + run_time_s + 60
            while proc.poll() is None:
                try:
                    proc.wait(opts.progress_s)
                except subprocess.TimeoutExpired:
                    print(
                        _progress(
                            started,
                            run_time_s,
                            out / f"{scenario.name}_stats_history.csv",
                            sampling.latest(),
                        ),
                        flush=True,
                    )
                if time.monotonic() > deadline:
                    print("  Locust did not stop 60 s after its run time: stopping it")
                    _stop(proc)
        finally:
            _stop(proc)
            sampling.stop()
        after = scrape.parse(scrape.fetch_patiently(gw.url, headers))
        if not (out / f"{scenario.name}_stats.csv").exists():
            tail = (out / "locust.log").read_text(errors="replace")[-2000:]
            return Outcome(scenario.name, "FAIL", out, f"Locust produced no stats:\n{tail}")
        wrk_result, wrk_error = None, ""
        if scenario.name == "http" and opts.wrk:
            if wrk.available():
                wrk_s = opts.wrk_time or min(30.0, max(2.0, run_time_s))
                print(f"  raw throughput: wrk for {wrk_s:.0f} s")
                try:
                    wrk_result = wrk.run(gw.url, wrk_s, headers)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    wrk_error = f"wrk failed: {exc}"
            else:
                wrk_error = "wrk not installed: RPS from Locust (one core per Locust process)"
        elif scenario.name == "http":
            wrk_error = "--no-wrk: RPS from Locust"
    record = figures_mod.RunRecord(
        scenario=scenario.name,
        out=out,
        users=users,
        samples=sampling.samples,
        metrics_before=before,
        metrics_after=after,
        gateway_cpus=gw.cpus,
        gateway_source="/proc" if gw.pid else "gateway /metrics (answering worker)",
        wrk=wrk_result,
        wrk_error=wrk_error,
    )
    return finish(opts, scenario, record, levels, users, spawn_rate, run_time, gw.url)


def finish(
    opts: Options,
    scenario: Scenario,
    record: figures_mod.RunRecord,
    levels: tuple[Level, ...],
    users: int,
    spawn_rate: float,
    run_time: str,
    url: str,
) -> Outcome:
    out = record.out
    figs, analysis, endpoints = figures_mod.compute(record, levels)
    table = report.rows(levels, figs, analysis, users)
    exact = latency.load(out / "latency")
    moved = scrape.delta(record.metrics_before, record.metrics_after)
    _write_samples(out / "samples.csv", record.samples)
    data = report.summary(
        scenario=scenario.name,
        options={
            "users": users,
            "spawn_rate": spawn_rate,
            "run_time": run_time,
            "processes": opts.processes or 1,
            "gateway": url if opts.host else f"started by the runner ({url})",
            "gateway_cpus": record.gateway_cpus,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        table=table,
        figures=figs,
        analysis=analysis,
        endpoints=endpoints,
        timeline=latency.timeline(exact) if exact else [],
        samples=record.samples,
        metrics={
            "requests_by_status": scrape.by_label(moved, "agentcore_http_requests_total", "status"),
            "rate_limited": scrape.total(moved, "agentcore_rate_limited_total"),
            "ws_connections_peak": figs["ws_connections"].value,
        },
    )
    if record.wrk is not None:
        data["wrk"] = asdict(record.wrk)
    report.write(out, data)
    print(report.text_table(table))
    print(f"  bottleneck: {analysis.bottleneck}: {analysis.explanation}")
    print(f"  {scenario.name}: {data['verdict']}  (report: {out / 'report.html'})")
    return Outcome(scenario.name, data["verdict"], out)


def _write_samples(path: Path, samples: list[dict[str, float | None]]) -> None:
    keys = sorted({k for s in samples for k in s}, key=lambda k: (k != "t", k))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(samples)


# -- entry ------------------------------------------------------------------------


def run(opts: Options, names: list[str]) -> int:
    """Run the named scenarios in order; the exit code of the worst verdict."""
    outcomes: list[Outcome] = []
    for index, name in enumerate(names):
        if index and opts.cooldown_s > 0:
            print(f"  cool-down {opts.cooldown_s:.0f} s")
            time.sleep(opts.cooldown_s)
        out = opts.out / name if len(names) > 1 else opts.out
        try:
            outcome = run_scenario(opts, CATALOGUE[name], out)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            outcome = Outcome(name, "FAIL", out, str(exc))
        if outcome.error:
            print(f"  {name}: {outcome.verdict}: {outcome.error}", file=sys.stderr)
        outcomes.append(outcome)
    verdict = overall([o.verdict for o in outcomes])
    if len(names) > 1:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "summary.json").write_text(
            json.dumps(
                {
                    "verdict": verdict,
                    "scenarios": [
                        {
                            "scenario": o.scenario,
                            "verdict": o.verdict,
                            "out": str(o.out),
                            "error": o.error,
                        }
                        for o in outcomes
                    ],
                },
                indent=2,
            )
        )
        print("\n".join(f"{o.scenario:12} {o.verdict}" for o in outcomes))
    print(f"overall: {verdict}")
    if verdict == "INCONCLUSIVE" and opts.inconclusive_ok:
        return 0
    return report.EXIT_CODES[verdict]


def default_out(scenario: str) -> Path:
    return Path("results") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{scenario}"


def save_baseline(result: Path, to: Path) -> list[Path]:
    """Copy each scenario's stats CSV and summary under ``to/<scenario>/``; the paths written."""
    folders = (
        [result]
        if (result / "summary.json").exists() and any(result.glob("*_stats.csv"))
        else [p for p in sorted(result.iterdir()) if p.is_dir() and any(p.glob("*_stats.csv"))]
    )
    written = []
    for folder in folders:
        stats = next(folder.glob("*_stats.csv"))
        scenario = stats.name[: -len("_stats.csv")]
        target = to / scenario
        target.mkdir(parents=True, exist_ok=True)
        for name in (stats.name, "summary.json"):
            if (folder / name).exists():
                shutil.copy2(folder / name, target / name)
        written.append(target)
    return written
