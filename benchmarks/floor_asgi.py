"""The floor: an ASGI app that does nothing, served the way ``agentcore serve`` serves the gateway.

It reads the whole request body of a POST (a GET has none, and the gateway
never asks for one: under Granian each ``receive()`` costs as much as a small
handler) and answers ``http_bench``'s fixed nginx bodies with
``content-type`` and ``content-length``, with the two ``send`` calls every
ASGI app makes. Run under Granian with the gateway's settings
(``Interfaces.ASGI``, ``Loops.uvloop``, one worker, backlog 4096, access log
off), it is what any ASGI application costs on this server before it does
any work: ``benchmarks/http_bench.py`` measures it beside the gateway, so the
gateway's own cost is the difference, and a goal above the floor's ratio is
out of reach for any ASGI app on the machine. ``--server uvicorn`` serves it
as the default ``agentcore serve`` does instead: uvicorn with uvloop and the
gateway's httptools protocol (``agentcore.http_server``).

    python benchmarks/floor_asgi.py --host 127.0.0.1 --port 8003 [--server uvicorn]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_bench import NGINX_HEALTH_BODY, NGINX_PING_BODY

HEALTH = NGINX_HEALTH_BODY.encode()
PING = NGINX_PING_BODY.encode()


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = HEALTH
    if scope["method"] == "POST":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        body = PING
    await send({"type": "http.response.start", "status": 200, "headers": _headers(body)})
    await send({"type": "http.response.body", "body": body})


def serve_uvicorn(host: str, port: int) -> None:
    import uvicorn

    from agentcore.http_server import GatewayHttpProtocol

    uvicorn.run(
        "floor_asgi:app",
        host=host,
        port=port,
        loop="uvloop",
        http=GatewayHttpProtocol,
        backlog=4096,
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


def serve_granian(host: str, port: int) -> None:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        "floor_asgi:app",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        backlog=4096,
        log_level=LogLevels.warning,
        log_access=False,
    ).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--server", choices=("granian", "uvicorn"), default="granian")
    args = parser.parse_args()
    serve = serve_uvicorn if args.server == "uvicorn" else serve_granian
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
