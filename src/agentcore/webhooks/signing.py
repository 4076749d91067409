"""Standard Webhooks signatures (https://www.standardwebhooks.com/), as Svix signs.

A secret is ``whsec_`` + base64 of random bytes; the HMAC key is those bytes.
A message is signed as ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))
over the exact body bytes sent; ``webhook-signature`` holds one signature per
live secret, space-separated, so a receiver holding either the old or the new
secret verifies during a rotation's grace period.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

from agentcore.entropy import random_bytes

PREFIX = "whsec_"
#: Random bytes in a generated secret (Svix uses 24; the spec asks for 24 to 64).
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
#: Seconds a receiver accepts a timestamp away from its own clock (the spec's default).
TOLERANCE_S = 300


class InvalidSignature(Exception):
    """The headers do not prove the body came from a holder of the secret."""


def generate_secret() -> str:
    return PREFIX + base64.b64encode(random_bytes.take(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``whsec_...``; ValueError when it is not one of 24..64 bytes."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a secret starts with {PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("the part after whsec_ is not base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"a secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


def verify(
    secret: str,
    body: bytes,
    received: Mapping[str, str],
    now: float,
    tolerance_s: int = TOLERANCE_S,
) -> None:
    """Raise :class:`InvalidSignature` unless ``received`` signs ``body`` with ``secret``.

    ``received`` maps lower-case header names to values.
    """
    try:
        msg_id = received["webhook-id"]
        timestamp = int(received["webhook-timestamp"])
        signatures = received["webhook-signature"].split(" ")
    except (KeyError, ValueError) as exc:
        raise InvalidSignature("missing or malformed webhook headers") from exc
    if abs(now - timestamp) > tolerance_s:
        raise InvalidSignature("timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures if s.startswith("v1,")):
        raise InvalidSignature("no matching signature")
