"""Typed, frozen configuration, built once at the edge.

Sources, later ones winning: built-in defaults, a TOML file (``--config``), the
environment (``AGENTCORE_<SECTION>__<KEY>``, each value read as a TOML value so
``2`` is an int and ``["a", "b"]`` a list; a value that is not valid TOML is
taken as a plain string), then command-line flags. Library code never reads the
environment: :func:`load_config` is called by the CLI or the seed import path
and the result is passed in.

Unknown sections or keys and values of the wrong type raise
:class:`~agentcore.errors.ConfigError` with a message that names the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from agentcore.errors import ConfigError

ENV_PREFIX = "AGENTCORE_"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8001
    #: Worker processes. With more than one, Prometheus runs in multiprocess
    #: mode and heartbeats are buffered per worker (see docs/configuration.md).
    workers: int = 1
    #: The ASGI server `agentcore serve` runs; "uvicorn" won the measurement
    #: recorded in docs/performance.md, "granian" is the alternative.
    server: Literal["uvicorn", "granian"] = "uvicorn"
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    #: Log one line per request (costs throughput; off by default).
    access_log: bool = False


class DatabaseConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Empty: SQLite file ``agentcore.db`` under ``data_dir``. ``sqlite:///path``,
    #: ``sqlite://:memory:`` or ``postgresql://user:pass@host:port/db``.
    url: str = ""
    #: Directory for the embedded database and other local state.
    data_dir: str = ".agentcore"
    #: asyncpg pool size per worker (PostgreSQL only).
    pool_min_size: int = 1
    pool_max_size: int = 10


class RegistryConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: An agent that has not pinged for this long becomes ``inactive``.
    heartbeat_ttl_s: float = 60.0
    #: Heartbeat timestamps are kept in memory and written in one batch this
    #: often; a crash loses at most this much heartbeat history, never an agent.
    heartbeat_flush_interval_s: float = 1.0
    #: How often expired agents and timed-out tasks are swept.
    sweep_interval_s: float = 5.0
    #: How long a worker trusts its cached view of an agent's existence on the
    #: ping path before re-reading the store (matters with several workers).
    agent_cache_ttl_s: float = 2.0


class TasksConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Retries a failed task gets unless its definition says otherwise.
    default_max_retries: int = 0
    #: Largest page ``task.query`` / ``agent.list`` return.
    max_page_size: int = 1000


class EventsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Capacity of each subscriber queue of the in-process event bus.
    subscriber_queue_size: int = 10_000


class LimitsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: Largest accepted request body in bytes; larger gets 413 before it is read in full.
    max_body_bytes: int = 1_048_576
    #: Largest JSON-RPC batch.
    max_batch_size: int = 100


class MetricsConfig(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    #: Directory for prometheus-client multiprocess files (several workers);
    #: empty: ``<data_dir>/prometheus``.
    multiproc_dir: str = ""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    registry: RegistryConfig = RegistryConfig()
    tasks: TasksConfig = TasksConfig()
    events: EventsConfig = EventsConfig()
    limits: LimitsConfig = LimitsConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under ``data_dir`` when unset)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{Path(self.database.data_dir) / 'agentcore.db'}"


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``AGENTCORE_SECTION__KEY=value`` variables into a nested dict."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name} conflicts with another one")
        node[path[-1]] = _parse_env_value(raw)
    return out


def build_config(*layers: Mapping[str, Any]) -> Config:
    """Merge layers of plain dicts (lowest precedence first) into a validated Config."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    try:
        config = msgspec.convert(merged, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from exc
    _check(config)
    return config


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.server.port`"; say "server.port: ..." instead.
    text = str(exc)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return text
    key = where.rstrip("`").removeprefix("$").lstrip(".")
    return f"{key}: {message}" if key else message


def _check(config: Config) -> None:
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"invalid configuration: {key}: must be > 0, got {value}")

    if not 0 < config.server.port < 65536:
        raise ConfigError(f"invalid configuration: server.port: out of range: {config.server.port}")
    positive("server.workers", config.server.workers)
    positive("registry.heartbeat_ttl_s", config.registry.heartbeat_ttl_s)
    positive("registry.heartbeat_flush_interval_s", config.registry.heartbeat_flush_interval_s)
    positive("registry.sweep_interval_s", config.registry.sweep_interval_s)
    positive("limits.max_body_bytes", config.limits.max_body_bytes)
    positive("limits.max_batch_size", config.limits.max_batch_size)
    positive("events.subscriber_queue_size", config.events.subscriber_queue_size)
    positive("tasks.max_page_size", config.tasks.max_page_size)
    scheme = urlsplit(config.database_url).scheme
    if scheme not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError(
            f"invalid configuration: database.url: unsupported scheme {scheme!r} "
            "(use sqlite:/// or postgresql://)"
        )


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults < TOML file < environment < ``overrides`` (flags)."""
    file_layer: dict[str, Any] = {}
    env = os.environ if environ is None else environ
    if path is None and env.get("AGENTCORE_CONFIG"):
        path = env["AGENTCORE_CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as fh:
                file_layer = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return build_config(file_layer, env_overrides(env), overrides or {})


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def to_masked_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["url"] = mask_url(config.database.url)
    data["database"]["effective_url"] = mask_url(config.database_url)
    return data
