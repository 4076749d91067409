"""API keys: ``ak_<id>_<secret>``, shown once, stored as a hash.

The id (12 hex characters) is public: it names the key in ``agentcore keys
list``, in rate-limit configuration and in logs. The secret
(``secrets.token_urlsafe(32)``, 256 random bits) is never stored; the store
keeps its SHA-256. A slow password KDF (bcrypt, scrypt, argon2) exists to make
guessing *low-entropy* passwords expensive; against 256 random bits a single
SHA-256 is already beyond brute force, and it keeps verification at about a
microsecond, so the hot path needs no worker thread.

Creating, listing and revoking keys is ``agentcore keys create|list|revoke``
(``cli.py``); checking them on requests is ``auth.StoreAuthenticator``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import msgspec

from agentcore.errors import ConfigError, Unauthorized
from agentcore.models import DEFAULT_TENANT

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


def default_scopes() -> list[str]:
    """Every scope but ``admin``: what ``agentcore keys create`` grants unless told."""
    from agentcore.auth import SCOPES  # auth imports this module

    return sorted(SCOPES - {"admin"})


def check_scopes(scopes: list[str]) -> list[str]:
    """The scopes sorted and without duplicates; :class:`ConfigError` for an unknown one."""
    from agentcore.auth import SCOPES  # auth imports this module

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
