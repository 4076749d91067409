"""The parts of uvicorn the gateway's HTTP protocol relies on beyond its public API.

The protocol subclasses uvicorn's httptools protocol, copies two of its method
bodies and reuses its header checks, status lines and private methods. Every
such name is imported or looked up here, once, and importing this module
fails with an ``ImportError`` naming what is missing: a uvicorn upgrade stops
the gateway at startup and in the tests, in this one place, never in the
middle of a request.
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.server import ServerState


def _lacking(what: str) -> ImportError:
    return ImportError(
        f"uvicorn {uvicorn.__version__} lacks {what}, which agentcore's HTTP protocol uses"
    )


try:
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        HttpToolsProtocol,
    )
except ImportError as exc:
    raise _lacking(exc.name or str(exc)) from exc

#: Methods the protocol calls or overrides on uvicorn's classes.
REQUIRED_METHODS: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: (
        "_should_upgrade",
        "_start_asgi_task",
        "_unsupported_upgrade_warning",
        "connection_lost",
        "connection_made",
        "data_received",
        "handle_websocket_upgrade",
        "on_body",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
        "shutdown",
    ),
    FlowControl: ("drain", "pause_reading", "resume_reading"),
}


def missing_internals() -> list[str]:
    """What of :data:`REQUIRED_METHODS` the installed uvicorn lacks, and whether
    ``ServerState`` lost the ``__dict__`` the per-server holder is kept in (shared.py)."""
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in REQUIRED_METHODS.items()
        for name in names
        if not hasattr(cls, name)
    ]
    if hasattr(ServerState, "__slots__"):
        missing.append("ServerState.__dict__ (it has __slots__)")
    return missing


if _missing := missing_internals():
    raise _lacking(", ".join(_missing))

__all__ = [
    "HEADER_RE",
    "HEADER_VALUE_RE",
    "HIGH_WATER_LIMIT",
    "STATUS_LINE",
    "HttpToolsProtocol",
    "missing_internals",
]
