"""Running the gateway under an ASGI server (``agentcore serve``).

uvicorn (uvloop + httptools) is the default; Granian (its Rust HTTP server,
``Interfaces.ASGI``, uvloop) is selectable with ``server.server = "granian"``
/ ``--server granian``. Under uvicorn the gateway runs its own httptools
protocol (``http_server.GatewayHttpProtocol``), which measured faster than
Granian on both benchmark routes and holds less memory per idle WebSocket
(docs/performance.md, "HTTP throughput", "Which server"); it runs only on the
uvicorn releases it was tested with, and ``serve`` stops with a ConfigError
naming them otherwise (http_server/uvicorn_internals.py). The seed's
``uvicorn agentcore.a2a_protocol.main:app`` runs the same app under uvicorn
by definition. The app is a plain ASGI app under both.

Workers are separate, freshly started processes (``spawn``) that each rebuild
the app from the effective configuration, which the parent hands over as
JSON in ``AGENTCORE_CONFIG_JSON`` (so flags and the config file reach every
worker identically, and prometheus-client, which picks its multiprocess
storage on import, sees ``PROMETHEUS_MULTIPROC_DIR``). Under Granian even one
worker is a child process of a supervising parent.

Graceful stop (SIGTERM): every worker closes the event streams first
(WebSockets with 1001 "server shutting down", SSE streams with their terminal
event; docs/realtime.md) and only then lets the server stop, which then runs
the lifespan shutdown (last heartbeats flushed) and exits 0.

- A Granian worker that gets SIGTERM or SIGINT stops accepting, drops open
  WebSockets without a close frame, waits for unfinished HTTP responses (an
  SSE stream, which never finishes by itself, holds it up until its client
  leaves) and only then runs the lifespan shutdown. So
  :class:`GranianGateway` takes SIGTERM over in each worker at lifespan
  startup (after Granian installed its own handlers): it closes the streams,
  then raises SIGINT, which Granian's handler still answers. SIGINT itself
  stays Granian's own stop in the worker that gets it; Ctrl-C in a terminal
  reaches the supervisor too, whose SIGTERM to its workers still closes the
  streams, but the stop can take ``realtime.shutdown_grace_s`` longer.
- uvicorn closes WebSockets with 1012 and waits for unfinished responses
  before the lifespan shutdown; :class:`GatewayServer` closes the streams
  before that.

WebSocket keepalive is the gateway's (app-level pings from one sweeper per
worker), so server protocol pings are off (Granian sends none). A client
message above ``realtime.max_message_bytes`` is closed with 1009 by the app
(realtime/websocket.py) under either server; uvicorn also refuses it while
reading (``ws_max_size``), Granian reads it whole first (its own limit is
16 MiB a frame).

Request heads are bounded under both (``server.max_head_bytes``,
``max_headers``, ``head_timeout_s``): uvicorn's protocol is the gateway's and
enforces all three (http_server/protocol.py); Granian (hyper) is given the size as
its HTTP/1 read buffer (at least 8192 bytes) and the timeout as its header
read timeout (at most 60 s), and keeps hyper's own count of 100 headers. Both
answer 431 past the size or count (Granian with an empty body); on a late
head uvicorn answers 408, Granian closes the connection without an answer.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import multiprocessing
import resource
import shutil
import signal
import socket
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from agentcore import extras
from agentcore.app import Gateway, create_app
from agentcore.config import Config, process_environment
from agentcore.datadir import private_dir
from agentcore.errors import ConfigError

log = logging.getLogger("agentcore.server")

CONFIG_ENV = "AGENTCORE_CONFIG_JSON"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FACTORY = "agentcore.server:worker_app"
GRANIAN_FACTORY = "agentcore.server:granian_worker_app"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Pending connections the kernel queues on the listening socket.
BACKLOG = 4096
#: Open files a worker keeps for itself (store, logs, metrics files, pipes);
#: the rest of its open-files limit is room for connections.
RESERVED_FDS = 64
#: Cyclic GC thresholds of a serving process. At 10,000 WebSockets a full
#: collection walks every connection's objects and stalls the loop for a
#: noticeable time (performance-history.md, "The garbage-collector change"); with
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


def configure_logging(level: str) -> None:
    """The gateway's own log lines (``agentcore.*``) at ``level``, on stderr.

    Called by the CLI and again in every worker process, which starts fresh.
    """
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def _worker_config(environ: Mapping[str, str]) -> Config:
    config = msgspec.json.decode(environ[CONFIG_ENV], type=Config)
    configure_logging(config.server.log_level)
    return config


def worker_app() -> Gateway:
    """The app factory each uvicorn worker calls (an edge: it reads the environment)."""
    environ = process_environment()
    return create_app(
        _worker_config(environ), metrics_dir=environ.get(MULTIPROC_ENV), environ=environ
    )


def granian_worker_app() -> GranianGateway:
    """The app factory each Granian worker calls (an edge: it reads the environment)."""
    environ = process_environment()
    return GranianGateway(
        _worker_config(environ), metrics_dir=environ.get(MULTIPROC_ENV), environ=environ
    )


def prepare_environment(config: Config, environ: MutableMapping[str, str]) -> None:
    """Set in ``environ`` (the process's) what worker processes read before they
    import anything."""
    environ[CONFIG_ENV] = msgspec.json.encode(config).decode()
    if config.server.workers > 1 and config.metrics.enabled:
        directory = Path(
            config.metrics.multiproc_dir or Path(config.database.data_dir) / "prometheus"
        )
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        environ[MULTIPROC_ENV] = str(directory)
    else:
        environ.pop(MULTIPROC_ENV, None)


def serve(config: Config, environ: MutableMapping[str, str]) -> None:
    """Serve until SIGTERM or SIGINT; exits non-zero when a worker fails to start.

    ``environ`` is the process's environment (the CLI passes ``os.environ``):
    the workers, started from this process, find their configuration in it.
    """
    limit = raise_fd_limit()
    private_dir(config.database.data_dir)  # 0700: the database and keys are in it
    prepare_environment(config, environ)
    connections = max(limit - RESERVED_FDS, 1)
    log.info(
        "open-files limit %d: room for about %d concurrent connections per worker",
        limit,
        connections,
    )
    if config.server.server == "granian":
        _serve_granian(config, connections)
    else:
        _serve_uvicorn(config)


# -- Granian ------------------------------------------------------------------------


def _serve_granian(config: Config, connections: int) -> None:
    extras.GRANIAN.require()
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    server = config.server
    # Granian forks its workers unless told otherwise; a forked worker would
    # inherit this process's prometheus-client, set up before
    # PROMETHEUS_MULTIPROC_DIR existed (module docstring).
    multiprocessing.set_start_method("spawn", force=True)
    Server(
        GRANIAN_FACTORY,
        address=server.host,
        port=server.port,
        interface=Interfaces.ASGI,
        workers=server.workers,
        loop=Loops.uvloop,
        factory=True,
        backlog=BACKLOG,
        # Connections a worker serves at once (Granian's default is
        # backlog / workers); the open-files limit is the real bound, as
        # under uvicorn, so 10,000 event streams per worker fit.
        backpressure=connections,
        log_level=LogLevels(server.log_level),
        log_access=server.access_log,
        # Head limits (module docstring): Granian's flag ranges are 8192+ bytes, 1-60000 ms.
        http1_settings=HTTP1Settings(
            header_read_timeout=min(max(round(server.head_timeout_s * 1000), 1), 60_000),
            max_buffer_size=max(server.max_head_bytes, 8192),
        ),
    ).serve()
    # Granian's parent exits 1 itself when a worker failed (e.g. at startup).


class GranianGateway(Gateway):
    """The gateway as a Granian worker runs it: SIGTERM closes the streams first.

    Granian's own stop (on SIGTERM or SIGINT) drops WebSockets and waits for
    SSE streams before the lifespan shutdown could close them (module
    docstring). At lifespan startup, after Granian installed its handlers,
    this takes SIGTERM over: it closes the streams (WebSocket 1001, SSE
    terminal event, waiting up to ``realtime.shutdown_grace_s``), then raises
    SIGINT, whose handler is still Granian's: stop serving, finish the
    responses in flight, then the lifespan shutdown.
    """

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._stopping: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        await super().startup()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        tune_gc()

    def _on_sigterm(self) -> None:
        # Once only: the parent passes SIGTERM on to a worker that may have had it already.
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._close_then_stop())

    async def _close_then_stop(self) -> None:
        try:
            await self.close_streams()
        except Exception:  # boundary: the server must still stop
            log.exception("closing the event streams failed")
        finally:
            self.stop_serving()

    def stop_serving(self) -> None:
        """Hand over to Granian's own graceful stop (its SIGINT handler)."""
        signal.raise_signal(signal.SIGINT)


# -- uvicorn ------------------------------------------------------------------------


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def _serve_uvicorn(config: Config) -> None:
    # Here, not at the top: only uvicorn needs the protocol, and importing it
    # checks the installed uvicorn (an ImportError naming the tested range).
    try:
        from agentcore.http_server import GatewayHttpProtocol
    except ImportError as exc:
        raise ConfigError(str(exc)) from exc

    server = config.server
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uv_config = uvicorn.Config(
        FACTORY,
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        loop="uvloop",
        # httptools, each response written to the socket once, heads bounded
        # (see http_server/); a partial pickles, for spawned workers.
        http=functools.partial(  # type: ignore[arg-type]
            GatewayHttpProtocol,
            max_head_bytes=server.max_head_bytes,
            max_headers=server.max_headers,
            head_timeout_s=server.head_timeout_s,
        ),
        lifespan="on",
        access_log=server.access_log,
        log_level=server.log_level,
        ws_per_message_deflate=False,
        ws_max_size=config.realtime.max_message_bytes,
        # Keepalive is the gateway's sweeper (app-level ping/pong, one per worker).
        ws_ping_interval=None,
        ws_ping_timeout=None,
        backlog=BACKLOG,
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
