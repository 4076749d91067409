"""Response heads from header lines checked once per server, not once per response.

A gateway's responses repeat the same headers, and uvicorn checks each with
two regular expressions and lower-cases it on every response; remembering the
checked line of each ``(name, value)`` pair skips that work while writing the
same bytes (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from agentcore.http_server.uvicorn_internals import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

#: Distinct checked header lines remembered (past it, the oldest are checked again).
HEADER_LINES = 4096
#: Headers that frame the message: the general path handles them.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


@functools.lru_cache(maxsize=HEADER_LINES)
def header_line(name: bytes, value: bytes) -> bytes | None:
    """``name: value\\r\\n`` as uvicorn writes it; None for a header uvicorn would
    refuse (a bad name or value) or act on (framing), which take the general path."""
    if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
        return None
    lowered = name.lower()
    if lowered in _FRAMING:
        return None
    return lowered + b": " + value + b"\r\n"


def response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]], lines: dict[tuple[bytes, bytes], bytes]
) -> tuple[bytes, int] | None:
    """The status line and headers of a response with exactly one numeric
    Content-Length and nothing uvicorn treats specially, and that length;
    None otherwise.

    ``lines`` remembers the checked line of each ``(name, value)`` pair (the
    first :data:`HEADER_LINES` distinct ones): most of a gateway's response
    headers repeat from one response to the next, and a dict lookup on the
    pair is cheaper than a call to :func:`header_line` (performance-history.md,
    "HTTP throughput", fourth session).
    """
    status_line = STATUS_LINE.get(status)
    if status_line is None:
        return None
    parts = [status_line]
    length: bytes | None = None
    try:
        for pair in headers:
            line = lines.get(pair)
            if line is None:
                name, value = pair
                if name == b"content-length":
                    if length is not None or not value.isdigit():
                        return None
                    length = value
                    parts.append(b"content-length: " + value + b"\r\n")
                    continue
                line = header_line(name, value)
                if line is None:
                    return None
                if len(lines) < HEADER_LINES:
                    lines[pair] = line
            parts.append(line)
    except TypeError:  # a header given as a list (unhashable): the general path
        return None
    if length is None:
        return None
    parts.append(b"\r\n")
    return b"".join(parts), int(length)
