"""The agent registry: ``service`` (registration, heartbeats, discovery, expiry) over
``repository`` (agents as stored, in SQL or in memory)."""
