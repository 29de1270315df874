"""intunnel-admin on PostgreSQL: doctor (connection, server version, schema version, what is
wrong when it can't connect, never the password) and db check.  Backups: test_pg_backup.py.
Runs when --db selects postgresql."""

from __future__ import annotations

import json

import pytest

from support.postgres import PASSWORD

from .conftest import Admin


@pytest.fixture
def pg_admin(admin, db_backend):
    if db_backend != "postgresql":
        pytest.skip("PostgreSQL only (--db=postgresql or --db=both)")
    admin.ok("db", "migrate")
    return admin


def doctor_database_check(a: Admin) -> tuple[int, dict, str]:
    r = a.run("doctor", "--json")
    assert "Traceback" not in r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    return r.returncode, checks["database"], r.stdout + r.stderr


def test_doctor_reports_server_and_schema_version(pg_admin):
    from intunnel import migrations
    _, check, output = doctor_database_check(pg_admin)
    assert check["level"] == "ok", check
    assert "PostgreSQL 1" in check["message"] and f"schema version {migrations.LATEST}" in check["message"]
    assert PASSWORD not in output


def test_doctor_says_what_is_wrong_with_a_bad_password(pg_admin, tmp_path):
    (pg_admin.root / "db-password").write_text("not-the-password\n")
    code, check, output = doctor_database_check(pg_admin)
    assert code == 1 and check["level"] == "fail", check
    assert "password authentication failed" in check["message"] and "pg_hba" in check["hint"]
    assert PASSWORD not in output and "not-the-password" not in output


def test_doctor_on_an_unreachable_server(pg_admin, postgres_cluster):
    from support.tunnel import free_port
    text = pg_admin.config.read_text().replace(f":{postgres_cluster.port}/", f":{free_port()}/")
    pg_admin.config.write_text(text)
    code, check, output = doctor_database_check(pg_admin)
    assert code == 1 and check["level"] == "fail" and "cannot connect" in check["message"], check
    assert PASSWORD not in output


def test_doctor_with_the_password_in_the_url_never_prints_it(tmp_path, postgres_cluster):
    url = postgres_cluster.new_database()
    try:
        a = Admin(tmp_path, database_url=url)
        a.ok("db", "migrate")
        code, check, output = doctor_database_check(a)
        assert check["level"] == "ok" and "***" in check["message"], check
        assert PASSWORD not in output
        bad = Admin(tmp_path / "bad", database_url=url.replace(PASSWORD, PASSWORD + "x"))
        line = bad.fails("user", "list", match="password authentication failed")
        assert PASSWORD not in line
    finally:
        postgres_cluster.drop_database(url)


def test_db_check_and_migrate(pg_admin):
    out = pg_admin.json("db", "check")
    assert out["ok"] and out["integrity"] == ["ok"] and out["journal_mode"].startswith("PostgreSQL ")
    assert "up to date" in pg_admin.json("db", "migrate")["message"]
    assert PASSWORD not in pg_admin.ok("db", "migrate").stdout


def test_missing_password_file_is_a_config_error(pg_admin):
    (pg_admin.root / "db-password").unlink()
    pg_admin.fails("user", "list", code=2, match="database_password_file")
