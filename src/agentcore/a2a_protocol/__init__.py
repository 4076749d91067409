"""The import path the seed documents use: ``agentcore.a2a_protocol.main:app``."""
