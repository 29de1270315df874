"""The web app's name for ``intunnel.sqlcache`` (moved out of the web package: the relay uses it too)."""

from ..sqlcache import cached_sql

__all__ = ["cached_sql"]
