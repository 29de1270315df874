"""The data model on a real database (SQLite file: WAL; both: foreign keys, uniqueness by the database)."""

from __future__ import annotations

import peewee as pw
import pytest

from intunnel.models import ApiToken, Session, Tunnel, User, connect_settings, database, write_transaction
from intunnel.timeutil import utcnow


def user(n: int) -> User:
    return User.create(username=f"user{n}", email=f"user{n}@example.com", password_hash="x")


@pytest.mark.sqlite_only("SQLite's pragmas")
def test_pragmas(db):
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_read_then_write_transaction_is_not_failed_by_another_writer(settings, db):
    """The web app checks, then writes (a limit, then the new row) while the relay writes the
    same file.  A deferred SQLite transaction that has read cannot take the write lock once
    another connection has committed since: "database is locked" at once, busy_timeout or not.
    write_transaction takes the write lock at BEGIN instead, so the other writer waits."""
    user(1)
    other = connect_settings(settings)
    other.connect()
    if isinstance(other, pw.SqliteDatabase):
        other.execute_sql("PRAGMA busy_timeout = 0")   # say at once whether it got in
    insert = ('INSERT INTO "user" (username, email, password_hash, is_admin, disabled, created_at) '
              f"VALUES ({other.param}, {other.param}, 'x', {other.param}, {other.param}, {other.param})")
    try:
        with write_transaction():
            assert User.select().count() == 1
            try:
                other.execute_sql(insert, ("relay", "relay@example.com", False, False, utcnow()))
            except pw.OperationalError:
                pass   # SQLite: our transaction holds the write lock (a real writer would wait)
            user(2)
    finally:
        other.close()
    assert User.select().where(User.username == "user2").exists()


@pytest.mark.parametrize("field", ["username", "email"])
def test_user_uniqueness_enforced_by_database(db, field):
    user(1)
    values = {"username": "other", "email": "other@example.com", "password_hash": "x"}
    values[field] = "user1" if field == "username" else "user1@example.com"
    with pytest.raises(pw.IntegrityError), database.atomic():
        User.create(**values)


def test_subdomain_and_token_unique(db):
    owner = user(1)
    Tunnel.create(owner=owner, name="a", subdomain="myapp", local_port=1, token="t1")
    with pytest.raises(pw.IntegrityError), database.atomic():
        Tunnel.create(owner=owner, name="b", subdomain="myapp", local_port=1, token="t2")
    with pytest.raises(pw.IntegrityError), database.atomic():
        Tunnel.create(owner=owner, name="b", subdomain="other", local_port=1, token="t1")


def test_foreign_keys_enforced_and_cascade(db):
    with pytest.raises(pw.IntegrityError), database.atomic():
        Tunnel.create(owner=9999, name="a", subdomain="orphan", local_port=1, token="t")
    owner = user(1)
    Tunnel.create(owner=owner, name="a", subdomain="myapp", local_port=1, token="t1")
    Session.create(id_hash="h", user=owner, csrf_token="c", expires_at=utcnow())
    ApiToken.create(user=owner, name="n", prefix="itk_", token_hash="th")
    owner.delete_instance()
    assert (Tunnel.select().count(), Session.select().count(), ApiToken.select().count()) == (0, 0, 0)


def test_defaults(db):
    owner = user(1)
    t = Tunnel.create(owner=owner, name="a", subdomain="myapp", local_port=1, token="t1")
    t = Tunnel.get_by_id(t.id)
    assert t.status == "inactive" and t.last_connected is None and t.created_at is not None
    assert owner.is_admin is False and owner.disabled is False
