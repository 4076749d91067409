"""A many-instance deployment on one machine: gateways on PostgreSQL and Redis behind nginx.

``Cluster`` starts N ``agentcore serve`` instances on their own loopback
ports, all on one throwaway PostgreSQL database (``agentcore_cluster_<hex>``,
dropped at teardown), with Redis event fan-out on a channel of the cluster's
own and Redis rate limits in a Redis database number the cluster claims for
itself (the limiter's keys carry no per-deployment prefix), webhooks delivered
by ``agentcore worker`` processes, and nginx in front (the template
``deploy/nginx/agentcore.conf``) as the one address. Used as a context
manager it is ready on entry (every instance and nginx answer
``/api/v1/health/ready``, every instance listens on the channel) and on exit
stops what it started, even after a failure. docs/deployment.md describes it.

    python benchmarks/cluster.py up --instances 3 --workers 1

runs one until Ctrl-C and prints the nginx address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis

from agentcore.cli import to_toml

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "agentcore.conf"
PG_ADMIN_URL = os.environ.get(
    "AGENTCORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AGENTCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Seconds any one process may take to start or to stop.
START_S = 30.0
STOP_S = 15.0
#: Redis database numbers a cluster may claim (0 is left to everything else).
REDIS_DBS = range(1, 16)
#: How long a claim on a Redis database number lasts if its cluster never releases it.
CLAIM_S = 6 * 3600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Child:
    """One process of the cluster, in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the whole group and wait, killing it when it does not end in time."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=5)


class Instance:
    """A gateway instance: ``agentcore serve`` on a port of its own."""

    def __init__(self, index: int, port: int) -> None:
        self.index = index
        self.port = port
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """N gateway instances, webhook workers and nginx, on one PostgreSQL database and Redis."""

    def __init__(
        self,
        instances: int = 3,
        *,
        workers: int = 1,
        delivery_workers: int = 1,
        settings: dict[str, Any] | None = None,
        root: Path | None = None,
    ) -> None:
        """``workers``: ``--workers`` of each instance; ``delivery_workers``: ``agentcore
        worker`` processes; ``settings``: configuration sections laid over the cluster's."""
        self.token = secrets.token_hex(6)
        self.workers = workers
        self.delivery_workers = delivery_workers
        self.settings = settings or {}
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix=f"agentcore-cluster-{self.token}-"))
        self.instances = [Instance(i, free_port()) for i in range(instances)]
        self.nginx_port = free_port()
        self.database = f"agentcore_cluster_{self.token}"
        self.database_url = urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{self.database}"))
        self.channel = f"agentcore:cluster:{self.token}:events"
        self.redis_db: int | None = None
        self.children: list[Child] = []
        self._database_created = False

    # -- addresses and configuration ---------------------------------------------------

    @property
    def url(self) -> str:
        """nginx: the one address of the deployment."""
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def redis_url(self) -> str:
        """The cluster's own Redis database (rate limits); fan-out only uses its channel."""
        assert self.redis_db is not None, "not started"
        return urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{self.redis_db}"))

    def config(self) -> dict[str, Any]:
        """The configuration every instance and worker shares."""
        base: dict[str, Any] = {
            "server": {"trusted_proxies": ["127.0.0.1"]},
            "database": {"url": self.database_url},
            "events": {
                "fanout": "redis",
                "redis_url": self.redis_url,
                "redis_channel": self.channel,
            },
            "rate_limit": {"backend": "redis", "redis_url": self.redis_url},
            "webhooks": {
                "run_in_gateway": False,
                "secrets_key_file": str(self.root / "webhook-secrets.key"),
            },
        }
        # Each section given is laid over the cluster's own, key by key.
        return base | {k: base.get(k, {}) | v for k, v in self.settings.items()}

    def _env(self) -> dict[str, str]:
        # The cluster's configuration is its file; none leaks in from the caller's environment.
        return {k: v for k, v in os.environ.items() if not k.startswith("AGENTCORE_")}

    def _nginx_conf(self) -> str:
        servers = "\n        ".join(f"server 127.0.0.1:{i.port};" for i in self.instances)
        return (
            NGINX_TEMPLATE.read_text()
            .replace("@PREFIX@", str(self.root / "nginx"))
            .replace("@LISTEN@", f"127.0.0.1:{self.nginx_port}")
            .replace("@UPSTREAM_SERVERS@", servers)
        )

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Create the database, claim a Redis database, start everything, wait until ready."""
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is None:
            raise FileNotFoundError("nginx not found (apt-get install nginx-light)")
        self._claim_redis_db()
        asyncio.run(self._admin(f'CREATE DATABASE "{self.database}"'))
        self._database_created = True
        config_file = self.root / "agentcore.toml"
        config_file.write_text(to_toml(self.config()))
        env = self._env()
        cli = [sys.executable, "-m", "agentcore.cli"]
        common = ["--config", str(config_file), "--log-level", "warning"]
        # The schema is created by the first process that opens the database: start one
        # instance alone, then the others at once.
        for n, instance in enumerate(self.instances):
            argv = [
                *cli,
                "serve",
                *common,
                "--port",
                str(instance.port),
                "--workers",
                str(self.workers),
                "--data-dir",
                str(self.root / f"instance-{instance.index}"),
            ]
            instance.child = self._spawn(f"instance {instance.index}", argv, env)
            if n == 0:
                self._wait_ready(instance.url, instance.child)
        for instance in self.instances[1:]:
            assert instance.child is not None
            self._wait_ready(instance.url, instance.child)
        for n in range(self.delivery_workers):
            data_dir = str(self.root / f"worker-{n}")
            argv = [*cli, "worker", *common, "--data-dir", data_dir]
            self._spawn(f"worker {n}", argv, env)
        # nginx started as root runs its workers as another user, which must reach the
        # temporary files of request bodies under its prefix (mkdtemp made the root 0700).
        self.root.chmod(0o711)
        (self.root / "nginx").mkdir(mode=0o711, exist_ok=True)
        conf = self.root / "nginx" / "nginx.conf"
        conf.write_text(self._nginx_conf())
        prefix = str(self.root / "nginx")
        argv = [nginx, "-p", prefix, "-e", f"{prefix}/error.log", "-c", str(conf)]
        self._spawn("nginx", [*argv, "-g", "daemon off;"], env)
        self._wait_ready(self.url, self.children[-1])
        self._wait_subscribed(len(self.instances) * self.workers)
        for child in self.children:
            child.check()

    def stop(self) -> None:
        """Stop every process (nginx first, then workers, then instances), drop the database,
        release the Redis database; each step runs even if an earlier one failed."""
        errors: list[str] = []
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:
                errors.append(f"{child.name}: {exc!r}")
        self.children.clear()
        if self._database_created:
            try:
                asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
                self._database_created = False
            except Exception as exc:
                errors.append(f"drop database {self.database}: {exc!r}")
        self._release_redis_db()
        if self._own_root and not errors:
            shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("cluster teardown: " + "; ".join(errors))

    def kill(self, index: int) -> None:
        """``kill -9`` instance ``index`` (its whole process group): a crash, with no drain
        and no cleanup, for fault tests. Returns once the process is reaped."""
        child = self.instances[index].child
        assert child is not None, "not started"
        child.stop(signal.SIGKILL)

    def logs(self) -> str:
        """The end of every process's log, for a failure message."""
        return "\n".join(f"--- {c.name} ---\n{c.tail()}" for c in self.children)

    # -- helpers -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        log = self.root / (name.replace(" ", "-") + ".log")
        child = Child(name, argv, env, log)
        self.children.append(child)
        return child

    def _wait_ready(self, url: str, child: Child) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            child.check()
            try:
                if httpx.get(f"{url}/api/v1/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{child.name} not ready at {url} within {START_S} s:\n{child.tail()}")

    def _wait_subscribed(self, count: int) -> None:
        """Until ``count`` processes listen on the channel, so no event published from now on
        misses an instance."""
        client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            deadline = time.monotonic() + START_S
            while client.pubsub_numsub(self.channel)[0][1] < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fewer than {count} subscribers on {self.channel}")
                time.sleep(0.02)
        finally:
            client.close()

    def _claim_redis_db(self) -> None:
        """Claim a Redis database number no other running cluster holds, and empty it."""
        client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            for db in secrets.SystemRandom().sample(list(REDIS_DBS), len(REDIS_DBS)):
                if client.set(f"agentcore:cluster:db:{db}", self.token, nx=True, ex=CLAIM_S):
                    self.redis_db = db
                    break
            else:
                raise RuntimeError("every Redis database number is claimed by another cluster")
        finally:
            client.close()
        own: redis.Redis = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
        try:
            own.flushdb()  # what a cluster that died before its teardown left
        finally:
            own.close()

    def _release_redis_db(self) -> None:
        if self.redis_db is None:
            return
        client: redis.Redis = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            key = f"agentcore:cluster:db:{self.redis_db}"
            if client.get(key) == self.token.encode():
                client.delete(key)
        finally:
            client.close()
        self.redis_db = None

    @staticmethod
    async def _admin(sql: str) -> None:
        async with asyncpg.create_pool(PG_ADMIN_URL, min_size=1, max_size=1, timeout=5) as pool:
            await pool.execute(sql)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a cluster and keep it running until Ctrl-C")
    up.add_argument("--instances", type=int, default=3, help="gateway instances (default 3)")
    up.add_argument("--workers", type=int, default=1, help="--workers of each instance")
    up.add_argument(
        "--delivery-workers", type=int, default=1, help="`agentcore worker` processes (default 1)"
    )
    args = parser.parse_args(argv)
    cluster = Cluster(args.instances, workers=args.workers, delivery_workers=args.delivery_workers)
    stopping = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    with cluster:
        print(f"nginx: {cluster.url}")
        for instance in cluster.instances:
            print(f"instance {instance.index}: {instance.url}")
        print(f"database: {cluster.database_url}")
        print(f"redis: {cluster.redis_url} (events on channel {cluster.channel})")
        print(f"logs: {cluster.root}")
        print("Ctrl-C stops it.", flush=True)
        while not stopping:
            for child in cluster.children:
                child.check()
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
