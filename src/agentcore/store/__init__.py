"""The database: drivers (``database.py``, ``sqlite.py``, ``postgres.py``), the schema
and its migrations (``schema.py``), the pieces SQL statements are built from
(``sql.py``) and the in-memory database (``memory.py``).

Nothing here knows agents or tasks: each concept's repository is next to its
code, and ``agentcore.repositories`` gathers them over one database.
"""
