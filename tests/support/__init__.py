"""Reusable test helpers (real servers on port 0); import as ``from support.x import ...``."""
