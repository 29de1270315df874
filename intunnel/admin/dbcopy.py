"""`intunnel-admin db copy --to postgresql://...`: move a live SQLite database into
an empty PostgreSQL one, ids kept, verified table by table.

1. The source is the configured SQLite file, read in ONE read transaction: in
   WAL mode the web app and the relay carry on writing, and every table is read
   as of the same moment (a consistent snapshot, as the backup's online copy).
   Its schema version must be this code's.
2. The target must be empty: no rows in any table of its schema (tables made by
   a service start or ``db migrate`` are fine).  Everything on the target runs
   in ONE transaction: migrate the schema, insert every table's rows with their
   ids (parents before children, by the foreign keys), advance each id sequence
   past the highest id so new rows never collide, then verify.  A failure, or
   ``--dry-run``, rolls it all back: the target stays empty.
3. Verification: per table the row count and a SHA-256 over the rows in one
   canonical serialisation (``canonical_row``) on both sides, read back from the
   target inside the transaction before it commits.

The password comes from the URL or ``--to-password-file``; messages show the URL
without it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Iterable

import peewee as pw

from .. import dburl, migrations
from ..errors import ConfigError
from .common import EXIT_USAGE, AdminError, Context
from .table import format_table

INSERT_PAGE = 1000
BOOLEAN = "boolean"
INTEGERS = ("smallint", "integer", "bigint")
FLOATS = ("real", "double precision", "numeric")
TIMESTAMPS = ("timestamp without time zone", "timestamp with time zone")


class DryRun(Exception):
    """Raised inside the target transaction to roll a --dry-run back; carries the report."""

    def __init__(self, report: list[dict]):
        super().__init__("dry run")
        self.report = report


# --- canonical rows: the same serialisation of a row on both sides ---

def to_target(value: Any, data_type: str) -> Any:
    """A SQLite value as the PostgreSQL column ``data_type`` takes it (0/1 -> bool, text -> datetime...)."""
    if value is None:
        return None
    if data_type == BOOLEAN:
        return bool(int(value))
    if data_type in INTEGERS:
        return int(value)
    if data_type in FLOATS:
        return float(value)
    if data_type in TIMESTAMPS and isinstance(value, str):
        # PostgreSQL ignores a zone written in a timestamp-without-time-zone literal: so does this.
        parsed = datetime.fromisoformat(value)
        return parsed.replace(tzinfo=None) if data_type == TIMESTAMPS[0] else parsed
    if data_type == "date" and isinstance(value, str):
        return date.fromisoformat(value)
    if data_type == "bytea" and isinstance(value, str):
        return value.encode()
    return value


def canonical_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    return str(value)


def canonical_row(values: Iterable[Any]) -> str:
    return json.dumps([canonical_value(v) for v in values], separators=(",", ":"), ensure_ascii=False)


def checksum(rows: Iterable[Iterable[Any]]) -> tuple[int, str]:
    """(row count, SHA-256 of the sorted canonical rows): independent of row order."""
    lines = sorted(canonical_row(row) for row in rows)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return len(lines), digest.hexdigest()


# --- the SQLite side ---

def sqlite_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_snapshot(path: Path) -> sqlite3.Connection:
    """A connection holding one read transaction on the live file (nothing is written)."""
    # Read-write open: a read-only connection cannot always use another process's WAL index.
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts here
    return conn


def sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {name: [r[1] for r in conn.execute(f"PRAGMA table_info({sqlite_ident(name)})")] for name in names}


def sqlite_version(conn: sqlite3.Connection, tables: dict) -> int:
    if "schema_version" not in tables:
        return 0
    return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]


# --- the PostgreSQL side (all through one cursor in the target transaction) ---

def pg_tables(cur) -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, data_type), ...]} of the current schema, columns in order."""
    cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in cur.fetchall():
        tables.setdefault(table, []).append((column, data_type))
    cur.execute("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema()")
    real = {r[0] for r in cur.fetchall()}
    return {t: cols for t, cols in tables.items() if t in real}  # no views


def rows_in(cur, tables: Iterable[str]) -> dict[str, int]:
    from psycopg2 import sql
    found = {}
    for table in tables:
        cur.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table)))
        found[table] = cur.fetchone()[0]
    return found


def parents_first(cur, tables: list[str]) -> list[str]:
    """The tables ordered so that every foreign key's parent comes before its child."""
    cur.execute("SELECT child.relname, parent.relname FROM pg_catalog.pg_constraint c "
                "JOIN pg_catalog.pg_class child ON child.oid = c.conrelid "
                "JOIN pg_catalog.pg_class parent ON parent.oid = c.confrelid "
                "JOIN pg_catalog.pg_namespace n ON n.oid = child.relnamespace "
                "WHERE c.contype = 'f' AND n.nspname = current_schema()")
    needs: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in cur.fetchall():
        if child in needs and parent in needs and parent != child:
            needs[child].add(parent)
    ordered: list[str] = []
    while needs:
        ready = sorted(t for t, parents in needs.items() if not parents - set(ordered))
        if not ready:
            raise AdminError(f"foreign keys form a cycle among {', '.join(sorted(needs))}; nothing copied")
        ordered += ready
        for t in ready:
            del needs[t]
    return ordered


def advance_sequences(cur, table: str, columns: list[str]) -> None:
    """setval each serial/identity sequence of ``table`` so nextval gives MAX(id)+1 (1 when empty)."""
    from psycopg2 import sql
    for column in columns:
        cur.execute("SELECT pg_get_serial_sequence(quote_ident(%s), %s)", (table, column))
        sequence = cur.fetchone()[0]
        if sequence is None:
            continue
        cur.execute(sql.SQL("SELECT setval(%s, COALESCE(MAX({c}), 1), MAX({c}) IS NOT NULL) FROM {t}").format(
            c=sql.Identifier(column), t=sql.Identifier(table)), (sequence,))


def copy_table(src: sqlite3.Connection, cur, table: str, columns: list[tuple[str, str]]) -> tuple[int, str]:
    """Insert ``table``'s snapshot rows on the target; (count, checksum) of what was read."""
    from psycopg2 import sql
    from psycopg2.extras import execute_values
    names = [c for c, _ in columns]
    types = [t for _, t in columns]
    select = f"SELECT {', '.join(sqlite_ident(c) for c in names)} FROM {sqlite_ident(table)}"
    try:
        rows = [tuple(to_target(v, t) for v, t in zip(row, types)) for row in src.execute(select)]
    except ValueError as e:
        raise AdminError(f"table {table}: a value PostgreSQL would not take ({e}); nothing copied") from None
    insert = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in names))
    from psycopg2 import Binary
    wrapped = [tuple(Binary(v) if isinstance(v, bytes) else v for v in row) for row in rows]
    if wrapped:
        execute_values(cur, insert.as_string(cur), wrapped, page_size=INSERT_PAGE)
    return checksum(rows)


def target_checksum(cur, table: str, columns: list[str]) -> tuple[int, str]:
    from psycopg2 import sql
    cur.execute(sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table)))
    return checksum(cur.fetchall())


# --- the command ---

def open_target(url: str, password_file: str | None) -> pw.Database:
    try:
        backend = dburl.check_url(url)
    except ConfigError as e:
        raise AdminError(str(e).replace("setting 'database_url'", "--to"), EXIT_USAGE) from None
    if backend != dburl.POSTGRESQL:
        raise AdminError(f"--to: expected a postgresql:// URL, got {dburl.redact_url(url)!r}", EXIT_USAGE)
    password = None
    if password_file:
        if dburl.has_password(url):
            raise AdminError("--to and --to-password-file: give the password in one of them, not both", EXIT_USAGE)
        try:
            password = dburl.read_password_file(password_file)
        except ConfigError as e:
            raise AdminError(str(e).replace("setting 'database_password_file'", "--to-password-file"),
                             EXIT_USAGE) from None
    target = dburl.make_database(url)
    if password is not None:
        target.connect_params["password"] = password
    return target


def copy_into(src: sqlite3.Connection, target: pw.Database, dry_run: bool) -> list[dict]:
    """Steps 2 and 3 in one target transaction; the per-table report."""
    source_tables = sqlite_tables(src)
    version = sqlite_version(src, source_tables)
    if version != migrations.LATEST:
        if version < migrations.LATEST:
            raise AdminError(f"the SQLite database is at schema version {version}, this InTunnel's is "
                             f"{migrations.LATEST}: run 'intunnel-admin db migrate' first; nothing copied")
        raise AdminError(f"the SQLite database is at schema version {version}, newer than this InTunnel "
                         f"({migrations.LATEST}): upgrade InTunnel first; nothing copied")
    report: list[dict] = []
    with target.atomic():
        cur = target.cursor()
        existing = pg_tables(cur)
        filled = {t: n for t, n in rows_in(cur, [t for t in existing if t != "schema_version"]).items() if n}
        if filled:
            shown = ", ".join(f"{t} ({n} rows)" for t, n in sorted(filled.items()))
            raise AdminError(f"the target database is not empty: {shown}; db copy only fills an empty "
                             "database (drop and re-create it, or use another); nothing copied")
        migrations.migrate(target)
        target_tables = pg_tables(cur)
        unknown = sorted(set(source_tables) - set(target_tables))
        if unknown:
            raise AdminError(f"the SQLite database has tables InTunnel's schema does not: {', '.join(unknown)}; "
                             "nothing copied")
        for table in source_tables:
            missing = sorted(set(c for c, _ in target_tables[table]) - set(source_tables[table]))
            if missing:
                raise AdminError(f"table {table}: the SQLite database lacks column(s) {', '.join(missing)}; "
                                 "nothing copied")
        cur.execute("DELETE FROM schema_version")  # migrate's rows: the source's history replaces them
        order = parents_first(cur, sorted(source_tables))
        read = {}
        for table in order:
            read[table] = copy_table(src, cur, table, target_tables[table])
            advance_sequences(cur, table, [c for c, _ in target_tables[table]])
        for table in order:
            count, digest = read[table]
            got_count, got_digest = target_checksum(cur, table, [c for c, _ in target_tables[table]])
            report.append({"table": table, "source_rows": count, "target_rows": got_count,
                           "source_checksum": digest, "target_checksum": got_digest,
                           "match": (count, digest) == (got_count, got_digest)})
        bad = [r["table"] for r in report if not r["match"]]
        if bad:
            raise VerificationFailed(report, bad)
        if dry_run:
            raise DryRun(report)
    return report


class VerificationFailed(Exception):
    def __init__(self, report: list[dict], tables: list[str]):
        super().__init__(", ".join(tables))
        self.report, self.tables = report, tables


def print_report(ctx: Context, report: list[dict]) -> None:
    rows = [[r["table"], r["source_rows"], r["target_rows"], r["target_checksum"][:16],
             "ok" if r["match"] else "MISMATCH"] for r in report]
    ctx.out(format_table(("TABLE", "SQLITE ROWS", "POSTGRESQL ROWS", "SHA-256", "CHECK"), rows))


def cmd_copy(ctx: Context, args) -> int:
    settings = ctx.settings
    if settings.db_backend != dburl.SQLITE:
        raise AdminError("db copy reads this installation's SQLite database, but database_url is already "
                         f"{dburl.redact_url(settings.db_url)}", EXIT_USAGE)
    path = settings.db_path
    if not path.exists():
        raise AdminError(f"database {path} does not exist (wrong --config?)")
    target = open_target(args.to, args.to_password_file)
    shown = dburl.redact_url(args.to)
    src = open_snapshot(path)
    dry_run = args.dry_run
    try:
        try:
            report = copy_into(src, target, dry_run)
        except DryRun as e:
            report = e.report
    except VerificationFailed as e:
        if not ctx.json:
            print_report(ctx, e.report)
        raise AdminError(f"verification failed for {', '.join(e.tables)}: rolled back, nothing copied") from None
    except pw.DatabaseError as e:
        raise AdminError(dburl.scrub(f"{shown}: {' '.join(str(e).split())}; rolled back, nothing copied",
                                     target)) from None
    finally:
        src.close()
        target.close()
    total = sum(r["source_rows"] for r in report)
    if dry_run:
        message = (f"dry run: {total} rows in {len(report)} tables copied to {shown} and verified, then "
                   "rolled back (the target is still empty)")
    else:
        message = (f"copied {total} rows in {len(report)} tables from {path} to {shown} in one transaction, "
                   "ids kept and sequences advanced; every count and checksum matches")
    if ctx.json:
        ctx.emit_json({"ok": True, "dry_run": dry_run, "source": str(path), "target": shown,
                       "tables": report, "message": message})
    else:
        print_report(ctx, report)
        ctx.out(message)
    return 0


def register(sub, common) -> None:
    c = sub.add_parser("copy", parents=[common], help="copy this SQLite database into an empty PostgreSQL one",
                       description="Copy the live SQLite database (one consistent snapshot) into an EMPTY "
                                   "PostgreSQL database in one transaction: every table, ids kept, sequences "
                                   "advanced; verified by row counts and a checksum per table.")
    c.add_argument("--to", required=True, metavar="URL", help="postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME")
    c.add_argument("--to-password-file", metavar="FILE", help="the target's password (one line), not in the URL")
    c.add_argument("--dry-run", action="store_true",
                   help="copy and verify, then roll back: the target stays empty (a rehearsal while live)")
    c.set_defaults(func=cmd_copy)
