"""Schema migrations: a database made by schema version 1 upgrades without losing rows."""

from __future__ import annotations

import peewee as pw

from intunnel import migrations
from intunnel.models import ApiToken, Session, Tunnel, User, open_database
from intunnel.security import hash_password, sha256_hex


def make_v1_database(path) -> None:
    db = pw.SqliteDatabase(str(path), pragmas={"foreign_keys": 1})
    with db.connection_context():
        assert migrations.migrate(db, target=1) == [1]
        assert migrations.current_version(db) == 1
        # rows written as version 1 would have written them (raw SQL: no today's models)
        db.execute_sql('INSERT INTO "user" (id, username, email, password_hash, is_admin, disabled, created_at) '
                       "VALUES (1, 'alice', 'alice@example.com', ?, 1, 0, '2026-01-10 08:00:00')",
                       (hash_password("password1"),))
        db.execute_sql("INSERT INTO tunnel (id, owner_id, name, subdomain, local_port, token, status, created_at, "
                       "last_connected) VALUES (7, 1, 'My Web App', 'myapp', 3000, 'tok', 'inactive', "
                       "'2026-01-15 10:30:00', '2026-02-01 14:20:00')")
        db.execute_sql("INSERT INTO session (id_hash, user_id, csrf_token, created_at, expires_at) "
                       "VALUES (?, 1, 'csrf', '2026-01-15 10:30:00', '2099-01-01 00:00:00')", (sha256_hex("sid"),))
        db.execute_sql("INSERT INTO api_token (id, user_id, name, prefix, token_hash, created_at) "
                       "VALUES (3, 1, 'ci', 'itk_abcdefgh', ?, '2026-01-15 10:30:00')", (sha256_hex("itk_x"),))


def test_v1_database_upgrades_and_keeps_rows(tmp_path):
    path = tmp_path / "old.db"
    make_v1_database(path)
    db = open_database(path)  # what every service does at start: migrate to the latest
    with db.connection_context():
        assert migrations.current_version(db) == migrations.LATEST
        user = User.get_by_id(1)
        assert (user.username, user.email, user.is_admin, user.disabled) == ("alice", "alice@example.com", True, False)
        tunnel = Tunnel.get_by_id(7)
        assert (tunnel.owner_id, tunnel.subdomain, tunnel.local_port, tunnel.token) == (1, "myapp", 3000, "tok")
        assert tunnel.last_connected.isoformat() == "2026-02-01T14:20:00"
        assert Session.get(Session.id_hash == sha256_hex("sid")).user_id == 1
        assert ApiToken.get_by_id(3).token_hash == sha256_hex("itk_x")
        # and the upgraded database takes new rows through today's models
        Tunnel.create(owner=user, name="n", subdomain="second", local_port=1, token="t2")
        assert Tunnel.select().count() == 2


def test_migrate_is_idempotent_and_versions_have_no_gaps(tmp_path):
    versions = [v for v, _ in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    db = open_database(tmp_path / "x.db")
    with db.connection_context():
        assert migrations.migrate(db) == []
        assert migrations.current_version(db) == migrations.LATEST
