"""Versioned schema migrations, applied in order and recorded in ``schema_version``.

Each migration is a function of the database, written against a frozen snapshot
of the schema it starts from (never against today's models), so a database made
by any earlier version upgrades without losing data.  Append only: never edit a
migration that has shipped.  ``intunnel-admin db migrate`` and every service
start call ``migrate``.

Both backends run the same migrations: write DDL through peewee
(``create_tables``, or ``schema_migrator(db)`` -- playhouse.migrate's
``add_column``/``add_index``/... with the right SQL for SQLite and PostgreSQL).
Raw SQL only where a backend needs its own, behind ``isinstance`` checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import peewee as pw

from .timeutil import utcnow

if TYPE_CHECKING:
    from playhouse.migrate import SchemaMigrator

# pg_advisory_xact_lock key held while migrating, so concurrent starts apply each step once.
PG_MIGRATION_LOCK = 0x696E7475  # "intu"


def schema_migrator(db: pw.Database) -> SchemaMigrator:
    """playhouse.migrate's migrator for ``db``'s backend (SqliteMigrator, PostgresqlMigrator).
    Imported here, by the steps that need it: playhouse.migrate imports the PostgreSQL driver,
    which a process starting on an up-to-date SQLite database (the relay) never loads."""
    from playhouse.migrate import SchemaMigrator
    return SchemaMigrator.from_database(db)


def _v1_initial(db: pw.Database) -> None:
    """Users, tunnels, sessions and API tokens."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class User(Base):
        username = pw.CharField(max_length=64, unique=True)
        email = pw.CharField(max_length=254, unique=True)
        password_hash = pw.CharField(max_length=255)
        is_admin = pw.BooleanField(default=False)
        disabled = pw.BooleanField(default=False)
        created_at = pw.DateTimeField()

    class Tunnel(Base):
        owner = pw.ForeignKeyField(User, on_delete="CASCADE", index=True)
        name = pw.CharField(max_length=100)
        subdomain = pw.CharField(max_length=63, unique=True)
        local_port = pw.IntegerField()
        token = pw.CharField(max_length=128, unique=True)
        status = pw.CharField(max_length=16, default="inactive")
        created_at = pw.DateTimeField()
        last_connected = pw.DateTimeField(null=True)
        disconnect_requested_at = pw.DateTimeField(null=True)

    class Session(Base):
        id_hash = pw.CharField(max_length=64, primary_key=True)
        user = pw.ForeignKeyField(User, on_delete="CASCADE", index=True)
        csrf_token = pw.CharField(max_length=64)
        created_at = pw.DateTimeField()
        expires_at = pw.DateTimeField(index=True)

    class ApiToken(Base):
        user = pw.ForeignKeyField(User, on_delete="CASCADE", index=True)
        name = pw.CharField(max_length=100)
        prefix = pw.CharField(max_length=16)
        token_hash = pw.CharField(max_length=64, unique=True)
        created_at = pw.DateTimeField()
        last_used_at = pw.DateTimeField(null=True)

    db.create_tables([User, Tunnel, Session, ApiToken])


def _v2_rate_limits(db: pw.Database) -> None:
    """Rate-limit and login-throttle counters, shared by every web process (PostgreSQL)."""
    from playhouse.migrate import migrate as run

    class RateLimit(pw.Model):
        scope = pw.CharField(max_length=32)
        key_hash = pw.CharField(max_length=64)
        window_start = pw.DoubleField()
        hits = pw.IntegerField()
        allowed = pw.BooleanField()
        expires_at = pw.DoubleField()

        class Meta:
            database = db
            table_name = "rate_limit"
            primary_key = pw.CompositeKey("scope", "key_hash")

    db.create_tables([RateLimit])
    run(schema_migrator(db).add_index("rate_limit", ("expires_at",), False))


def _v3_routes(db: pw.Database) -> None:
    """Routes and relays: which relay holds each tunnel (several relays on PostgreSQL)."""
    from playhouse.migrate import migrate as run

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Tunnel(Base):  # only the key the route refers to
        class Meta:
            table_name = "tunnel"

    class Route(Base):
        tunnel = pw.ForeignKeyField(Tunnel, primary_key=True, on_delete="CASCADE")
        relay_id = pw.CharField(max_length=64)
        session_id = pw.CharField(max_length=32)
        claimed_at = pw.DateTimeField()
        lease_expires_at = pw.DateTimeField()

    class Relay(Base):
        relay_id = pw.CharField(max_length=64, primary_key=True)
        address = pw.CharField(max_length=100)
        started_at = pw.DateTimeField()
        last_heartbeat = pw.DateTimeField()
        agents = pw.IntegerField(default=0)

    db.create_tables([Route, Relay])
    run(schema_migrator(db).add_index("route", ("relay_id",), False))


def _v4_tunnel_access(db: pw.Database) -> None:
    """Tunnel access policies: a JSON text column (basic-auth users with password hashes, IP rules)."""
    from playhouse.migrate import migrate as run
    # NULL: public, as every tunnel was before.  JSON, not columns per mode: the policy grows
    # (members only, bypass paths) without a migration per mode.
    run(schema_migrator(db).add_column("tunnel", "access", pw.TextField(null=True)))


def _v5_member_access(db: pw.Database) -> None:
    """Members-only tunnels: one-time tickets from the login and the access grants they become."""
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class User(Base):
        pass

    class Tunnel(Base):
        pass

    class Session(Base):
        id_hash = pw.CharField(max_length=64, primary_key=True)

    class AccessTicket(Base):
        token_hash = pw.CharField(max_length=64, primary_key=True)
        session = pw.ForeignKeyField(Session, on_delete="CASCADE", index=True)
        tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE", index=True)
        target = pw.CharField(max_length=2048)
        expires_at = pw.DateTimeField(index=True)

    class AccessGrant(Base):
        token_hash = pw.CharField(max_length=64, primary_key=True)
        session = pw.ForeignKeyField(Session, on_delete="CASCADE", index=True)
        tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE", index=True)
        user = pw.ForeignKeyField(User, on_delete="CASCADE", index=True)
        expires_at = pw.DateTimeField(index=True)

    db.create_tables([AccessTicket, AccessGrant])


def _v6_session_access(db: pw.Database) -> None:
    """Client-side narrowing: the live session's own access rules, as the dashboard shows them."""
    from playhouse.migrate import migrate as run
    # NULL: the session added none (or no session).  User names and CIDRs only, never a password.
    run(schema_migrator(db).add_column("tunnel", "session_access", pw.TextField(null=True)))


def _v7_device_authorizations(db: pw.Database) -> None:
    """intunnel login: pending device authorizations (RFC 8628), the device code stored hashed."""
    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class User(Base):
        pass

    class ApiToken(Base):
        pass

    class DeviceAuthorization(Base):
        device_code_hash = pw.CharField(max_length=64, unique=True)
        user_code = pw.CharField(max_length=16, unique=True)
        client_name = pw.CharField(max_length=100)
        client_address = pw.CharField(max_length=64, index=True)
        created_at = pw.DateTimeField()
        expires_at = pw.DateTimeField(index=True)
        interval = pw.IntegerField()
        last_poll_at = pw.DateTimeField(null=True)
        approved_by = pw.ForeignKeyField(User, null=True, on_delete="CASCADE")
        api_token = pw.ForeignKeyField(ApiToken, null=True, on_delete="SET NULL")
        denied = pw.BooleanField(default=False)
        consumed = pw.BooleanField(default=False)

    db.create_tables([DeviceAuthorization])


def _v8_ephemeral_tunnels(db: pw.Database) -> None:
    """Ephemeral tunnels (intunnel http without a name): marked, with the time their agent left."""
    from playhouse.migrate import migrate as run
    m = schema_migrator(db)
    # disconnected_at: when the last agent session ended (NULL: never connected, or connected now);
    # the reaper deletes an ephemeral tunnel whose agent has been gone for relay_ephemeral_grace.
    # A default in the database too: an older release still running beside this one (a rolling
    # upgrade of several relays and web apps) inserts tunnels without the column.
    run(m.add_column("tunnel", "ephemeral", pw.BooleanField(default=False, constraints=[pw.SQL("DEFAULT FALSE")])),
        m.add_column("tunnel", "disconnected_at", pw.DateTimeField(null=True)))


def _v9_traffic_view(db: pw.Database) -> None:
    """The dashboard's traffic view: recent requests per tunnel (metadata only), on unless turned off."""
    from playhouse.migrate import migrate as run

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Tunnel(Base):  # only the key the entries refer to
        class Meta:
            table_name = "tunnel"

    class TrafficEntry(Base):
        tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE")
        at_ms = pw.BigIntegerField()
        method = pw.TextField()
        path = pw.TextField()
        status = pw.IntegerField()
        duration_ms = pw.IntegerField()
        request_bytes = pw.BigIntegerField()
        response_bytes = pw.BigIntegerField()
        visitor = pw.TextField()

    # A default in the database too (an older release beside this one inserts tunnels without it).
    run(schema_migrator(db).add_column("tunnel", "traffic_view",
                                       pw.BooleanField(default=True, constraints=[pw.SQL("DEFAULT TRUE")])))
    db.create_tables([TrafficEntry])
    run(schema_migrator(db).add_index("traffic_entry", ("tunnel_id", "id"), False))


def _v10_tcp_tunnels(db: pw.Database) -> None:
    """TCP tunnels: a tunnel's protocol (http, tcp) and a TCP tunnel's public port, unique across tunnels."""
    from playhouse.migrate import migrate as run
    m = schema_migrator(db)
    # A default in the database too (an older release beside this one inserts tunnels without it).
    # remote_port: NULL for HTTP tunnels; a UNIQUE index allows many NULLs on SQLite and PostgreSQL.
    run(m.add_column("tunnel", "protocol", pw.CharField(max_length=8, default="http",
                                                         constraints=[pw.SQL("DEFAULT 'http'")])),
        m.add_column("tunnel", "remote_port", pw.IntegerField(null=True)))
    run(schema_migrator(db).add_index("tunnel", ("remote_port",), True))


def _v11_custom_domains(db: pw.Database) -> None:
    """Custom domains: a tunnel's own hostnames and the state of their certificates (intunnel.certs)."""

    class Base(pw.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Tunnel(Base):  # only the key the hostnames refer to
        class Meta:
            table_name = "tunnel"

    class CustomDomain(Base):
        tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE", index=True)
        hostname = pw.CharField(max_length=253, unique=True)
        state = pw.CharField(max_length=16, default="pending-dns")
        reason = pw.TextField(default="")
        attempts = pw.IntegerField(default=0)
        next_attempt_at = pw.DateTimeField(null=True)
        not_after = pw.DateTimeField(null=True)
        checked_at = pw.DateTimeField(null=True)
        created_at = pw.DateTimeField()

    db.create_tables([CustomDomain])


# (version, migration); versions are 1, 2, 3... with no gaps.
MIGRATIONS: list[tuple[int, Callable[[pw.Database], None]]] = [
    (1, _v1_initial),
    (2, _v2_rate_limits),
    (3, _v3_routes),
    (4, _v4_tunnel_access),
    (5, _v5_member_access),
    (6, _v6_session_access),
    (7, _v7_device_authorizations),
    (8, _v8_ephemeral_tunnels),
    (9, _v9_traffic_view),
    (10, _v10_tcp_tunnels),
    (11, _v11_custom_domains),
]
LATEST = MIGRATIONS[-1][0]


class SchemaVersion(pw.Model):
    version = pw.IntegerField(primary_key=True)
    description = pw.CharField(max_length=200)
    applied_at = pw.DateTimeField()

    class Meta:
        table_name = "schema_version"


def current_version(db: pw.Database) -> int:
    with SchemaVersion.bind_ctx(db):
        if not SchemaVersion.table_exists():
            return 0
        return SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar() or 0


def _step_transaction(db: pw.Database):
    """A transaction that only one migrating process holds at a time.

    SQLite: BEGIN IMMEDIATE takes the write lock.  PostgreSQL (transactional
    DDL): an advisory lock released at commit.
    """
    if isinstance(db, pw.SqliteDatabase):
        return db.atomic(lock_type="IMMEDIATE")
    return _LockedTransaction(db)


class _LockedTransaction:
    def __init__(self, db: pw.Database):
        self.db = db
        self.txn = db.atomic()

    def __enter__(self):
        self.txn.__enter__()
        if isinstance(self.db, pw.PostgresqlDatabase):
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (PG_MIGRATION_LOCK,))
        return self

    def __exit__(self, *exc):
        return self.txn.__exit__(*exc)


def migrate(db: pw.Database, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: latest); return those applied."""
    target = LATEST if target is None else target
    applied = []
    with SchemaVersion.bind_ctx(db):
        with _step_transaction(db):
            db.create_tables([SchemaVersion])
        for version, step in MIGRATIONS:
            if version > target:
                break
            # One transaction per step; the version check inside it makes two
            # processes starting at once apply each step exactly once.
            with _step_transaction(db):
                if SchemaVersion.get_or_none(SchemaVersion.version == version):
                    continue
                step(db)
                SchemaVersion.create(version=version, description=(step.__doc__ or step.__name__).strip(),
                                     applied_at=utcnow())
                applied.append(version)
    return applied
