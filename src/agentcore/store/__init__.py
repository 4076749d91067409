"""Persistence: :func:`open_store` picks the backend from a URL."""

from __future__ import annotations

from agentcore.errors import ConfigError
from agentcore.store.base import Store
from agentcore.store.postgres import PostgresDatabase
from agentcore.store.sql import SqlStore
from agentcore.store.sqlite import SqliteDatabase

__all__ = ["Store", "open_store"]


def open_store(
    url: str,
    *,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    statement_timeout_s: float = 1.0,
) -> Store:
    """Build the store for ``url``; the caller awaits ``store.open()`` to connect.

    ``sqlite:///rel/path.db`` (relative to the working directory),
    ``sqlite:////abs/path.db``, ``sqlite://:memory:``, ``postgresql://...``
    or ``postgres://...``. Raises :class:`ConfigError` for anything else.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("store url: expected scheme://..., e.g. sqlite:///data/agentcore.db")
    if scheme == "sqlite":
        path = rest.removeprefix("/")
        if not path:
            raise ConfigError("store url: sqlite needs a path, e.g. sqlite:///data/agentcore.db")
        return SqlStore(SqliteDatabase(path, statement_timeout_s=statement_timeout_s))
    if scheme in ("postgresql", "postgres"):
        return SqlStore(
            PostgresDatabase(
                url,
                min_size=pool_min_size,
                max_size=pool_max_size,
                statement_timeout_s=statement_timeout_s,
            )
        )
    raise ConfigError(f"store url: unsupported scheme {scheme!r} (sqlite, postgresql)")
