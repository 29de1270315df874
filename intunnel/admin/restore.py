"""`intunnel-admin restore FILE`: verify a backup, keep the current database,
put the backup in its place and migrate it to this code's schema.

The same rules on both backends, under the admin lock:

1. verify the backup before anything changes (SQLite: integrity_check;
   PostgreSQL: ``pg_restore --list`` and the schema_version rows inside it),
   and refuse a schema newer than this code;
2. refuse while the web app or the relay answer, or systemd runs them
   (``--force`` to override);
3. keep what was there: SQLite copies the current file to
   ``<db>.pre-restore-<time>``; PostgreSQL dumps the current database with
   pg_dump to ``<data_dir>/<dbname>.pre-restore-<time>.pgdump`` (verified, 0600)
   -- restorable with this same command;
4. put the backup in place: SQLite renames the unpacked file over the old one;
   PostgreSQL drops the tables and restores the dump in ONE transaction
   (``pgtools.Tools.restore``), so a failure leaves the database as it was;
5. migrate to this code's schema version.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from urllib.parse import urlsplit
from datetime import datetime, timezone
from pathlib import Path

from .. import dburl, migrations
from ..models import connect_settings, open_database
from . import pgtools, retention
from .backup import lock_path, verify_dump, write_postgresql_dump
from .common import AdminError, Context, give_to_owner_of, owner_of, sqlite_files
from .dbfiles import (admin_lock, fsync_dir, integrity_problems, online_copy, schema_version_of, set_owner,
                      unpack_to)
from .probe import STOP_UNITS, UNITS, probe_services, systemd_active_units


def running_services(settings) -> list[str]:
    """What still uses the database: answering health endpoints and active systemd units."""
    found = [f"{p.name} ({p.url})" for p in probe_services(settings) if p.listening]
    found += [f"systemd unit {unit}" for unit in systemd_active_units()]
    return found


def verify_backup(source: Path, unpacked: Path) -> int:
    """Unpack ``source`` to ``unpacked`` and check it; return its schema version."""
    unpack_to(source, unpacked)
    problems = integrity_problems(unpacked)
    if problems:
        raise AdminError(f"{source}: failed the integrity check ({problems[0]}); nothing changed")
    version = schema_version_of(unpacked)
    if version is None:
        raise AdminError(f"{source}: not an InTunnel database (no schema_version table); nothing changed")
    if version > migrations.LATEST:
        raise AdminError(f"{source}: schema version {version} is newer than this InTunnel "
                         f"(version {migrations.LATEST}); upgrade InTunnel first. Nothing changed")
    return version


def retire_wal(db_path: Path) -> None:
    """Fold the WAL into the old file and remove -wal/-shm, so they can never be
    replayed onto the restored file that takes its name."""
    conn = sqlite3.connect(str(db_path), timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for extra in sqlite_files(db_path)[1:]:
        with contextlib.suppress(FileNotFoundError):
            extra.unlink()


def keep_current(db_path: Path, now: datetime, owner) -> Path:
    keep = db_path.with_name(f"{db_path.name}.pre-restore-{retention.stamp(now)}")
    if keep.exists():
        keep = keep.with_name(f"{keep.name}-{os.getpid()}")
    online_copy(db_path, keep)
    os.chmod(keep, 0o600)
    set_owner(keep, owner)
    return keep


def refuse_if_running(settings, force: bool) -> list[str]:
    running = running_services(settings)
    if running and not force:
        raise AdminError("refusing to restore while InTunnel is running: " + ", ".join(running)
                         + f"; stop it first (systemctl stop {' '.join(STOP_UNITS)}) or pass --force")
    return running


def migrate_restored(settings) -> tuple[list[int], int]:
    db = open_database(settings, migrate=False)
    try:
        db.connect(reuse_if_open=True)
        applied = migrations.migrate(db)
        version = migrations.current_version(db)
    finally:
        db.close()
    return applied, version


def dump_version(tools: pgtools.Tools, source: Path) -> int:
    """Verify a pg_dump archive and return the schema version recorded in it."""
    what = str(source)
    verify_dump(tools, source, what)
    try:
        version = max(int(row[0]) for row in tools.table_data(source, "schema_version", what))
    except ValueError:  # no rows, or not numbers
        raise AdminError(f"{source}: its schema_version table holds no version; nothing changed") from None
    if version > migrations.LATEST:
        raise AdminError(f"{source}: schema version {version} is newer than this InTunnel "
                         f"(version {migrations.LATEST}); upgrade InTunnel first. Nothing changed")
    return version


def tables_in(settings, schemas: list[str]) -> int:
    db = connect_settings(settings)
    try:
        db.connect()
        return db.execute_sql("SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = ANY(%s)",
                              (schemas,)).fetchone()[0]
    finally:
        db.close()


def restore_postgresql(ctx: Context, args, source: Path, now: datetime):
    """The steps on PostgreSQL; returns (backup version, kept dump or None, running, applied, version)."""
    settings = ctx.settings
    if not pgtools.is_archive(source):
        raise AdminError(f"{source}: not a pg_dump archive (PostgreSQL backups are intunnel-*.pgdump; "
                         "to move a SQLite database into PostgreSQL use 'intunnel-admin db copy'); "
                         "nothing changed")
    tools = pgtools.find_tools(settings, args.pg_bindir)
    data_dir = Path(settings.data_dir)
    owner = owner_of(data_dir)
    with admin_lock(lock_path(settings), args.lock_timeout, owner):
        backup_version = dump_version(tools, source)
        schemas = sorted({e["schema"] for e in tools.listing(source, str(source)) if e["kind"] == "TABLE"})
        running = refuse_if_running(settings, args.force)
        dbname = urlsplit(settings.db_url).path.strip("/") or "intunnel"
        kept = data_dir / f"{dbname}.pre-restore-{retention.stamp(now)}.pgdump"
        if kept.exists():
            kept = kept.with_name(f"{dbname}.pre-restore-{retention.stamp(now)}-{os.getpid()}.pgdump")
        if tables_in(settings, schemas):
            write_postgresql_dump(tools, settings, kept, owner, what="keeping the current database",
                                  require_intunnel=False)
        else:
            kept = None  # nothing there yet: nothing to keep
        tools.restore(settings, source, schemas)
        applied, version = migrate_restored(settings)
    return backup_version, kept, running, applied, version


def cmd_restore(ctx: Context, args) -> int:
    settings = ctx.settings
    source = Path(args.file)
    if not source.is_file():
        raise AdminError(f"{source}: no such backup file")
    if settings.db_backend != dburl.SQLITE:
        now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        backup_version, kept, running, applied, version = restore_postgresql(ctx, args, source, now)
        return report(ctx, ctx.db_description, source, backup_version, applied, version, kept, running)
    if pgtools.is_archive(source):
        raise AdminError(f"{source}: a PostgreSQL dump, but this installation uses SQLite "
                         f"({settings.db_path}); nothing changed")
    db_path = settings.db_path
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = owner_of(Path(settings.data_dir))
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)

    with admin_lock(db_path, args.lock_timeout, owner):
        unpacked = db_path.with_name(f".{db_path.name}.restore-{os.getpid()}.tmp")
        try:
            backup_version = verify_backup(source, unpacked)
            running = refuse_if_running(settings, args.force)
            kept = keep_current(db_path, now, owner) if db_path.exists() else None
            if kept:
                retire_wal(db_path)
            os.chmod(unpacked, 0o600)
            set_owner(unpacked, owner)
            os.replace(unpacked, db_path)
            fsync_dir(db_path.parent)
        finally:
            for leftover in (unpacked, Path(f"{unpacked}-journal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

        applied, version = migrate_restored(settings)
        give_to_owner_of(Path(settings.data_dir), sqlite_files(db_path))
    return report(ctx, str(db_path), source, backup_version, applied, version, kept, running)


def report(ctx: Context, target: str, source: Path, backup_version: int, applied: list[int], version: int,
           kept, running: list[str]) -> int:
    lines = [f"restored {target} from {source} (schema version {backup_version}"
             + (f", migrated to {version})" if applied else ")")]
    lines.append(f"previous database kept as {kept}" if kept else "there was no previous database")
    if running:
        lines.append(f"restart the services now, they still hold the old database: "
                     f"systemctl restart {' '.join(UNITS)}  (running: {', '.join(running)})")
    else:
        lines.append(f"start the services: systemctl start {' '.join(UNITS)}")
    if ctx.json:
        ctx.emit_json({"ok": True, "restored": target, "source": str(source),
                       "backup_schema_version": backup_version, "schema_version": version,
                       "migrations_applied": applied, "previous": str(kept) if kept else None,
                       "running": running})
    else:
        ctx.out("\n".join(lines))
    return 0


def register(groups, common) -> None:
    r = groups.add_parser("restore", parents=[common], help="restore the database from a backup",
                          description="Verify a backup, keep the current database as "
                                      "<db>.pre-restore-<time> (PostgreSQL: a pg_dump of it in the data "
                                      "dir), restore, and migrate.")
    r.add_argument("file", metavar="FILE", help="a backup (intunnel-*.db.gz, or an uncompressed .db; "
                                                "on PostgreSQL intunnel-*.pgdump)")
    r.add_argument("--pg-bindir", metavar="DIR",
                   help="PostgreSQL: the pg_restore/psql to use (default: the server's major version)")
    r.add_argument("--force", action="store_true", help="restore even while the services are running")
    r.add_argument("--lock-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="wait this long for a running backup to finish (default 600)")
    r.set_defaults(func=cmd_restore)
