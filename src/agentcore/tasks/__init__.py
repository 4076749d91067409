"""Tasks: ``service`` (the state machine and assignment) over ``repository`` (tasks as
stored, in SQL or in memory)."""
