"""`intunnel-admin restore`: verify, refuse while running, keep the current database, migrate."""

import fcntl
import gzip
import hashlib
import os
import sqlite3

import peewee as pw
import pytest

from intunnel import migrations
from intunnel.admin.cli import main

from .conftest import Admin

pytestmark = pytest.mark.sqlite_only("SQLite file backups; pg_dump backups: test_pg_backup.py")


def usernames(db_path) -> list[str]:
    conn = sqlite3.connect(db_path)
    try:
        return [r[0] for r in conn.execute("SELECT username FROM user ORDER BY id")]
    finally:
        conn.close()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def backed_up(installed):
    """root and alice in the backup; bob only in the live database afterwards."""
    installed.create_user("alice@example.test", "alice")
    result = installed.json("backup")["backup"]
    installed.create_user("bob@example.test", "bob")
    installed.backup_file = result["path"]
    return installed


def test_restore_keeps_current_and_brings_back_the_backup(backed_up):
    out = backed_up.ok("restore", backed_up.backup_file).stdout
    assert usernames(backed_up.db_path) == ["root", "alice"]
    (kept,) = backed_up.data_dir.glob("intunnel.db.pre-restore-*")
    assert usernames(kept) == ["root", "alice", "bob"]  # nothing lost: the previous state is kept
    assert f"previous database kept as {kept}" in out
    assert "start the services: systemctl start intunnel-web intunnel-relay" in out
    assert backed_up.json("db", "check")["ok"] is True
    assert not list(backed_up.data_dir.glob(".intunnel.db.restore-*"))  # no temp files left
    # the restored database works with the admin commands
    assert [u["username"] for u in backed_up.json("user", "list")["users"]] == ["root", "alice"]


def test_restore_json(backed_up):
    out = backed_up.json("restore", backed_up.backup_file)
    assert out["ok"] is True and out["migrations_applied"] == [] and out["running"] == []
    assert out["schema_version"] == migrations.LATEST and out["previous"].startswith(str(backed_up.db_path))


def test_restore_onto_an_empty_installation(backed_up, tmp_path):
    fresh = Admin(tmp_path / "fresh")
    out = fresh.ok("restore", backed_up.backup_file).stdout
    assert "there was no previous database" in out
    assert usernames(fresh.db_path) == ["root", "alice"]


def test_refuses_while_services_run_unless_forced(backed_up, fake_services):
    fake_services(backed_up.web_port)
    before = digest(backed_up.db_path)
    line = backed_up.fails("restore", backed_up.backup_file, match="refusing to restore while InTunnel is running")
    assert f"web (http://127.0.0.1:{backed_up.web_port}/healthz)" in line and "--force" in line
    # the relay's socket too: stopped alone, the relay is started again by the next connection
    assert "systemctl stop intunnel-web intunnel-relay.socket intunnel-relay" in line
    assert digest(backed_up.db_path) == before and not list(backed_up.data_dir.glob("*.pre-restore-*"))
    out = backed_up.ok("restore", backed_up.backup_file, "--force").stdout
    assert "restart the services now" in out and "systemctl restart intunnel-web intunnel-relay" in out
    assert usernames(backed_up.db_path) == ["root", "alice"]


@pytest.mark.parametrize("content, message", [
    (b"this is not a database at all, just some text that goes on" * 100, "failed the integrity check"),
    (gzip.compress(b"SQLite format 3\x00" + b"\x00" * 50)[:30], "cannot read the backup"),
], ids=["garbage", "truncated-gzip"])
def test_rejects_bad_backups_and_changes_nothing(backed_up, tmp_path, content, message):
    bad = tmp_path / "bad.db.gz"
    bad.write_bytes(content)
    before = digest(backed_up.db_path)
    backed_up.fails("restore", str(bad), match=message)
    assert digest(backed_up.db_path) == before
    assert not list(backed_up.data_dir.glob("*.pre-restore-*"))
    assert not list(backed_up.data_dir.glob(".intunnel.db.restore-*"))


def test_rejects_foreign_and_future_databases(backed_up, tmp_path):
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    backed_up.fails("restore", str(foreign), match="not an InTunnel database")
    future = tmp_path / "future.db"
    future.write_bytes(gzip.decompress(open(backed_up.backup_file, "rb").read()))
    conn = sqlite3.connect(future)
    conn.execute("INSERT INTO schema_version VALUES (999, 'from the future', '2030-01-01 00:00:00')")
    conn.commit()
    conn.close()
    backed_up.fails("restore", str(future), match="schema version 999 is newer")
    backed_up.fails("restore", str(tmp_path / "missing.db.gz"), match="no such backup file")
    assert usernames(backed_up.db_path) == ["root", "alice", "bob"]


def test_restore_migrates_a_version_1_backup(admin, tmp_path):
    """A backup made by the first schema version comes back at today's version, data intact."""
    admin.data_dir.mkdir()
    db = pw.SqliteDatabase(str(admin.db_path), pragmas={"journal_mode": "wal"})
    migrations.migrate(db, target=1)
    db.execute_sql("INSERT INTO user (username, email, password_hash, is_admin, disabled, created_at) "
                   "VALUES ('old', 'old@example.test', 'x', 1, 0, '2025-01-01 00:00:00')")
    db.close()
    backup = admin.json("backup")["backup"]["path"]
    target = Admin(tmp_path / "new")
    out = target.json("restore", backup)
    assert out["backup_schema_version"] == 1 and out["schema_version"] == migrations.LATEST
    assert out["migrations_applied"] == list(range(2, migrations.LATEST + 1))
    assert usernames(target.db_path) == ["old"]


def test_restore_runs_pending_migrations(backed_up, monkeypatch, in_process, capsys):
    """Newer code (here: one extra, test-only migration) upgrades an older backup as it restores."""

    def add_test_table(db):
        """test-only: a table the backup does not have"""
        db.execute_sql("CREATE TABLE test_only_newer (x INTEGER)")

    newer = migrations.LATEST + 1
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [(newer, add_test_table)])
    monkeypatch.setattr(migrations, "LATEST", newer)
    assert main(["--config", str(backed_up.config), "restore", backed_up.backup_file]) == 0
    out = capsys.readouterr().out
    assert f"migrated to {newer})" in out
    conn = sqlite3.connect(backed_up.db_path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == newer
    assert conn.execute("SELECT COUNT(*) FROM test_only_newer").fetchone()[0] == 0
    conn.close()
    assert usernames(backed_up.db_path) == ["root", "alice"]


def test_restore_waits_for_a_running_backup(backed_up):
    fd = os.open(f"{backed_up.db_path}.admin-lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        backed_up.fails("restore", backed_up.backup_file, "--lock-timeout", "0.2", match="another backup or restore")
    finally:
        os.close(fd)
    assert usernames(backed_up.db_path) == ["root", "alice", "bob"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_restored_files_belong_to_the_service_user(backed_up):
    os.chown(backed_up.data_dir, 65534, 65534)
    backed_up.ok("restore", backed_up.backup_file)
    (kept,) = backed_up.data_dir.glob("intunnel.db.pre-restore-*")
    for path in (backed_up.db_path, kept, backed_up.data_dir / "intunnel.db.admin-lock"):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
    assert oct(kept.stat().st_mode & 0o777) == "0o600"


def test_a_postgresql_dump_is_refused_on_sqlite(backed_up, tmp_path):
    dump = tmp_path / "intunnel-20300101T000000Z.pgdump"
    dump.write_bytes(b"PGDMP\x01\x0e\x00" + b"\x00" * 100)
    backed_up.fails("restore", str(dump), match="a PostgreSQL dump, but this installation uses SQLite")
    assert usernames(backed_up.db_path) == ["root", "alice", "bob"]
