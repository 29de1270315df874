"""`intunnel-admin db ...`: migrate the schema, check the database."""

from __future__ import annotations

from .. import migrations
from .common import Context
from .table import format_table


def cmd_migrate(ctx: Context, args) -> int:
    db = ctx.open_db(create=True, migrate=False)
    before = migrations.current_version(db)
    applied = migrations.migrate(db)
    after = migrations.current_version(db)
    if applied:
        message = f"migrated {ctx.settings.db_path} from schema version {before} to {after}"
    else:
        message = f"schema of {ctx.settings.db_path} is up to date (version {after})"
    ctx.done(message, {"applied": applied, "from_version": before, "schema_version": after})
    return 0


def check_database(db) -> dict:
    """Integrity, foreign keys and schema version of an open database."""
    integrity = [row[0] for row in db.execute_sql("PRAGMA integrity_check").fetchall()]
    fk_rows = db.execute_sql("PRAGMA foreign_key_check").fetchall()
    foreign_keys = [{"table": r[0], "rowid": r[1], "parent": r[2]} for r in fk_rows]
    version = migrations.current_version(db)
    return {
        "integrity": integrity,
        "foreign_key_violations": foreign_keys,
        "schema_version": version,
        "latest_version": migrations.LATEST,
        "journal_mode": db.execute_sql("PRAGMA journal_mode").fetchone()[0],
        "ok": integrity == ["ok"] and not foreign_keys and version <= migrations.LATEST,
    }


def cmd_check(ctx: Context, args) -> int:
    result = check_database(ctx.open_db(migrate=False))
    if ctx.json:
        ctx.emit_json(result)
        return 0 if result["ok"] else 1
    version, latest = result["schema_version"], result["latest_version"]
    if version < latest:
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
    p = groups.add_parser("db", help="database schema and checks", description="Database schema and checks.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = sub.add_parser("migrate", parents=[common], help="apply pending schema migrations (creates the database)")
    m.set_defaults(func=cmd_migrate)
    c = sub.add_parser("check", parents=[common],
                       help="integrity and foreign-key checks, schema version (exit 1 on a problem)")
    c.set_defaults(func=cmd_check)
