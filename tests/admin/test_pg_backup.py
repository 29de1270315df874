"""`intunnel-admin backup` and `restore` on PostgreSQL: pg_dump --format=custom into the
same naming, mode, atomic write and retention as SQLite, verified; restore in one
transaction after keeping the current database; refusals in one line; the client
tools' version; a backup taken while another process writes restores every row
committed before it began.  Runs when --db selects postgresql."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import psycopg2
import pytest

from intunnel import migrations
from intunnel.admin import pgtools, retention
from support.postgres import PASSWORD

from .conftest import Admin, admin_command, pg_query
from .writer import backups_while_writing

NAME = re.compile(r"^intunnel-\d{8}T\d{6}Z\.pgdump$")
TABLES = ("user", "tunnel", "session", "api_token", "schema_version")


@pytest.fixture
def pg_admin(admin, db_backend):
    if db_backend != "postgresql":
        pytest.skip("PostgreSQL only (--db=postgresql or --db=both)")
    admin.ok("db", "migrate")
    admin.create_user("root@example.test", "root", "correct horse", "--admin")
    return admin


def url_of(a: Admin) -> str:
    """The installation's database URL with the password (for psycopg2 in the test)."""
    return a.database_url.replace("postgresql://intunnel@", f"postgresql://intunnel:{PASSWORD}@")


def table_rows(url: str, table: str) -> list:
    return pg_query(url, f'SELECT * FROM "{table}" ORDER BY 1')


def usernames(a: Admin) -> list[str]:
    return [r[0] for r in pg_query(url_of(a), 'SELECT username FROM "user" ORDER BY id')]


def populate(a: Admin) -> None:
    """alice with a tunnel, an API token and a login session, through the business code."""
    from datetime import timedelta

    from intunnel import accounts, apitokens, tunnels
    from intunnel.models import Session
    from intunnel.timeutil import utcnow
    db = a.open_models()
    try:
        alice = accounts.create_user("alice@example.test", "alice", "correct horse")
        tunnels.create(a.settings, alice, "My Web App", "myapp", 3000)
        apitokens.create(alice, "ci")
        Session.create(id_hash="ab" * 32, user=alice, csrf_token="c" * 32, expires_at=utcnow() + timedelta(days=1))
    finally:
        db.close()


def scratch(tmp_path: Path, cluster, name: str) -> Admin:
    """Another installation on a fresh, empty database (password in a file)."""
    url = cluster.new_database(migrated=False, password=False)
    return Admin(tmp_path / name, database_url=url, password=PASSWORD)


def test_backup_is_silent_private_verified_and_restores_into_a_scratch_database(pg_admin, postgres_cluster,
                                                                                tmp_path):
    populate(pg_admin)
    # cron: minimal environment, no terminal
    r = subprocess.run(admin_command() + ["--config", str(pg_admin.config), "backup"],
                       env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    (backup,) = list(pg_admin.backup_dir.iterdir())
    assert NAME.match(backup.name) and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert backup.read_bytes()[:5] == b"PGDMP"
    listing = subprocess.run(["pg_restore", "--list", str(backup)], capture_output=True, text=True, check=True).stdout
    assert all(f"TABLE DATA public {t} " in listing for t in TABLES), listing
    listed = pg_admin.json("backup", "list")["backups"]
    assert [b["file"] for b in listed] == [backup.name]

    target = scratch(tmp_path, postgres_cluster, "scratch")
    try:
        out = target.json("restore", str(backup))
        assert out["previous"] is None and out["schema_version"] == migrations.LATEST
        for table in TABLES:
            assert table_rows(url_of(target), table) == table_rows(url_of(pg_admin), table), table
        assert [u["username"] for u in target.json("user", "list")["users"]] == ["root", "alice"]
        # ids go on after the restored ones
        created = target.json("user", "create", "--email", "new@example.test", "--username", "new",
                              "--password-stdin", input="correct horse\n")
        assert created["user"]["id"] == 3
    finally:
        postgres_cluster.drop_database(target.database_url)


def test_verbose_json_and_retention_over_both_kinds(pg_admin):
    pg_admin.backup_dir.mkdir(parents=True)
    old_sqlite = pg_admin.backup_dir / "intunnel-20291231T030000Z.db.gz"  # from before the switch
    old_sqlite.write_bytes(b"\x1f\x8b")
    out = pg_admin.ok("backup", "-v", "--now", "2030-01-01T03:00:00Z").stdout
    assert "pg_restore --list ok" in out and "intunnel-20300101T030000Z.pgdump" in out
    result = pg_admin.json("backup", "--now", "2030-01-02T03:00:00Z", "--keep-daily", "1", "--keep-weekly", "0",
                           "--include-config")["backup"]
    assert result["path"].endswith("intunnel-20300102T030000Z.pgdump")
    assert sorted(Path(p).name for p in result["removed"]) == [old_sqlite.name, "intunnel-20300101T030000Z.pgdump"]
    assert sorted(p.name for p in pg_admin.backup_dir.iterdir()) == [
        "intunnel-20300102T030000Z.config.tar.gz", "intunnel-20300102T030000Z.pgdump"]
    assert PASSWORD not in out


@pytest.fixture
def backed_up(pg_admin):
    """root and alice in the backup; bob only in the live database afterwards."""
    pg_admin.create_user("alice@example.test", "alice")
    pg_admin.backup_file = pg_admin.json("backup")["backup"]["path"]
    pg_admin.create_user("bob@example.test", "bob")
    return pg_admin


def test_restore_keeps_the_current_database_as_a_dump(backed_up):
    out = backed_up.ok("restore", backed_up.backup_file).stdout
    assert usernames(backed_up) == ["root", "alice"]
    (kept,) = backed_up.data_dir.glob("*.pre-restore-*.pgdump")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert f"previous database kept as {kept}" in out and "systemctl start" in out
    assert PASSWORD not in out
    assert backed_up.json("db", "check")["ok"] is True
    # what was there comes back with the same command
    backed_up.ok("restore", str(kept))
    assert usernames(backed_up) == ["root", "alice", "bob"]
    assert len(list(backed_up.data_dir.glob("*.pre-restore-*.pgdump"))) == 2


def test_refuses_while_services_run_unless_forced(backed_up, fake_services):
    fake_services(backed_up.web_port)
    line = backed_up.fails("restore", backed_up.backup_file, match="refusing to restore while InTunnel is running")
    assert f"web (http://127.0.0.1:{backed_up.web_port}/healthz)" in line and "--force" in line
    assert usernames(backed_up) == ["root", "alice", "bob"]
    assert not list(backed_up.data_dir.glob("*.pre-restore-*"))
    out = backed_up.ok("restore", backed_up.backup_file, "--force").stdout
    assert "restart the services now" in out
    assert usernames(backed_up) == ["root", "alice"]


def test_rejects_bad_backups_and_changes_nothing(backed_up, tmp_path):
    garbage = tmp_path / "garbage.pgdump"
    garbage.write_bytes(b"not a dump" * 100)
    backed_up.fails("restore", str(garbage), match="not a pg_dump archive")
    sqlite_backup = tmp_path / "intunnel-20300101T000000Z.db.gz"
    sqlite_backup.write_bytes(b"\x1f\x8b\x08\x00")
    backed_up.fails("restore", str(sqlite_backup), match="db copy")
    truncated = tmp_path / "truncated.pgdump"
    truncated.write_bytes(Path(backed_up.backup_file).read_bytes()[:300])
    backed_up.fails("restore", str(truncated), match="pg_restore failed")
    assert usernames(backed_up) == ["root", "alice", "bob"]
    assert not list(backed_up.data_dir.glob("*.pre-restore-*"))


def test_rejects_a_newer_schema(pg_admin):
    url = url_of(pg_admin)
    pg_query(url, "INSERT INTO schema_version VALUES (999, 'from the future', '2030-01-01 00:00:00')")
    backup = pg_admin.json("backup")["backup"]["path"]
    pg_query(url, "DELETE FROM schema_version WHERE version = 999")
    pg_admin.fails("restore", backup, match="schema version 999 is newer")


def test_a_failing_restore_rolls_back(backed_up):
    """An error in the middle of the load (here: a type squatting on a table's name, which the
    restore does not drop) leaves every table as it was: the drop and the load are one transaction."""
    url = url_of(backed_up)
    pg_query(url, "DROP TABLE api_token CASCADE; CREATE TYPE api_token AS (x int)")  # device_authorization refers to it
    kept = ("user", "tunnel", "session", "schema_version")
    before = {t: table_rows(url, t) for t in kept}
    line = backed_up.fails("restore", backed_up.backup_file, match="rolled back")
    assert "already exists" in line and PASSWORD not in line
    assert {t: table_rows(url, t) for t in kept} == before
    assert usernames(backed_up) == ["root", "alice", "bob"]


def fake_bindir(tmp_path: Path, version: str, record: Path | None = None) -> Path:
    """pg_dump/pg_restore/psql wrappers: report ``version``; record argv and the password env."""
    real = pgtools.Tools(pgtools.candidate_bindirs()[0], 0)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in pgtools.TOOLS:
        script = bindir / tool
        log = f'echo "{tool} $*" >> {record}; echo "PGPASSWORD=${{PGPASSWORD:-}} PGPASSFILE=$PGPASSFILE" >> {record}; ' \
              f'[ -n "$PGPASSFILE" ] && [ -f "$PGPASSFILE" ] && stat -c "passfile mode %a" "$PGPASSFILE" >> {record}; ' \
            if record else ""
        script.write_text("#!/bin/sh\n"
                          f'if [ "$1" = "--version" ]; then echo "{tool} (PostgreSQL) {version}"; exit 0; fi\n'
                          f"{log}exec {real.exe(tool)} \"$@\"\n")
        script.chmod(0o755)
    return bindir


def test_the_password_reaches_the_tools_only_through_a_private_passfile(pg_admin, postgres_cluster, tmp_path):
    record = tmp_path / "calls.log"
    bindir = fake_bindir(tmp_path, f"{postgres_cluster.version // 10000}.99", record)
    pg_admin.ok("backup", "--pg-bindir", str(bindir))
    pg_admin.ok("restore", "--pg-bindir", str(bindir), "--force", next(pg_admin.backup_dir.iterdir()).as_posix())
    calls = record.read_text()
    assert "pg_dump --format=custom" in calls and "psql " in calls
    assert PASSWORD not in calls and "PGPASSWORD= " in calls
    assert "passfile mode 600" in calls
    passfiles = set(re.findall(r"PGPASSFILE=(\S+)", calls)) - {os.devnull}
    assert passfiles and not any(Path(p).exists() for p in passfiles)  # removed after each run


def test_client_tools_older_than_the_server_are_refused_clearly(pg_admin, tmp_path):
    bindir = fake_bindir(tmp_path, "9.6.24")
    line = pg_admin.fails("backup", "--pg-bindir", str(bindir), match="pg_dump 9 cannot dump a PostgreSQL")
    assert "install postgresql-client-" in line
    assert not pg_admin.backup_dir.exists() or not list(pg_admin.backup_dir.iterdir())
    pg_admin.fails("backup", "--pg-bindir", str(tmp_path / "nowhere"), match="no working pg_dump")


def test_choosing_the_tools():
    dirs = {13: Path("/13"), 15: Path("/15"), 16: Path("/16")}
    assert pgtools.choose(dirs, 15) == Path("/15")
    assert pgtools.choose(dirs, 14) == Path("/16")  # the newest newer one
    assert pgtools.choose(dirs, 17) is None
    assert pgtools.major_of("pg_dump (PostgreSQL) 16.4 (Debian 16.4-1.pgdg120+1)") == 16
    assert pgtools.server_major(150010) == 15 and pgtools.server_major(90624) == 9
    assert pgtools.connect_url("postgres://u:p%40ss@h:5432/db?sslmode=require") == \
        "postgresql://u@h:5432/db?sslmode=require"
    assert retention.parse_backup_name("intunnel-20300101T000000Z.pgdump") is not None


def test_backup_while_another_process_writes(pg_admin, postgres_cluster, tmp_path):
    """Every row committed before a backup began is in it, on PostgreSQL as on SQLite."""
    url = url_of(pg_admin)
    reader = psycopg2.connect(url)
    reader.autocommit = True

    def committed() -> int:
        with reader.cursor() as cur:
            try:
                cur.execute("SELECT COALESCE(MAX(n), 0) FROM writer_rows")
            except psycopg2.errors.UndefinedTable:  # not created yet
                return 0
            return cur.fetchone()[0]

    try:
        taken = backups_while_writing(pg_admin, url, committed, tmp_path / "stop-writer")
    finally:
        reader.close()
    for i, (backup, before) in enumerate(taken):
        target = scratch(tmp_path, postgres_cluster, f"restore{i}")
        try:
            target.ok("restore", backup)
            count, top = pg_query(url_of(target), "SELECT COUNT(*), MAX(n) FROM writer_rows WHERE n <= %s",
                               (before,))[0]
            assert count == before and top == before, f"backup {i}: rows 1..{before} expected"
        finally:
            postgres_cluster.drop_database(target.database_url)
