"""Optional backends: which package extra installs each one's library.

The embedded default (SQLite, rate limits and event fan-out in the process,
uvicorn, files under the data directory) runs on the core dependencies.
Every other backend's library comes with an extra of the package:

- ``postgres`` (asyncpg): ``database.url`` is ``postgresql://...``;
- ``redis`` (redis): ``rate_limit.backend`` or ``events.fanout`` is ``redis``;
- ``granian`` (granian): ``server.server`` is ``granian``;
- ``s3`` (boto3): ``storage.backend`` is ``s3``.

:func:`require` is the one import guard: each backend calls it (through its
:class:`Backend` below) where it is chosen, so a missing library stops
startup with a :class:`ConfigError` that names the extra, rather than an
``ImportError`` from deep inside. :func:`check` runs every guard a
configuration needs at once (the CLI, before any worker starts).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from agentcore.config import Config, parse_url
from agentcore.errors import ConfigError

PACKAGE = "agentcore-gateway"


@dataclass(frozen=True, slots=True)
class Backend:
    """An optional backend: its library, the extra that installs it, the setting that picks it."""

    module: str
    extra: str
    setting: str

    def require(self) -> ModuleType:
        return require(self.module, self.extra, self.setting)


POSTGRES = Backend("asyncpg", "postgres", "database.url = postgresql://...")
REDIS_RATE_LIMIT = Backend("redis", "redis", 'rate_limit.backend = "redis"')
REDIS_FANOUT = Backend("redis", "redis", 'events.fanout = "redis"')
GRANIAN = Backend("granian", "granian", 'server.server = "granian"')
S3 = Backend("boto3", "s3", 'storage.backend = "s3"')


def require(module: str, extra: str, wanted_by: str) -> ModuleType:
    """``module`` imported, or :class:`ConfigError` naming ``extra``; ``wanted_by`` is
    the setting that asked for it, as the operator writes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{wanted_by} needs the Python package {module}, which is not installed; "
            f"install it with: pip install '{PACKAGE}[{extra}]'"
        ) from exc


def needed(config: Config) -> list[Backend]:
    """Every optional backend ``config`` selects."""
    chosen = {
        POSTGRES: parse_url(config.database_url)[0] == "postgresql",
        REDIS_RATE_LIMIT: config.rate_limit.backend == "redis",
        REDIS_FANOUT: config.events.fanout == "redis",
        GRANIAN: config.server.server == "granian",
        S3: config.storage.backend == "s3",
    }
    return [backend for backend, selected in chosen.items() if selected]


def check(config: Config) -> None:
    """:class:`ConfigError` for the first backend ``config`` selects whose library is missing."""
    for backend in needed(config):
        backend.require()
