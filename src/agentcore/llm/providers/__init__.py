"""LLM providers behind one small interface (:mod:`.base`)."""
