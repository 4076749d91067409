"""Real-time streams of the event log: WebSocket and SSE."""
