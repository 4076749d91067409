"""Webhook signing secrets encrypted at rest (:class:`SecretBox`).

Whoever reads the database (a backup, a replica, a copied file) must not be
able to sign webhooks as the gateway. So the SQL repository stores each
secret sealed with AES-256-GCM under a key kept outside the database: a file
(``webhooks.secrets_key_file``, by default ``<data_dir>/webhook-secrets.key``,
mode ``0600``) holding 32 random bytes in base64, generated on first use.
Every process that signs (gateway workers, ``agentcore worker``, other hosts
on the same PostgreSQL) needs the same file.

A sealed secret reads ``enc1:<key id>:<base64 of nonce and ciphertext>``; the
key id (the first 8 hex digits of the key's SHA-256) names the key that sealed
it, so a wrong or regenerated key file is reported as such instead of as a
failed decryption. The webhook's id is the associated data: a sealed secret
copied into another webhook's row does not open. A value without the prefix
is a clear-text secret written by an older version: it is still read, and
:meth:`SqlWebhooks.seal <agentcore.webhooks.repository.SqlWebhooks.seal>`
encrypts those in place at startup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentcore.datadir import FILE_MODE, private_dir, tighten, write_private_file
from agentcore.entropy import random_bytes
from agentcore.errors import ConfigError

PREFIX = "enc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE_NAME = "webhook-secrets.key"


class SecretBox:
    """Seals and opens secrets with the key in ``path``, read (or made) by :meth:`load`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._aead: AESGCM | None = None
        #: The loaded key's id (see the module docstring); empty until :meth:`load`.
        self.key_id = ""

    @classmethod
    def from_key(cls, key: bytes) -> SecretBox:
        """A box holding ``key`` itself, with no file (tests, tools)."""
        box = cls("")
        box._use(key)
        return box

    @property
    def loaded(self) -> bool:
        return self._aead is not None

    def load(self) -> None:
        """Read the key file, or create it (``0600``, in a ``0700`` directory) when missing.

        :class:`ConfigError` when the file exists but holds no key. Idempotent.
        """
        if self._aead is not None:
            return
        if not self.path.exists():
            private_dir(self.path.parent)
            encoded = base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
            write_private_file(self.path, encoded)  # another process may win: read its key
        tighten(self.path, FILE_MODE)
        try:
            text = self.path.read_text().strip()
            key = base64.b64decode(text, validate=True)
        except (OSError, UnicodeDecodeError, binascii.Error) as exc:
            raise ConfigError(
                f"webhooks.secrets_key_file: cannot read a key from {self.path}: {exc}"
            ) from exc
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"webhooks.secrets_key_file: {self.path} must hold {KEY_BYTES} bytes in "
                f"base64, it holds {len(key)}"
            )
        self._use(key)

    def _use(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:8]

    def _box(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("SecretBox.load() was not called")
        return self._aead

    def seal(self, secret: str, webhook_id: str) -> str:
        nonce = random_bytes.take(NONCE_BYTES)
        sealed = self._box().encrypt(nonce, secret.encode(), webhook_id.encode())
        return f"{PREFIX}{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, webhook_id: str) -> str:
        """The secret ``stored`` holds; a clear-text one as it is.

        :class:`ConfigError` when it was sealed with another key or does not open
        (altered, or moved from another webhook's row).
        """
        if not is_sealed(stored):
            return stored
        key_id, _, payload = stored[len(PREFIX) :].partition(":")
        box = self._box()
        if key_id != self.key_id:
            raise ConfigError(
                f"webhook {webhook_id}'s secret was encrypted with key {key_id}, but "
                f"{self.path or 'the key'} holds key {self.key_id}: restore the key file "
                "the secrets were written with (webhooks.secrets_key_file)"
            )
        try:
            raw = base64.b64decode(payload, validate=True)
            plain = box.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], webhook_id.encode())
        except (binascii.Error, InvalidTag, ValueError) as exc:
            raise ConfigError(
                f"webhook {webhook_id}'s stored secret does not decrypt with key {self.key_id}: "
                "it was altered or copied from another webhook"
            ) from exc
        return plain.decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
