"""`intunnel-admin db copy --to postgresql://...`: a populated SQLite file into an empty
PostgreSQL database, ids kept, verified per table; the web app then works on the target
and new rows get fresh ids; a non-empty target is refused.  Needs the PostgreSQL cluster:
runs when --db selects postgresql (once, the source is always a SQLite file)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
import requests

from intunnel.admin import dbcopy
from intunnel.settings import load_settings
from support.postgres import PASSWORD
from support.web_server import running_web_app

from .conftest import Admin, pg_query

MODEL_TABLES = ("user", "tunnel", "api_token", "session")


@pytest.fixture
def cluster(request):
    if request.config.getoption("--db") not in ("postgresql", "both"):
        pytest.skip("needs PostgreSQL (--db=postgresql or --db=both)")
    return request.getfixturevalue("postgres_cluster")


@pytest.fixture
def target(cluster, tmp_path):
    """An empty PostgreSQL database: (URL without password, password file)."""
    url = cluster.new_database(migrated=False, password=False)
    secret = tmp_path / "target-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    yield url, str(secret)
    cluster.drop_database(url)


def with_password(url: str) -> str:
    return url.replace("postgresql://intunnel@", f"postgresql://intunnel:{PASSWORD}@")


def pg(url: str, sql: str, params=None) -> list:
    return pg_query(with_password(url), sql, params)


@pytest.fixture
def source(tmp_path):
    """A SQLite installation: root, alice (tunnels, API token, a login session), a deleted
    user (ids with a gap), and the secrets a test needs to use them."""
    from intunnel import accounts, apitokens, security, tunnels
    from intunnel.models import Session
    from intunnel.timeutil import utcnow
    a = Admin(tmp_path / "sqlite")
    a.ok("db", "migrate")
    a.create_user("root@example.test", "root", "correct horse", "--admin")
    db = a.open_models()
    try:
        gone = accounts.create_user("gone@example.test", "gone", "correct horse")
        alice = accounts.create_user("alice@example.test", "alice", "correct horse")
        accounts.delete_user(gone)
        first = tunnels.create(a.settings, alice, "Docs", "docs", 8000)
        tunnels.create(a.settings, alice, "My Web App", "myapp", 3000)
        tunnels.create(a.settings, alice, "Backend", "backend", 9000)
        tunnels.delete(alice, first.id)  # the tunnel ids start at 2
        _, a.api_secret = apitokens.create(alice, "ci")
        a.session_cookie = security.new_session_id()
        Session.create(id_hash=security.sha256_hex(a.session_cookie), user=alice, csrf_token="c" * 32,
                       created_at=utcnow(), expires_at=utcnow() + timedelta(days=1))
    finally:
        db.close()
    return a


def sqlite_rows(a: Admin, sql: str) -> list:
    conn = sqlite3.connect(a.db_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_copy_then_the_web_app_works_on_postgresql(source, target, tmp_path):
    url, password_file = target
    # the rehearsal while live: everything is copied and verified, then rolled back
    out = source.ok("db", "copy", "--to", url, "--to-password-file", password_file, "--dry-run").stdout
    tables = sorted(r[0] for r in sqlite_rows(source, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                                      "AND name NOT LIKE 'sqlite_%'"))
    assert set(MODEL_TABLES) | {"schema_version"} <= set(tables)
    lines = out.splitlines()
    assert lines[0].split() == ["TABLE", "SQLITE", "ROWS", "POSTGRESQL", "ROWS", "SHA-256", "CHECK"]
    shown = [line.split()[0] for line in lines[1:1 + len(tables)]]
    assert sorted(shown) == tables and all(shown.index("user") < shown.index(t) for t in MODEL_TABLES[1:])
    assert all(line.split()[-1] == "ok" for line in lines[1:1 + len(tables)]) and "rolled back" in lines[-1]
    assert pg(url, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]

    result = source.json("db", "copy", "--to", url, "--to-password-file", password_file)
    assert result["ok"] and not result["dry_run"] and PASSWORD not in str(result)
    report = {r["table"]: r for r in result["tables"]}
    assert sorted(report) == tables and all(r["match"] for r in report.values())
    assert {t: report[t]["target_rows"] for t in ("user", "tunnel", "api_token", "session")} == {
        "user": 2, "tunnel": 2, "api_token": 1, "session": 1}
    # ids kept, gaps and all
    assert pg(url, 'SELECT id, username FROM "user" ORDER BY id') == [(1, "root"), (3, "alice")]
    assert pg(url, "SELECT id, subdomain FROM tunnel ORDER BY id") == \
        [tuple(r) for r in sqlite_rows(source, "SELECT id, subdomain FROM tunnel ORDER BY id")] == \
        [(2, "myapp"), (3, "backend")]

    settings = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides={
        "data_dir": str(source.data_dir), "database_url": url, "database_password_file": password_file})
    with running_web_app(settings) as web:
        # a copied login session and a copied API token still work
        copied = {"Cookie": f"intunnel_session={source.session_cookie}"}
        r = requests.get(web.url + "/api/tunnels", headers=copied)
        assert r.status_code == 200 and {t["subdomain"] for t in r.json()["tunnels"]} == {"myapp", "backend"}
        bearer = {"Authorization": f"Bearer {source.api_secret}"}
        assert requests.get(web.url + "/api/tunnels", headers=bearer).status_code == 200
        # a fresh login with the copied password hash, then a new row with a fresh id
        with requests.Session() as s:
            r = s.post(web.url + "/login", data={"email": "alice@example.test", "password": "correct horse"})
            assert r.status_code == 200, r.text
            listed = s.get(web.url + "/api/tunnels").json()["tunnels"]
            assert {t["subdomain"] for t in listed} == {"myapp", "backend"}
            r = s.post(web.url + "/api/tunnels", json={"name": "New", "subdomain": "newone", "local_port": 5000})
            assert r.status_code == 200, r.text
            assert r.json()["tunnel"]["id"] == 4
    target_admin = Admin(tmp_path / "pg", database_url=url, password=PASSWORD)
    created = target_admin.json("user", "create", "--email", "new@example.test", "--username", "new",
                                "--password-stdin", input="correct horse\n")
    assert created["user"]["id"] == 4
    assert target_admin.json("db", "check")["ok"] is True


def test_a_non_empty_target_is_refused(source, cluster):
    url = cluster.new_database(password=False)  # migrated; then one row
    try:
        pg(url, "INSERT INTO \"user\" (username, email, password_hash, is_admin, disabled, created_at) "
                "VALUES ('x', 'x@example.test', 'h', false, false, now())")
        line = source.fails("db", "copy", "--to", with_password(url), match="the target database is not empty")
        assert "user (1 rows)" in line and PASSWORD not in line
        assert pg(url, 'SELECT COUNT(*) FROM "user"') == [(1,)] and pg(url, "SELECT COUNT(*) FROM tunnel") == [(0,)]
    finally:
        cluster.drop_database(url)


def test_bad_arguments_are_one_line(source, target, tmp_path):
    url, password_file = target
    source.fails("db", "copy", "--to", "sqlite:///elsewhere.db", code=2, match="expected a postgresql:// URL")
    source.fails("db", "copy", "--to", "mysql://x@y/z", code=2, match="--to")
    line = source.fails("db", "copy", "--to", with_password(url), "--to-password-file", password_file, code=2,
                        match="one of them")
    assert PASSWORD not in line
    source.fails("db", "copy", "--to", url, "--to-password-file", str(tmp_path / "missing"), code=2,
                 match="--to-password-file")
    bad = tmp_path / "wrong"
    bad.write_text("not-the-password\n")
    line = source.fails("db", "copy", "--to", url, "--to-password-file", str(bad), match="password authentication")
    assert "not-the-password" not in line
    pg_installation = Admin(tmp_path / "pg", database_url=url, password=PASSWORD)
    pg_installation.fails("db", "copy", "--to", url, code=2, match="already")


def test_canonical_rows_agree_across_backends():
    """The SQLite value, converted as the copy converts it, serialises like PostgreSQL's own."""
    from datetime import datetime
    sqlite_side = [dbcopy.to_target(v, t) for v, t in [
        (1, "boolean"), ("2026-01-31 03:04:05", "timestamp without time zone"),
        ("2026-01-31 03:04:05.123456+00:00", "timestamp without time zone"), (None, "text"), ("7", "integer")]]
    pg_side = [True, datetime(2026, 1, 31, 3, 4, 5), datetime(2026, 1, 31, 3, 4, 5, 123456), None, 7]
    assert dbcopy.canonical_row(sqlite_side) == dbcopy.canonical_row(pg_side)
    assert dbcopy.checksum([[1, "a"], [2, "b"]]) == dbcopy.checksum([[2, "b"], [1, "a"]])
