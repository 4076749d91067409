"""The gateway's HTTP server protocol for uvicorn, one module per part.

``agentcore serve`` runs uvicorn with :class:`GatewayHttpProtocol`, and any
uvicorn command line can too:
``uvicorn --http agentcore.http_server:GatewayHttpProtocol``. It works only
with the uvicorn releases it was tested with (uvicorn_internals.py says
which, and fails the import otherwise).

- protocol.py: the protocol, uvicorn's own with a lean path for common requests
- cycle.py: one request and its response on that path
- eager.py: starting the app eagerly (Python 3.12's eager tasks, for 3.11)
- writes.py: a loop turn's responses written together after it
- keepalive.py: idle connections and overdue heads, one sweep per server
- headers.py: response heads from header lines checked once
- shared.py: what one server's connections share
- uvicorn_internals.py: the uvicorn internals relied on, checked in one place
"""

from agentcore.http_server.protocol import GatewayHttpProtocol

__all__ = ["GatewayHttpProtocol"]
