"""LLM routing: providers from configuration, requirement-based model choice,
fallback with circuit breakers, OpenAI-compatible endpoints (docs/llm.md).

Nothing is imported here: ``agentcore.repositories`` imports ``llm.usage``.
"""
