"""`intunnel-admin backup` (take a verified backup, apply retention) and `backup list`.

SQLite: the backup API's online copy, ``PRAGMA integrity_check``, gzip.
PostgreSQL: ``pg_dump --format=custom`` (one snapshot: every row committed
before it began), verified with ``pg_restore --list`` (see ``pgtools``).
Either way the file is written to a 0600 temp file, fsynced and renamed, under
the admin lock, and retention applies to both kinds alike.

Cron-safe: no prompts, nothing on stdout on success unless -v, one line on
stderr and exit 1 on failure.  Retention rules: see ``retention``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import dburl
from ..settings import SECRET_KEY_FILE
from . import pgtools, retention
from .common import AdminError, Context, config_file_in_use, owner_of
from .dbfiles import admin_lock, atomic_output, atomic_path, gzip_to, integrity_problems, online_copy, set_owner

STALE_TEMP_AGE = 3600  # seconds; older temp files are leftovers of a killed run


def parse_now(value: str | None) -> datetime:
    """The backup's timestamp: now, or an injected ISO time (tests simulate a month of runs)."""
    if not value:
        return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"--now: expected an ISO time like 2026-01-31T03:00:00Z, got {value!r}", 2) from None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when.replace(microsecond=0)


def backup_dir(ctx: Context, args) -> Path:
    return Path(args.dest) if getattr(args, "dest", None) else ctx.settings.backup_path


def list_backups(directory: Path) -> list[tuple[datetime, Path]]:
    """(taken at, path) of every backup in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        when = retention.parse_backup_name(entry.name)
        if when is not None and entry.is_file():
            found.append((when, entry))
    return sorted(found, reverse=True)


def remove_stale_temp_files(directory: Path) -> None:
    cutoff = time.time() - STALE_TEMP_AGE
    for entry in directory.glob(".intunnel-*.tmp-*"):
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                entry.unlink()


def write_config_archive(final: Path, config_file: Path | None, data_dir: Path, owner) -> list[str]:
    """config file + secret key file as a 0600 tar.gz; returns the member names."""
    members = []
    with atomic_output(final, owner=owner) as out, tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path, arcname in ((config_file, "intunnel.toml"), (data_dir / SECRET_KEY_FILE, SECRET_KEY_FILE)):
            if path is None or not path.is_file():
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o600, int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            members.append(arcname)
    return members


def apply_retention(directory: Path, keep_daily: int, keep_weekly: int) -> list[Path]:
    """Delete the backups (and their config companions) retention does not keep."""
    backups = list_backups(directory)
    keep = retention.select_keep([when for when, _ in backups], keep_daily, keep_weekly)
    removed = []
    for when, path in backups:
        if when in keep:
            continue
        path.unlink()
        removed.append(path)
        with contextlib.suppress(FileNotFoundError):
            (directory / retention.config_name(when)).unlink()
    return removed


def lock_path(settings) -> Path:
    """What the admin lock is named after: the SQLite file, or one per data dir on PostgreSQL."""
    if settings.db_backend == dburl.SQLITE:
        return settings.db_path
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data_dir / "intunnel-postgresql"


def write_sqlite_backup(settings, dest: Path, now: datetime, owner) -> Path:
    """A consistent online copy, integrity-checked, gzipped into place."""
    final = dest / retention.backup_name(now)
    snapshot = dest / f".intunnel-{retention.stamp(now)}.db.tmp-{os.getpid()}"
    try:
        online_copy(settings.db_path, snapshot)
        problems = integrity_problems(snapshot)
        if problems:
            raise AdminError(f"the copy failed the integrity check ({problems[0]}); nothing written. "
                             "Check the live database with 'intunnel-admin db check'")
        gzip_to(snapshot, final, owner)
    finally:
        for leftover in (snapshot, Path(f"{snapshot}-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return final


def verify_dump(tools: pgtools.Tools, archive: Path, what: str) -> list[dict]:
    """pg_restore --list reads the whole table of contents; an InTunnel dump has schema_version."""
    entries = tools.listing(archive, what)
    if not any(e["kind"] == "TABLE DATA" and e["name"] == "schema_version" for e in entries):
        raise AdminError(f"{what}: the dump has no schema_version table: not an InTunnel database")
    return entries


def write_postgresql_dump(tools: pgtools.Tools, settings, final: Path, owner, what: str = "backup",
                          require_intunnel: bool = True) -> None:
    """pg_dump --format=custom into a 0600 temp file, verified, fsynced and renamed to ``final``."""
    with atomic_path(final, owner=owner) as tmp:
        tools.dump(settings, tmp, what)
        if require_intunnel:
            verify_dump(tools, tmp, what)
        else:
            tools.listing(tmp, what)


def take_backup(ctx: Context, args) -> dict:
    settings = ctx.settings
    backend = settings.db_backend
    dest = backup_dir(ctx, args)
    keep_daily = settings.backup_keep_daily if args.keep_daily is None else args.keep_daily
    keep_weekly = settings.backup_keep_weekly if args.keep_weekly is None else args.keep_weekly
    if keep_daily < 0 or keep_weekly < 0:
        raise AdminError("--keep-daily and --keep-weekly must be 0 or more", 2)
    now = parse_now(args.now)
    if backend == dburl.SQLITE and not settings.db_path.exists():
        raise AdminError(f"database {settings.db_path} does not exist (wrong --config?)")
    # Before the lock: a server the tools cannot dump fails at once, in one line.
    tools = pgtools.find_tools(settings, args.pg_bindir) if backend != dburl.SQLITE else None
    owner = owner_of(Path(settings.data_dir))

    with admin_lock(lock_path(settings), args.lock_timeout, owner):
        if not dest.is_dir():
            dest.mkdir(mode=0o700, parents=True)
            set_owner(dest, owner)  # the service user must be able to read its backups
        remove_stale_temp_files(dest)
        if tools is None:
            final = write_sqlite_backup(settings, dest, now, owner)
        else:
            final = dest / retention.backup_name(now, backend)
            write_postgresql_dump(tools, settings, final, owner)
        config_members = None
        if args.include_config:
            config_members = write_config_archive(dest / retention.config_name(now),
                                                  config_file_in_use(args.config), Path(settings.data_dir), owner)
        removed = apply_retention(dest, keep_daily, keep_weekly)
    return {"path": str(final), "size": final.stat().st_size, "taken_at": now.isoformat() + "Z",
            "config_archive": config_members, "removed": [str(p) for p in removed]}


def cmd_backup(ctx: Context, args) -> int:
    if getattr(args, "backup_action", None) == "list":
        return cmd_list(ctx, args)
    result = take_backup(ctx, args)
    if ctx.json:
        ctx.emit_json({"backup": result})
        return 0
    checked = "integrity ok" if ctx.settings.db_backend == dburl.SQLITE else "pg_restore --list ok"
    ctx.note(f"backup written: {result['path']} ({result['size']} bytes, {checked})")
    if result["config_archive"] is not None:
        ctx.note(f"config archive: {', '.join(result['config_archive']) or 'nothing to include'}")
    for path in result["removed"]:
        ctx.note(f"retention removed {path}")
    return 0


def cmd_list(ctx: Context, args) -> int:
    directory = backup_dir(ctx, args)
    items = []
    for when, path in list_backups(directory):
        config = directory / retention.config_name(when)
        items.append({"file": path.name, "path": str(path), "size": path.stat().st_size,
                      "taken_at": when.isoformat() + "Z", "config": str(config) if config.exists() else None})
    rows = [[d["file"], d["size"], d["taken_at"], d["config"] is not None] for d in items]
    ctx.emit_list("backups", items, ("FILE", "BYTES", "TAKEN", "CONFIG"), rows)
    return 0


def register(groups, common) -> None:
    b = groups.add_parser("backup", parents=[common], help="take a verified backup (cron-safe); 'backup list'",
                          description="Take a consistent, verified, compressed backup of the database "
                                      "and apply retention.  Silent on success unless -v.")
    b.add_argument("--dest", metavar="DIR", help="backup directory (default: setting backup_dir)")
    b.add_argument("--keep-daily", type=int, metavar="N", help="daily backups to keep (setting backup_keep_daily)")
    b.add_argument("--keep-weekly", type=int, metavar="M", help="weekly backups to keep (setting backup_keep_weekly)")
    b.add_argument("--include-config", action="store_true",
                   help="also save the config file and secret key beside it (intunnel-*.config.tar.gz)")
    b.add_argument("--lock-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="wait this long for another backup/restore to finish (default 600)")
    b.add_argument("--pg-bindir", metavar="DIR",
                   help="PostgreSQL: the pg_dump to use (default: the server's major version among "
                        "/usr/lib/postgresql/*/bin and PATH)")
    b.add_argument("--now", help=argparse.SUPPRESS)  # injected clock: tests simulate a month of runs
    b.set_defaults(func=cmd_backup)
    sub = b.add_subparsers(dest="backup_action", metavar="ACTION")
    ls = sub.add_parser("list", parents=[common], help="list backups, newest first")
    ls.add_argument("--dest", metavar="DIR", default=argparse.SUPPRESS,
                    help="backup directory (default: setting backup_dir)")
    ls.set_defaults(func=cmd_list)
