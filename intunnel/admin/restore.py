"""`intunnel-admin restore FILE`: verify a backup, keep the current database,
put the backup in its place and migrate it to this code's schema."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from .. import migrations
from ..models import open_database
from . import retention
from .common import AdminError, Context, give_to_owner_of, owner_of, sqlite_files
from .dbfiles import (admin_lock, fsync_dir, integrity_problems, online_copy, schema_version_of, set_owner,
                      unpack_to)
from .probe import UNITS, probe_services, systemd_active_units


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


def cmd_restore(ctx: Context, args) -> int:
    ctx.require_sqlite("restore")
    settings = ctx.settings
    source = Path(args.file)
    if not source.is_file():
        raise AdminError(f"{source}: no such backup file")
    db_path = settings.db_path
    db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = owner_of(Path(settings.data_dir))
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)

    with admin_lock(db_path, args.lock_timeout, owner):
        unpacked = db_path.with_name(f".{db_path.name}.restore-{os.getpid()}.tmp")
        try:
            backup_version = verify_backup(source, unpacked)
            running = running_services(settings)
            if running and not args.force:
                raise AdminError("refusing to restore while InTunnel is running: " + ", ".join(running)
                                 + f"; stop it first (systemctl stop {' '.join(UNITS)}) or pass --force")
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

        db = open_database(settings, migrate=False)
        try:
            db.connect(reuse_if_open=True)
            applied = migrations.migrate(db)
            version = migrations.current_version(db)
        finally:
            db.close()
        give_to_owner_of(Path(settings.data_dir), sqlite_files(db_path))

    lines = [f"restored {db_path} from {source} (schema version {backup_version}"
             + (f", migrated to {version})" if applied else ")")]
    lines.append(f"previous database kept as {kept}" if kept else "there was no previous database")
    if running:
        lines.append(f"restart the services now, they still hold the old database: "
                     f"systemctl restart {' '.join(UNITS)}  (running: {', '.join(running)})")
    else:
        lines.append(f"start the services: systemctl start {' '.join(UNITS)}")
    if ctx.json:
        ctx.emit_json({"ok": True, "restored": str(db_path), "source": str(source),
                       "backup_schema_version": backup_version, "schema_version": version,
                       "migrations_applied": applied, "previous": str(kept) if kept else None,
                       "running": running})
    else:
        ctx.out("\n".join(lines))
    return 0


def register(groups, common) -> None:
    r = groups.add_parser("restore", parents=[common], help="restore the database from a backup",
                          description="Verify a backup, keep the current database as "
                                      "<db>.pre-restore-<time>, restore, and migrate.")
    r.add_argument("file", metavar="FILE", help="a backup (intunnel-*.db.gz, or an uncompressed .db)")
    r.add_argument("--force", action="store_true", help="restore even while the services are running")
    r.add_argument("--lock-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="wait this long for a running backup to finish (default 600)")
    r.set_defaults(func=cmd_restore)
