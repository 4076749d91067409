"""Running the gateway under an ASGI server (``agentcore serve``).

uvicorn (uvloop + httptools) is the default: it measured fastest for the
JSON-RPC POST path on this hardware (docs/performance.md); Granian's ASGI
interface is selectable with ``server.server = "granian"``. The app stays a
plain ASGI app either way.

Workers are separate processes that each rebuild the app from the effective
configuration, which the parent hands over as JSON in ``AGENTCORE_CONFIG_JSON``
(so flags and the config file reach every worker identically).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import sys
from pathlib import Path

import msgspec

from agentcore.app import Gateway, create_app
from agentcore.config import Config

log = logging.getLogger("agentcore.server")

CONFIG_ENV = "AGENTCORE_CONFIG_JSON"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FACTORY = "agentcore.server:worker_app"


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def worker_app() -> Gateway:
    """The app factory each worker process calls."""
    config = msgspec.json.decode(os.environ[CONFIG_ENV], type=Config)
    return create_app(config, metrics_dir=os.environ.get(MULTIPROC_ENV))


def prepare_environment(config: Config) -> None:
    """Set what worker processes read before they import anything."""
    os.environ[CONFIG_ENV] = msgspec.json.encode(config).decode()
    if config.server.workers > 1 and config.metrics.enabled:
        directory = Path(
            config.metrics.multiproc_dir or Path(config.database.data_dir) / "prometheus"
        )
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        os.environ[MULTIPROC_ENV] = str(directory)
    else:
        os.environ.pop(MULTIPROC_ENV, None)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def serve(config: Config) -> None:
    server = config.server
    limit = raise_fd_limit()
    Path(config.database.data_dir).mkdir(parents=True, exist_ok=True)
    prepare_environment(config)
    log.info(
        "open-files limit %d: room for about %d concurrent connections per worker",
        limit,
        max(limit - 64, 0),
    )
    if server.server == "granian":
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
        from granian.server import Server

        level = server.log_level if server.log_level != "critical" else "error"
        Server(
            FACTORY,
            address=server.host,
            port=server.port,
            interface=Interfaces.ASGI,
            workers=server.workers,
            loop=Loops.uvloop,
            factory=True,
            backlog=4096,
            log_level=LogLevels(level),
            log_access=server.access_log,
        ).serve()
        return
    import uvicorn

    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        FACTORY,
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=server.access_log,
        log_level=server.log_level,
        ws_per_message_deflate=False,
        backlog=4096,
        server_header=False,
        # The client address is the socket peer; X-Forwarded-For is the gateway's
        # own business (server.trusted_proxies), never uvicorn's.
        proxy_headers=False,
        date_header=False,
    )
