"""API keys: ``ak_<id>_<secret>``, shown once, stored as a hash.

The id (12 hex characters) is public: it names the key in ``agentcore keys
list``, in rate-limit configuration and in logs. The secret
(``secrets.token_urlsafe(32)``, 256 random bits) is never stored; the store
keeps its SHA-256. A slow password KDF (bcrypt, scrypt, argon2) exists to make
guessing *low-entropy* passwords expensive; against 256 random bits a single
SHA-256 is already beyond brute force, and it is cheap enough to verify on
the event loop, so the hot path needs no worker thread.

Creating, listing and revoking keys is ``agentcore keys create|list|revoke``
(``cli.py``); checking them on requests is ``auth.StoreAuthenticator``. Keys
are stored through an :class:`ApiKeyRepository`: :class:`SqlApiKeys` (table
``api_keys``) or :class:`MemoryApiKeys`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from agentcore.errors import ConfigError, Unauthorized
from agentcore.identity import SCOPES
from agentcore.models import DEFAULT_TENANT
from agentcore.store.database import Driver
from agentcore.store.memory import AUTOCOMMIT, Journal, MemoryDatabase, put
from agentcore.store.sql import Args, json_text

PREFIX = "ak_"
_FORMAT = re.compile(r"ak_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})")
#: Tenants and agent ids follow the agent id rules of the API (models.Id).
_NAME = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """One stored key. ``hash`` is the SHA-256 (hex) of the secret, never the secret."""

    id: str
    name: str = ""
    tenant: str = DEFAULT_TENANT
    scopes: list[str]
    #: Set for an agent's key: it may act only as this agent.
    agent_id: str | None = None
    hash: str
    #: Epoch seconds.
    created_at: float
    #: Epoch seconds; None while the key is valid.
    revoked_at: float | None = None


def default_scopes(agent_id: str | None = None) -> list[str]:
    """What ``agentcore keys create`` grants unless told: every scope but ``admin``
    and ``metrics:read`` (it reads every tenant's series), and for an agent's key
    (``agent_id``) not ``events:write`` either: an agent reports through its
    tasks, and a key that leaks from one agent should not be able to publish to
    the whole tenant."""
    withheld = {"admin", "metrics:read"}
    if agent_id is not None:
        withheld.add("events:write")
    return sorted(SCOPES - withheld)


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes sorted and without duplicates; :class:`ConfigError` for an unknown one."""
    if not scopes:
        raise ConfigError("an API key needs at least one scope")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ConfigError(
            f"unknown scope {', '.join(map(repr, unknown))}; known: {', '.join(sorted(SCOPES))}"
        )
    return sorted(set(scopes))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate(
    *,
    tenant: str,
    scopes: list[str],
    now: float,
    name: str = "",
    agent_id: str | None = None,
) -> tuple[str, ApiKey]:
    """A new key: the full ``ak_<id>_<secret>`` (to show once) and the record to store.

    Raises :class:`ConfigError` for an unknown scope or a malformed tenant or agent id.
    """
    for label, value in (("tenant", tenant), ("agent id", agent_id)):
        if value is not None and not _NAME.fullmatch(value):
            raise ConfigError(
                f"invalid {label} {value!r}: 1-128 characters of A-Z a-z 0-9 . _ : @ / -"
            )
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        name=name,
        tenant=tenant,
        scopes=check_scopes(scopes),
        agent_id=agent_id,
        hash=_digest(secret),
        created_at=now,
    )
    return f"{PREFIX}{key_id}_{secret}", key


def parse(full: str) -> tuple[str, str]:
    """``(id, secret)`` of a full key; :class:`Unauthorized` when it is not shaped like one."""
    match = _FORMAT.fullmatch(full)
    if match is None:
        raise Unauthorized("malformed API key (expected ak_<id>_<secret>)")
    return match[1], match[2]


def verify(key: ApiKey, secret: str) -> bool:
    """Whether ``secret`` is this key's (constant-time); revocation is the caller's check."""
    return hmac.compare_digest(key.hash, _digest(secret))


# -- the repository -----------------------------------------------------------


class ApiKeyRepository(Protocol):
    async def put(self, key: ApiKey) -> bool:
        """Insert a new key; False (nothing written) when its id is taken."""

    async def get(self, key_id: str) -> ApiKey | None:
        """The key, revoked or not."""

    async def keys(self, tenant: str | None) -> list[ApiKey]:
        """Keys of ``tenant`` (None: every tenant), revoked ones included, oldest first."""

    async def revoke(self, key_id: str, now: float) -> bool:
        """Set ``revoked_at`` to ``now`` (epoch s); False when unknown or already revoked."""


_COLUMNS = "id, name, tenant, scopes, agent_id, hash, created_at, revoked_at"
_scopes_decoder = msgspec.json.Decoder(list[str])


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        tenant=row[2],
        scopes=_scopes_decoder.decode(row[3]),
        agent_id=row[4],
        hash=row[5],
        created_at=row[6],
        revoked_at=row[7],
    )


class SqlApiKeys:
    def __init__(self, db: Driver) -> None:
        self._db = db

    async def put(self, key: ApiKey) -> bool:
        changed = await self._db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
            "ON CONFLICT (id) DO NOTHING",
            key.id,
            key.name,
            key.tenant,
            json_text(key.scopes),
            key.agent_id,
            key.hash,
            float(key.created_at),
            None if key.revoked_at is None else float(key.revoked_at),
        )
        return changed > 0

    async def get(self, key_id: str) -> ApiKey | None:
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return _key(rows[0]) if rows else None

    async def keys(self, tenant: str | None) -> list[ApiKey]:
        args = Args()
        condition = "" if tenant is None else f" WHERE tenant = {args(tenant)}"
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys{condition} ORDER BY created_at, id", *args
        )
        return [_key(row) for row in rows]

    async def revoke(self, key_id: str, now: float) -> bool:
        changed = await self._db.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            key_id,
            float(now),
        )
        return changed > 0


class ApiKeyTable:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}


class MemoryApiKeys:
    def __init__(self, db: MemoryDatabase, journal: Journal = AUTOCOMMIT) -> None:
        self._db = db
        self._journal = journal
        self._table = db.table(ApiKeyTable)

    def _set(self, key: ApiKey) -> None:
        put(self._journal, self._table.keys, key.id, key)

    async def put(self, key: ApiKey) -> bool:
        self._db.check()
        if key.id in self._table.keys:
            return False
        self._set(key)
        return True

    async def get(self, key_id: str) -> ApiKey | None:
        self._db.check()
        return self._table.keys.get(key_id)

    async def keys(self, tenant: str | None) -> list[ApiKey]:
        self._db.check()
        keys = (k for k in self._table.keys.values() if tenant is None or k.tenant == tenant)
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, now: float) -> bool:
        self._db.check()
        key = self._table.keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._set(msgspec.structs.replace(key, revoked_at=float(now)))
        return True
