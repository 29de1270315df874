"""Reuse the SQL text peewee generates for the hottest queries (the web app's, the relay's).

For a small query peewee spends longer writing the SQL than SQLite spends
running it.  ``cached_sql(name, build, params)`` builds the query once per
kind of database (the SQL is still peewee's, so it stays portable), checks its
parameters are exactly ``params`` in that order, and hands back the text.
"""

from __future__ import annotations

from typing import Callable, Sequence

import peewee as pw

from .models import database

_cache: dict[tuple[int, str], str] = {}


def cached_sql(name: str, build: Callable[[], pw.Query], params: Sequence) -> str:
    # By the database's class, not its id: the SQL differs between backends
    # (placeholders), and a freed database's id may be reused by another one.
    key = (type(database.obj), name)
    sql = _cache.get(key)
    if sql is None:
        sql, built = build().sql()
        if list(built) != list(params):
            raise RuntimeError(f"query {name!r}: parameters {built!r} are not {list(params)!r}")
        _cache[key] = sql
    return sql
