"""LLM routing: providers from configuration, requirement-based model choice,
fallback with circuit breakers, OpenAI-compatible endpoints (docs/llm.md).

Nothing is imported here: ``store/sql.py`` imports ``llm.accounting``.
"""
