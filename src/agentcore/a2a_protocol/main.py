"""``uvicorn agentcore.a2a_protocol.main:app``: the gateway from the environment.

The configuration comes from ``AGENTCORE_CONFIG`` (a TOML file path, optional)
and ``AGENTCORE_<SECTION>__<KEY>`` variables; building the app does no I/O
(the store opens in the ASGI lifespan).
"""

from agentcore.app import create_app
from agentcore.config import load_config

app = create_app(load_config())
