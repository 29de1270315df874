"""Backup file names and the retention rule (pure, no I/O).

A backup is ``intunnel-YYYYMMDDTHHMMSSZ.db.gz`` (UTC time it was taken) on SQLite,
``intunnel-YYYYMMDDTHHMMSSZ.pgdump`` (``pg_dump --format=custom``) on PostgreSQL; with
``--include-config`` a companion ``intunnel-YYYYMMDDTHHMMSSZ.config.tar.gz``
holds the config file and secret key.

Retention, the same rule as restic's ``--keep-daily``/``--keep-weekly``:

* daily: among the calendar days (UTC) that have backups, the newest backup of
  each of the ``keep_daily`` most recent such days is kept;
* weekly: among the ISO weeks that have backups, the newest backup of each of
  the ``keep_weekly`` most recent such weeks is kept;
* the newest backup of all is always kept (even with both counts at 0);
* every other backup of either kind (and its config companion) is deleted: one
  timeline, so an appliance moved from SQLite to PostgreSQL ages its old
  SQLite backups out as the new ones come in.
  Files not named like a backup are never touched.

Counting days *with backups* rather than calendar days means a month of failed
cron runs does not silently expire every older backup.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Callable, Hashable, Iterable

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
SUFFIXES = {"sqlite": ".db.gz", "postgresql": ".pgdump"}  # by database backend
BACKUP_RE = re.compile(r"^intunnel-(\d{8}T\d{6}Z)(?:\.db\.gz|\.pgdump)$")
CONFIG_SUFFIX = ".config.tar.gz"


def stamp(when: datetime) -> str:
    return when.strftime(STAMP_FORMAT)


def backup_name(when: datetime, backend: str = "sqlite") -> str:
    return f"intunnel-{stamp(when)}{SUFFIXES[backend]}"


def config_name(when: datetime) -> str:
    return f"intunnel-{stamp(when)}{CONFIG_SUFFIX}"


def parse_backup_name(name: str) -> datetime | None:
    """The time a backup file was taken, or None if the name is not a backup's."""
    m = BACKUP_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), STAMP_FORMAT)
    except ValueError:  # e.g. month 13
        return None


def _newest_per(ordered: list[datetime], key: Callable[[datetime], Hashable], count: int) -> set[datetime]:
    """From newest-first times: the first (newest) of each of the ``count`` most recent keys."""
    kept: set[datetime] = set()
    seen: set[Hashable] = set()
    for when in ordered:
        k = key(when)
        if k in seen:
            continue
        if len(seen) >= count:
            break
        seen.add(k)
        kept.add(when)
    return kept


def select_keep(times: Iterable[datetime], keep_daily: int, keep_weekly: int) -> set[datetime]:
    """Which backup times survive (see the module docstring)."""
    if keep_daily < 0 or keep_weekly < 0:
        raise ValueError("retention counts must not be negative")
    ordered = sorted(set(times), reverse=True)
    if not ordered:
        return set()
    keep = {ordered[0]}
    keep |= _newest_per(ordered, lambda t: t.date(), keep_daily)
    keep |= _newest_per(ordered, lambda t: tuple(t.isocalendar())[:2], keep_weekly)
    return keep
