"""Running the gateway under an ASGI server (``agentcore serve``).

uvicorn (uvloop + httptools) is the default: it measured fastest for the
JSON-RPC POST path on this hardware (docs/performance.md); Granian's ASGI
interface is selectable with ``server.server = "granian"``. The app stays a
plain ASGI app either way.

Workers are separate processes that each rebuild the app from the effective
configuration, which the parent hands over as JSON in ``AGENTCORE_CONFIG_JSON``
(so flags and the config file reach every worker identically).

Graceful stop (SIGTERM): under uvicorn every worker runs :class:`GatewayServer`,
which closes the event streams with 1001 before uvicorn's own shutdown would
close WebSockets with 1012 (docs/realtime.md). WebSocket keepalive is the
gateway's (app-level pings from one sweeper per worker), so uvicorn's protocol
pings are off, and uvicorn refuses client messages above
``realtime.max_message_bytes`` with close code 1009.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from agentcore.app import Gateway, create_app
from agentcore.config import Config

log = logging.getLogger("agentcore.server")

CONFIG_ENV = "AGENTCORE_CONFIG_JSON"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FACTORY = "agentcore.server:worker_app"
#: Cyclic GC thresholds of a serving process. At 10,000 WebSockets a full
#: collection walks about 900,000 objects (0.6-1 s on the project machine); with
#: the default (700, 10, 10) a broadcast's short-lived tasks are promoted into
#: the old generation and set one off every few broadcasts. A larger first
#: threshold keeps them young, so full collections stay rare once connections
#: are open (docs/performance.md, "WebSocket connections").
GC_THRESHOLDS = (50_000, 10, 10)


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


def tune_gc() -> None:
    """After startup: move what startup allocated out of the collector's way, raise thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uv_config = uvicorn.Config(
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
        ws_max_size=config.realtime.max_message_bytes,
        # Keepalive is the gateway's sweeper (app-level ping/pong, one per worker).
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=4096,
        server_header=False,
        # The client address is the socket peer; X-Forwarded-For is the gateway's
        # own business (server.trusted_proxies), never uvicorn's.
        proxy_headers=False,
        date_header=False,
    )
    if server.workers > 1:
        sockets = [uv_config.bind_socket()]
        with _gateway_workers():
            multiprocess.Multiprocess(uv_config, sockets=sockets).run()
        return
    uv_server = GatewayServer(uv_config)
    uv_server.run()
    if not uv_server.started:
        sys.exit(STARTUP_FAILURE)


class GatewayServer(uvicorn.Server):
    """uvicorn's server, closing the gateway's event streams first when it stops.

    uvicorn's ``shutdown`` closes every open WebSocket with 1012 and then waits
    for unfinished HTTP responses (an SSE stream never finishes by itself), all
    *before* the lifespan shutdown in which the gateway would close them. So
    the streams are closed here first: WebSocket clients get 1001 "server
    shutting down", SSE clients a terminal ``event: error``, and both can
    resume from their cursor on another instance.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        tune_gc()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        gateway = _gateway_of(self.config.loaded_app)
        if gateway is not None:
            try:
                await gateway.close_streams()
            except Exception:  # boundary: the rest of the shutdown must still run
                log.exception("closing the event streams failed")
        await super().shutdown(sockets)


def _gateway_of(app: object) -> Gateway | None:
    """The gateway inside uvicorn's wrappers (each keeps the wrapped app as ``.app``)."""
    for _ in range(8):
        if isinstance(app, Gateway):
            return app
        app = getattr(app, "app", None)
    return None


class _GatewayProcess(multiprocess.Process):
    """A uvicorn worker process that runs :class:`GatewayServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GatewayServer(config=self.config)
        return self._server


@contextmanager
def _gateway_workers() -> Iterator[None]:
    """Have uvicorn's supervisor start :class:`_GatewayProcess` workers.

    ``Multiprocess`` names its ``Process`` class directly (no hook), so the
    supervisor's module attribute is swapped for the subclass while it runs,
    in the parent process only; the workers unpickle the subclass from here.
    """
    original = multiprocess.Process
    setattr(multiprocess, "Process", _GatewayProcess)  # noqa: B010
    try:
        yield
    finally:
        setattr(multiprocess, "Process", original)  # noqa: B010
