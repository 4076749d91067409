"""Tests of ``agentcore loadtest`` (src/agentcore/loadtest)."""
