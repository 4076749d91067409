"""The parts of uvicorn the gateway's HTTP protocol relies on beyond its public API.

The protocol subclasses uvicorn's httptools protocol, copies two of its method
bodies and reuses its header checks, status lines and private methods, so it
is only known to work with the uvicorn releases it was tested with
(:data:`TESTED_UVICORN`, the same range pyproject.toml pins). Every such name
is imported or looked up here, once, and importing this module fails with an
``ImportError`` naming that range when uvicorn is outside it or lacks one of
them: a uvicorn upgrade stops the gateway at startup (``agentcore serve`` or
``uvicorn --http agentcore.http_server:GatewayHttpProtocol``) and in the
tests, never in the middle of a request. Falling back to uvicorn's stock
protocol instead was rejected: it would silently drop the request-head limits
(docs/security.md) along with the speed.

To move the range: install the new uvicorn, widen :data:`TESTED_UVICORN`, run
tests/test_http_protocol.py, tests/test_server.py and tests/realtime, and
widen the pin in pyproject.toml to match (tests/test_http_server_uvicorn.py
checks the two agree).
"""

from __future__ import annotations

import re

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.server import ServerState

#: uvicorn releases the protocol was tested with: at least the first
#: ``major.minor``, below the second (pyproject.toml's ``uvicorn[standard]`` pin).
TESTED_UVICORN = ("0.50", "0.56")


def specifier() -> str:
    """:data:`TESTED_UVICORN` as a version specifier (``>=0.50,<0.56``)."""
    low, high = TESTED_UVICORN
    return f">={low},<{high}"


def _minor(version: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a version: {version!r}")
    return int(found[1]), int(found[2])


def is_tested(version: str) -> bool:
    """Whether uvicorn ``version`` is inside :data:`TESTED_UVICORN` (by major.minor)."""
    low, high = TESTED_UVICORN
    return _minor(low) <= _minor(version) < _minor(high)


def require_tested(version: str) -> None:
    """Raise ``ImportError`` naming the tested range unless ``version`` is in it."""
    if not is_tested(version):
        raise ImportError(
            f"uvicorn {version} is installed; agentcore's HTTP protocol was tested with "
            f"uvicorn{specifier()}: install a uvicorn in that range "
            "(or serve with --server granian)"
        )


def _lacking(what: str) -> ImportError:
    return ImportError(
        f"uvicorn {uvicorn.__version__} lacks {what}, which agentcore's HTTP protocol "
        f"uses (tested with uvicorn{specifier()})"
    )


require_tested(uvicorn.__version__)

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
    "TESTED_UVICORN",
    "HttpToolsProtocol",
    "is_tested",
    "missing_internals",
    "require_tested",
    "specifier",
]
