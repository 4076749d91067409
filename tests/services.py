"""Private PostgreSQL and Redis servers a test may stop and start (fault tests).

The machine's shared servers (5432, 6379) serve every other test, so a test
that takes its backend down starts its own: a PostgreSQL cluster made by
``initdb`` in a temporary directory, and a ``redis-server`` without
persistence, each on a free loopback port, each a child process the test
stops with a signal and starts again on the same port. Every wait is bounded.

PostgreSQL refuses to run as root; when the tests run as root the cluster
belongs to the ``postgres`` user and its commands run as that user.
Missing binaries mean skipped (or failed with ``AGENTCORE_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, unavailable


def _pg_bin() -> Path:
    """Where ``initdb`` and ``postgres`` are: ``AGENTCORE_TEST_PG_BIN``, else the newest
    Debian-style ``/usr/lib/postgresql/<version>/bin`` (the one CI's cluster runs)."""
    if os.environ.get("AGENTCORE_TEST_PG_BIN"):
        return Path(os.environ["AGENTCORE_TEST_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


#: Seconds a private server has to accept connections after it is started.
START_TIMEOUT_S = 15.0
#: Seconds a stopped server has to exit before it is killed.
STOP_TIMEOUT_S = 10.0


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _wait_until(ready: bool, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()}")
        if _accepts(port) == ready:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in time:\n{log.read_text()}")


def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send ``sig`` to the child's process group (a crash takes PostgreSQL's backends
    too) and wait for it, killing the group when it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@dataclass
class PrivateServer:
    """A child server on ``port`` that can be stopped and started again."""

    command: list[str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    #: The user the server runs as (None: this process's).
    user: str | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user,
                group=self.user,
            )
        _wait_until(True, self.port, self.proc, self.log)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server (SIGINT: PostgreSQL's fast shutdown; SIGKILL: a crash)."""
        _end(self.proc, sig)
        self.proc = None

    @contextlib.contextmanager
    def serving(self, url: str, final: int) -> Iterator[tuple[PrivateServer, str]]:
        """Started, with the ``url`` it serves; stopped with ``final`` afterwards."""
        self.start()
        try:
            yield self, url
        finally:
            self.stop(final)

    def pause(self) -> None:
        """Stop the server and its child processes where they stand (SIGSTOP): it still
        accepts connections (the kernel does) but answers nothing, like a hung host."""
        self._signal_family(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_family(signal.SIGCONT)

    def _signal_family(self, sig: int) -> None:
        # PostgreSQL's backends leave the postmaster's process group: found by parent.
        assert self.proc is not None
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if entry.name.isdigit() and int(fields[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _pg_user() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` when the tests run as root (it refuses
    root). The server is this process's own child (not through ``runuser``), so a
    killed postmaster is reaped here and its stale ``postmaster.pid`` names no
    living process when the server is started again."""
    return "postgres" if os.geteuid() == 0 else None


@contextlib.contextmanager
def private_postgres(log_dir: Path) -> Iterator[tuple[PrivateServer, str]]:
    """A fresh PostgreSQL cluster and the URL of its ``postgres`` database; its log in
    ``log_dir``. The cluster lives in a directory of its own under the system's
    temporary directory (pytest's is private to the user running the tests, which
    the ``postgres`` user cannot enter) and is removed afterwards."""
    bin_dir = _pg_bin()
    initdb, postgres = bin_dir / "initdb", bin_dir / "postgres"
    if not (initdb.exists() and postgres.exists()):
        unavailable(f"PostgreSQL binaries not found under {bin_dir}")
    root = Path(tempfile.mkdtemp(prefix="agentcore-pg-"))
    try:
        with _cluster(root, initdb, postgres, log_dir) as found:
            yield found
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _cluster(
    root: Path, initdb: Path, postgres: Path, log_dir: Path
) -> Iterator[tuple[PrivateServer, str]]:
    data = root / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        # The cluster and its socket directory belong to the postgres user.
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
        data.chmod(0o700)
    subprocess.run(
        [str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres"],
        user=_pg_user(),
        group=_pg_user(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    server = PrivateServer(
        [
            str(postgres),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ],
        port,
        log_dir / f"postgres-{port}.log",
        user=_pg_user(),
    )
    with server.serving(f"postgresql://postgres@127.0.0.1:{port}/postgres", signal.SIGINT) as found:
        yield found


@contextlib.contextmanager
def private_redis(root: Path) -> Iterator[tuple[PrivateServer, str]]:
    """A ``redis-server`` without persistence and the URL of its database 0."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found on PATH")
    assert binary is not None
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    server = PrivateServer(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        port,
        root / f"redis-{port}.log",
    )
    with server.serving(f"redis://127.0.0.1:{port}/0", signal.SIGKILL) as found:
        yield found


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[tuple[PrivateServer, str]]:
    """A private PostgreSQL server (stop it, start it again) and its URL."""
    with private_postgres(tmp_path) as found:
        yield found


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[PrivateServer, str]]:
    """A private Redis server (kill it, start it again on the same port) and its URL."""
    with private_redis(tmp_path / "redis") as found:
        yield found
