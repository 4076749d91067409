"""Page cursors: where the previous page of a listing ended, as an opaque string.

A listing ordered by ``(name, id)`` or ``(created_at, id)`` continues after
the last row it returned: the cursor carries that row's sort key, and the next
query starts strictly after it in the same index. Unlike an offset, the cost
of page N does not grow with N, and rows inserted meanwhile do not shift it.
The string is URL-safe base64 of a JSON array; clients must not build one.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

from agentcore.errors import InvalidParams

_Key = tuple[str | float, str]
_decoder = msgspec.json.Decoder(tuple[str | float, str])


def encode(first: str | float, last_id: str) -> str:
    """The cursor after a row whose sort key is ``(first, last_id)``."""
    return base64.urlsafe_b64encode(msgspec.json.encode((first, last_id))).decode().rstrip("=")


def invalid() -> InvalidParams:
    """The error for an ``after`` that no listing issued."""
    return InvalidParams(
        "invalid params: 'after' is not a cursor returned by this listing",
        data={"field": "after"},
    )


def decode(cursor: str) -> _Key:
    """The sort key in ``cursor``; :func:`invalid` for anything this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise invalid() from exc
