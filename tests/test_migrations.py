"""Schema migrations, on every backend: a database made by schema version 1 upgrades
without losing rows; concurrent starts apply each step once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import peewee as pw
import pytest

from intunnel import dburl, migrations
from intunnel.models import ApiToken, Session, Tunnel, User, open_database
from intunnel.security import hash_password, sha256_hex
from intunnel.settings import load_settings


@pytest.fixture
def empty_settings(tmp_path, db_backend, request):
    """Settings whose database exists but is empty (no schema at all)."""
    overrides = {"data_dir": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()
    cluster = None
    if db_backend == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        overrides["database_url"] = cluster.new_database(migrated=False)
    yield load_settings(env={"INTUNNEL_CONFIG": ""}, overrides=overrides)
    if cluster is not None:
        from intunnel.models import database
        if database.obj is not None and not database.is_closed():
            database.close()
        cluster.drop_database(overrides["database_url"])


def bare_database(settings) -> pw.Database:
    """The configured database without the models bound (what version 1 code saw)."""
    if settings.db_backend == "sqlite":
        return pw.SqliteDatabase(str(settings.db_path), pragmas={"foreign_keys": 1})
    return dburl.make_database(settings.db_url)


def make_v1_database(settings) -> None:
    db = bare_database(settings)
    with db.connection_context():
        assert migrations.migrate(db, target=1) == [1]
        assert migrations.current_version(db) == 1
        # rows written as version 1 would have written them (tables, not today's models)
        table = lambda name: pw.Table(name).bind(db)  # noqa: E731
        table("user").insert(id=1, username="alice", email="alice@example.com",
                             password_hash=hash_password("password1"), is_admin=True, disabled=False,
                             created_at=datetime(2026, 1, 10, 8)).execute()
        table("tunnel").insert(id=7, owner_id=1, name="My Web App", subdomain="myapp", local_port=3000,
                               token="tok", status="inactive", created_at=datetime(2026, 1, 15, 10, 30),
                               last_connected=datetime(2026, 2, 1, 14, 20)).execute()
        table("session").insert(id_hash=sha256_hex("sid"), user_id=1, csrf_token="csrf",
                                created_at=datetime(2026, 1, 15, 10, 30),
                                expires_at=datetime(2099, 1, 1)).execute()
        table("api_token").insert(id=3, user_id=1, name="ci", prefix="itk_abcdefgh", token_hash=sha256_hex("itk_x"),
                                  created_at=datetime(2026, 1, 15, 10, 30)).execute()
        if isinstance(db, pw.PostgresqlDatabase):
            # Rows given explicit ids (as a copy or a restore does): the sequences follow.
            for name in ("user", "tunnel", "api_token"):
                db.execute_sql(f"SELECT setval(pg_get_serial_sequence('\"{name}\"', 'id'), "
                               f"(SELECT MAX(id) FROM \"{name}\"))")
    db.close()


def test_v1_database_upgrades_and_keeps_rows(empty_settings):
    make_v1_database(empty_settings)
    db = open_database(empty_settings)  # what every service does at start: migrate to the latest
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


def test_migrate_is_idempotent_and_versions_have_no_gaps(empty_settings):
    versions = [v for v, _ in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    db = open_database(empty_settings)
    with db.connection_context():
        assert migrations.migrate(db) == []
        assert migrations.current_version(db) == migrations.LATEST


STARTER = """
import json, os, sys, time
from intunnel.models import open_database
from intunnel.migrations import migrate
from intunnel.settings import load_settings
settings = load_settings(env={"INTUNNEL_CONFIG": ""}, overrides=json.loads(sys.argv[1]))
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.005)
db = open_database(settings, migrate=False)
with db.connection_context():
    print(json.dumps(migrate(db)))
"""


def test_concurrent_starts_apply_each_step_once(empty_settings, tmp_path):
    """Web app, relay and admin may start at once on an empty database: one applies, none fails."""
    overrides = {"data_dir": empty_settings.data_dir, "database_url": empty_settings.database_url}
    Path(empty_settings.data_dir).mkdir(parents=True, exist_ok=True)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, json.dumps(overrides), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    go.touch()
    outcomes = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outcomes
    # Each step once, by whichever process got its transaction first: usually one applies them
    # all, but on a loaded machine another may win the lock between two steps and apply the rest.
    applied = [version for out, _ in outcomes for version in json.loads(out)]
    assert sorted(applied) == list(range(1, migrations.LATEST + 1)), outcomes


def test_schema_migrator_is_the_backends(empty_settings):
    """Future migrations write their DDL through playhouse.migrate: the right dialect for each backend."""
    from playhouse.migrate import PostgresqlMigrator, SqliteMigrator
    db = bare_database(empty_settings)
    expected = SqliteMigrator if empty_settings.db_backend == "sqlite" else PostgresqlMigrator
    assert isinstance(migrations.schema_migrator(db), expected)


def test_v3_adds_routes_and_relays_to_a_v2_database(empty_settings):
    """Routes (issue 12): a v2 database gains the route and relay tables on both backends;
    a tunnel's route goes with the tunnel; the relay's own queries run on PostgreSQL."""
    from intunnel.models import RelayNode, Route
    make_v1_database(empty_settings)
    db = bare_database(empty_settings)
    with db.connection_context():
        assert migrations.migrate(db, target=2) == [2]
    db.close()
    db = open_database(empty_settings)  # the services' start: migrates to the latest
    with db.connection_context():
        assert migrations.current_version(db) == migrations.LATEST >= 3
        assert {"route", "relay"} <= set(db.get_tables())
        assert any(i.columns == ["relay_id"] for i in db.get_indexes("route"))
        now = datetime(2026, 3, 1, 12)
        RelayNode.create(relay_id="relay-a", address="10.0.0.1:8080", started_at=now, last_heartbeat=now)
        Route.create(tunnel=7, relay_id="relay-a", session_id="0123456789abcdef", claimed_at=now,
                     lease_expires_at=now)
        with pytest.raises(pw.IntegrityError), db.atomic():  # one route per tunnel
            Route.insert(tunnel=7, relay_id="relay-b", session_id="x", claimed_at=now,
                         lease_expires_at=now).execute()
        with pytest.raises(pw.IntegrityError), db.atomic():  # only for a tunnel that exists
            Route.insert(tunnel=8, relay_id="relay-a", session_id="x", claimed_at=now,
                         lease_expires_at=now).execute()
        Tunnel.delete_by_id(7)
        assert Route.select().count() == 0 and RelayNode.select().count() == 1


def test_v4_adds_tunnel_access_to_a_v3_database(empty_settings):
    """Access policies (issue 13): a v3 database's tunnels gain a NULL access column (public,
    as they were) on both backends; a stored policy reads back through today's models."""
    from intunnel import access
    make_v1_database(empty_settings)
    db = bare_database(empty_settings)
    with db.connection_context():
        assert migrations.migrate(db, target=3) == [2, 3]
        assert "access" not in {c.name for c in db.get_columns("tunnel")}
    db.close()
    db = open_database(empty_settings)
    with db.connection_context():
        assert migrations.current_version(db) == migrations.LATEST >= 4
        tunnel = Tunnel.get_by_id(7)
        assert tunnel.access is None and access.load(tunnel.access).public
        stored = access.dump(access.Policy(users=(("alice", hash_password("wonderland")),)))
        Tunnel.update(access=stored).where(Tunnel.id == 7).execute()
        assert access.load(Tunnel.get_by_id(7).access).hash_of("alice").startswith("$argon2")


def test_v6_adds_the_sessions_access_rules_to_a_v5_database(empty_settings):
    """Client-side narrowing (issue 13): a v5 database's tunnels gain a NULL session_access column
    (no live session narrowed them) on both backends; what a relay writes reads back."""
    make_v1_database(empty_settings)
    db = bare_database(empty_settings)
    with db.connection_context():
        assert migrations.migrate(db, target=5) == [2, 3, 4, 5]
        assert "session_access" not in {c.name for c in db.get_columns("tunnel")}
    db.close()
    db = open_database(empty_settings)
    with db.connection_context():
        assert migrations.current_version(db) == migrations.LATEST >= 6
        tunnel = Tunnel.get_by_id(7)
        assert tunnel.session_access is None and tunnel.name == "My Web App"
        shown = json.dumps({"basic_auth": ["carol"], "ip_allow": [], "ip_deny": ["127.0.0.2/32"]})
        Tunnel.update(status="active", session_access=shown).where(Tunnel.id == 7).execute()
        assert json.loads(Tunnel.get_by_id(7).session_access)["basic_auth"] == ["carol"]


def test_v8_marks_old_tunnels_not_ephemeral_and_keeps_a_default_for_older_writers(empty_settings):
    """Ephemeral tunnels (issue 14): a v7 database's tunnels read as not ephemeral, never
    disconnected; and an INSERT that doesn't name the column (an older release still running
    beside this one during a rolling upgrade) still works on both backends."""
    make_v1_database(empty_settings)
    db = bare_database(empty_settings)
    with db.connection_context():
        assert migrations.migrate(db, target=7) == [2, 3, 4, 5, 6, 7]
    db.close()
    db = open_database(empty_settings)
    with db.connection_context():
        assert migrations.current_version(db) == migrations.LATEST >= 8
        tunnel = Tunnel.get_by_id(7)
        assert tunnel.ephemeral is False and tunnel.disconnected_at is None
        db.execute_sql("INSERT INTO tunnel (owner_id, name, subdomain, local_port, token, status, created_at) "
                       "VALUES (%s, 'Old writer', 'oldwriter', 3000, 'old-writer-token', 'inactive', %s)"
                       .replace("%s", db.param), (tunnel.owner_id, datetime(2026, 1, 1)))
        assert Tunnel.get(Tunnel.subdomain == "oldwriter").ephemeral is False
