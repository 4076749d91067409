"""Outbound webhooks: signed, at-least-once delivery of event-log events (docs/webhooks.md).

``signing`` (Standard Webhooks signatures), ``ssrf`` (which addresses a URL
may reach), ``repository`` (webhooks, the outbox, the attempt log; in SQL and
in memory), ``dispatcher`` (event log -> outbox), ``sender`` (one HTTP
attempt), ``delivery`` (outbox -> sender: claims, retries, dead letters),
``worker`` (runs both), ``api`` (``/api/v1/integration/webhooks``).
"""
