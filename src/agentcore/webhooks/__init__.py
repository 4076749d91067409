"""Outbound webhooks: signed, at-least-once delivery of event-log events (docs/webhooks.md).

``signing`` (Standard Webhooks signatures), ``ssrf`` (which addresses a URL
may reach), ``store`` (webhooks, the outbox, the attempt log), ``dispatcher``
(event log -> outbox), ``sender`` (one HTTP attempt), ``delivery`` (outbox ->
sender: claims, retries, dead letters), ``worker`` (runs both), ``api``
(``/api/v1/integration/webhooks``).
"""
