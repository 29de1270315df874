"""`intunnel-admin db migrate | check`."""

import pytest
import sqlite3

from intunnel import migrations


def test_migrate_creates_and_reports(admin):
    first = admin.json("db", "migrate")
    assert first["applied"] == [v for v, _ in migrations.MIGRATIONS] and first["from_version"] == 0
    assert first["schema_version"] == migrations.LATEST
    again = admin.ok("db", "migrate").stdout
    assert again.strip().endswith(f"is up to date (version {migrations.LATEST})")


@pytest.mark.sqlite_only("writes a version 1 SQLite file (tests/test_migrations.py upgrades version 1 on both)")
def test_migrate_brings_a_version_1_database_up(admin):
    admin.data_dir.mkdir()
    import peewee as pw
    db = pw.SqliteDatabase(str(admin.db_path))
    migrations.migrate(db, target=1)
    db.close()
    out = admin.json("db", "migrate")
    assert out["from_version"] == 1 and out["schema_version"] == migrations.LATEST
    assert out["applied"] == list(range(2, migrations.LATEST + 1))


def test_check_ok(installed):
    result = installed.json("db", "check")
    journal = "wal" if not installed.database_url else result["journal_mode"]
    assert result == {"integrity": ["ok"], "foreign_key_violations": [], "schema_version": migrations.LATEST,
                      "latest_version": migrations.LATEST, "journal_mode": journal, "ok": True}
    table = installed.ok("db", "check").stdout.splitlines()
    assert table[0].split() == ["CHECK", "RESULT"]
    assert any(line.startswith("integrity") and line.endswith("ok") for line in table)


@pytest.mark.sqlite_only("SQLite lets foreign keys be switched off; PostgreSQL enforces them")
def test_check_finds_foreign_key_violations(installed):
    conn = sqlite3.connect(installed.db_path)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("INSERT INTO tunnel (owner_id, name, subdomain, local_port, token, status, created_at) "
                 "VALUES (999, 'orphan', 'orphan', 1, 'tok', 'inactive', '2026-01-01 00:00:00')")
    conn.commit()
    conn.close()
    r = installed.run("db", "check")
    assert r.returncode == 1 and "fail: 1 violation(s), first in table tunnel" in r.stdout
    r = installed.run("db", "check", "--json")
    assert r.returncode == 1
    import json
    assert json.loads(r.stdout)["foreign_key_violations"] == [{"table": "tunnel", "rowid": 1, "parent": "user"}]


@pytest.mark.sqlite_only("corrupts the SQLite file")
def test_check_finds_corruption(installed):
    installed.ok("db", "check")
    # Overwrite a page in the middle of the file (not the header): integrity must notice.
    with open(installed.db_path, "r+b") as f:
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)
    r = installed.run("db", "check")
    assert r.returncode == 1 and r.stderr == ""
    assert [line for line in r.stdout.splitlines() if line.startswith("integrity")][0].split()[1] == "fail:"


@pytest.mark.sqlite_only("edits the SQLite file directly")
def test_check_newer_schema_fails(installed):
    conn = sqlite3.connect(installed.db_path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', '2030-01-01 00:00:00')")
    conn.commit()
    conn.close()
    r = installed.run("db", "check")
    assert r.returncode == 1 and "newer than this code" in r.stdout
