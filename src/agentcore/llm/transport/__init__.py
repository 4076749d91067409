"""How LLM providers reach the network, behind one small interface (:mod:`.base`)."""
