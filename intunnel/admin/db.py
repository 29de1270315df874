"""`intunnel-admin db ...`: migrate the schema, check the database, copy SQLite into PostgreSQL."""

from __future__ import annotations

import sqlite3

import peewee as pw

from .. import migrations
from ..models import connect_settings
from . import dbcopy
from .common import AdminError, Context
from .table import format_table


def cmd_migrate(ctx: Context, args) -> int:
    db = ctx.open_db(create=True, migrate=False)
    before = migrations.current_version(db)
    applied = migrations.migrate(db)
    after = migrations.current_version(db)
    if applied:
        message = f"migrated {ctx.db_description} from schema version {before} to {after}"
    else:
        message = f"schema of {ctx.db_description} is up to date (version {after})"
    ctx.done(message, {"applied": applied, "from_version": before, "schema_version": after})
    return 0


def _rows(db, sql: str) -> list:
    return db.execute_sql(sql).fetchall()


def check_database(db) -> dict:
    """Integrity, foreign keys and schema version of an open database.

    A file too damaged to answer a check counts as failing it, not as a crash.
    """
    try:
        integrity = [row[0] for row in _rows(db, "PRAGMA integrity_check")]
    except (pw.DatabaseError, sqlite3.DatabaseError) as e:
        integrity = [f"unreadable: {e}"]
    try:
        foreign_keys = [{"table": r[0], "rowid": r[1], "parent": r[2]}
                        for r in _rows(db, "PRAGMA foreign_key_check")]
    except (pw.DatabaseError, sqlite3.DatabaseError) as e:
        foreign_keys = [{"table": f"unreadable: {e}", "rowid": None, "parent": None}]
    try:
        version = migrations.current_version(db)
        journal_mode = _rows(db, "PRAGMA journal_mode")[0][0]
    except (pw.DatabaseError, sqlite3.DatabaseError):
        version, journal_mode = -1, "unknown"
    return {
        "integrity": integrity,
        "foreign_key_violations": foreign_keys,
        "schema_version": version,
        "latest_version": migrations.LATEST,
        "journal_mode": journal_mode,
        "ok": integrity == ["ok"] and not foreign_keys and 0 <= version <= migrations.LATEST,
    }


def server_version(db: pw.PostgresqlDatabase) -> str:
    """``15.10`` from peewee's integer server version (150010)."""
    db.connect(reuse_if_open=True)
    number = db.server_version or 0
    return f"{number // 10000}.{number % 10000}" if number >= 100000 else str(number)


def check_postgresql(db: pw.PostgresqlDatabase) -> dict:
    """The same report for PostgreSQL: it keeps its own pages and foreign keys
    consistent, so the checks are that every table answers and the schema version."""
    from ..models import MODELS
    try:
        version_text = server_version(db)
        with db.bind_ctx(MODELS):
            for model in MODELS:
                model.select().count()
        integrity = ["ok"]
    except pw.DatabaseError as e:
        version_text, integrity = "unknown", [f"unreadable: {e}"]
    try:
        version = migrations.current_version(db)
    except pw.DatabaseError:
        version = -1
    return {
        "integrity": integrity,
        "foreign_key_violations": [],  # enforced by PostgreSQL on every write
        "schema_version": version,
        "latest_version": migrations.LATEST,
        "journal_mode": f"PostgreSQL {version_text}",
        "ok": integrity == ["ok"] and 0 <= version <= migrations.LATEST,
    }


def cmd_check(ctx: Context, args) -> int:
    if ctx.settings.db_backend == "sqlite":
        path = ctx.settings.db_path
        if not path.exists():
            raise AdminError(f"database {path} does not exist (wrong --config?)")
        # A bare connection: no pragmas or migrations that could fail before the checks run.
        db = pw.SqliteDatabase(str(path), pragmas={"busy_timeout": 5000})
        check = check_database
    else:
        db, check = connect_settings(ctx.settings), check_postgresql
    try:
        result = check(db)
    finally:
        db.close()
    if ctx.json:
        ctx.emit_json(result)
        return 0 if result["ok"] else 1
    version, latest = result["schema_version"], result["latest_version"]
    if version < 0:
        schema = "fail: unreadable"
    elif version < latest:
        schema = f"warn: version {version}, code expects {latest} (run 'intunnel-admin db migrate')"
    elif version > latest:
        schema = f"fail: version {version} is newer than this code ({latest}); upgrade InTunnel"
    else:
        schema = f"ok: version {version}"
    fks = result["foreign_key_violations"]
    rows = [
        ["integrity", "ok" if result["integrity"] == ["ok"] else "fail: " + "; ".join(result["integrity"][:5])],
        ["foreign keys", "ok" if not fks else f"fail: {len(fks)} violation(s), first in table {fks[0]['table']}"],
        ["schema", schema],
        ["journal mode", result["journal_mode"]],
    ]
    ctx.out(format_table(("CHECK", "RESULT"), rows))
    return 0 if result["ok"] else 1


def register(groups, common) -> None:
    p = groups.add_parser("db", help="database schema, checks, copy to PostgreSQL",
                          description="Database schema, checks, and copying SQLite into PostgreSQL.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = sub.add_parser("migrate", parents=[common], help="apply pending schema migrations (creates the database)")
    m.set_defaults(func=cmd_migrate)
    c = sub.add_parser("check", parents=[common],
                       help="integrity and foreign-key checks, schema version (exit 1 on a problem)")
    c.set_defaults(func=cmd_check)
    dbcopy.register(sub, common)
