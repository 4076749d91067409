"""``uvicorn agentcore.a2a_protocol.main:app``: the gateway from the environment.

The configuration comes from ``AGENTCORE_CONFIG`` (a TOML file path, optional)
and ``AGENTCORE_<SECTION>__<KEY>`` variables; the app also gets the environment
for the credential variables the configuration names (LLM and S3 keys).
Building the app does no I/O (the store opens in the ASGI lifespan).
"""

from agentcore.app import create_app
from agentcore.config import load_config, process_environment

environ = process_environment()
app = create_app(load_config(environ=environ), environ=environ)
