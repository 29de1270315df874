"""The data: users, tunnels, login sessions and personal API tokens.

The database is declared late (a proxy bound by ``open_database``) so the same
models serve the web app, the relay, the admin CLI and tests on a fresh
database, SQLite or PostgreSQL (``database_url``, see ``dburl``).
Keep every query in peewee: no SQLite-only SQL outside ``migrations``.
"""

from __future__ import annotations

import logging
import peewee as pw

from . import dburl
from .logsafe import QueryParametersWithheld
from .timeutil import utcnow

# peewee's DEBUG query log would print every query's parameters (tokens, hashes):
# every process that uses the models (web, relay, admin) logs the SQL only.
logging.getLogger("peewee").addFilter(QueryParametersWithheld())

database = pw.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    # Web app and relay share the file: wait for a writer instead of failing.
    "busy_timeout": 5000,
    "synchronous": "normal",
}


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class User(BaseModel):
    username = pw.CharField(max_length=64, unique=True)
    email = pw.CharField(max_length=254, unique=True)
    password_hash = pw.CharField(max_length=255)
    is_admin = pw.BooleanField(default=False)
    disabled = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)


class Tunnel(BaseModel):
    owner = pw.ForeignKeyField(User, backref="tunnels", on_delete="CASCADE", index=True)
    name = pw.CharField(max_length=100)
    subdomain = pw.CharField(max_length=63, unique=True)
    local_port = pw.IntegerField()
    token = pw.CharField(max_length=128, unique=True)
    # Written by the relay that holds the agent session.
    status = pw.CharField(max_length=16, default="inactive")
    created_at = pw.DateTimeField(default=utcnow)
    last_connected = pw.DateTimeField(null=True)
    # Set by `intunnel-admin tunnel disconnect`; the relay cuts sessions older than it.
    disconnect_requested_at = pw.DateTimeField(null=True)
    # Who may visit (intunnel.access): JSON with password hashes, never shown; NULL = public.
    access = pw.TextField(null=True)
    # The live agent session's own access rules (intunnel.session_access.view, JSON: user names
    # and CIDRs, never a password), written by the relay holding it; NULL: none, or inactive.
    session_access = pw.TextField(null=True)
    # `intunnel http` without a name: deleted by the client when it stops, or by the relay's reaper
    # once its agent has been gone for relay_ephemeral_grace (intunnel.ephemeral).
    ephemeral = pw.BooleanField(default=False)
    # When the last agent session ended (written by the relay); NULL: never connected, or connected.
    disconnected_at = pw.DateTimeField(null=True)
    # The dashboard's traffic view (intunnel.traffic): the relays keep its recent requests while on.
    traffic_view = pw.BooleanField(default=True)
    # "http" (visitors by Host) or "tcp" (raw bytes on a public port of its own: intunnel.tcpports).
    protocol = pw.CharField(max_length=8, default="http")
    # A TCP tunnel's public port, kept until the tunnel is deleted; NULL for HTTP tunnels.
    remote_port = pw.IntegerField(null=True, unique=True)


class Session(BaseModel):
    """A web login.  Only the SHA-256 of the cookie value is stored."""
    id_hash = pw.CharField(max_length=64, primary_key=True)
    user = pw.ForeignKeyField(User, backref="sessions", on_delete="CASCADE", index=True)
    csrf_token = pw.CharField(max_length=64)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(index=True)


class ApiToken(BaseModel):
    """A personal API token.  Only its SHA-256 is stored; ``prefix`` identifies it."""
    user = pw.ForeignKeyField(User, backref="api_tokens", on_delete="CASCADE", index=True)
    name = pw.CharField(max_length=100)
    prefix = pw.CharField(max_length=16)
    token_hash = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    last_used_at = pw.DateTimeField(null=True)


class AccessTicket(BaseModel):
    """A one-time pass from the web app's login to a members-only tunnel's host (intunnel.memberpass).

    Only the SHA-256 of the ticket is stored; it names the login session it came from, the
    tunnel it is good for, and where on that tunnel the visitor was going.
    """
    token_hash = pw.CharField(max_length=64, primary_key=True)
    session = pw.ForeignKeyField(Session, on_delete="CASCADE", index=True)
    tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE", index=True)
    target = pw.CharField(max_length=2048)  # path and query on the tunnel's host
    expires_at = pw.DateTimeField(index=True)


class AccessGrant(BaseModel):
    """A visitor's access cookie for one members-only tunnel (its SHA-256); it lives no longer
    than the login session it came from: logging out, out everywhere or being disabled ends it."""
    token_hash = pw.CharField(max_length=64, primary_key=True)
    session = pw.ForeignKeyField(Session, on_delete="CASCADE", index=True)
    tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE", index=True)
    user = pw.ForeignKeyField(User, on_delete="CASCADE", index=True)
    expires_at = pw.DateTimeField(index=True)


class DeviceAuthorization(BaseModel):
    """A pending ``intunnel login`` (device authorization, intunnel.device_auth / deviceflow).

    Only the SHA-256 of the device code is stored; the user code is the short one a person
    types on /device.  Approval creates the API token (named after the machine); its secret is
    made only when the client redeems the device code, once (``consumed``).
    """
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


class Route(BaseModel):
    """Which relay holds a tunnel's agent session (PostgreSQL, several relays; see relay/routes).

    Valid while ``lease_expires_at`` (the database's clock, UTC) is ahead: the holding relay
    renews it every second; a relay that died stops renewing, and the tunnel is free again.
    """
    tunnel = pw.ForeignKeyField(Tunnel, primary_key=True, on_delete="CASCADE")
    relay_id = pw.CharField(max_length=64, index=True)
    session_id = pw.CharField(max_length=32)  # a random name of the session, not its data-connection secret
    claimed_at = pw.DateTimeField()
    lease_expires_at = pw.DateTimeField()


class RelayNode(BaseModel):
    """One relay sharing the database: its last heartbeat and how many agents it holds."""
    relay_id = pw.CharField(max_length=64, primary_key=True)
    address = pw.CharField(max_length=100)
    started_at = pw.DateTimeField()
    last_heartbeat = pw.DateTimeField()
    agents = pw.IntegerField(default=0)

    class Meta:
        table_name = "relay"


class TrafficEntry(BaseModel):
    """One request through a tunnel, as the relay that served it saw it (intunnel.traffic):
    metadata only, never a header, a body or a query string.  At most traffic_rows_per_tunnel
    rows per tunnel (the relays prune as they write)."""
    tunnel = pw.ForeignKeyField(Tunnel, on_delete="CASCADE")
    at_ms = pw.BigIntegerField()          # when its head arrived, ms since the epoch (UTC)
    method = pw.TextField()
    path = pw.TextField()                 # without the query string
    status = pw.IntegerField()
    duration_ms = pw.IntegerField()
    request_bytes = pw.BigIntegerField()  # as forwarded to the app (head included)
    response_bytes = pw.BigIntegerField()
    visitor = pw.TextField()

    class Meta:
        table_name = "traffic_entry"
        indexes = ((("tunnel", "id"), False),)


class CustomDomain(BaseModel):
    """A hostname of the owner's own (``app.customer.com``) served by an HTTP tunnel (intunnel.certs).

    The web app records it (``pending-dns``); the reconciler (``intunnel-admin certs reconcile``)
    checks its DNS, obtains its certificate and writes its nginx vhost, and moves ``state``
    through pending-dns, issuing, active and failed (``reason`` says why; ``certs.plan``).
    The relay routes it to its tunnel only while ``active``."""
    tunnel = pw.ForeignKeyField(Tunnel, backref="custom_domains", on_delete="CASCADE", index=True)
    hostname = pw.CharField(max_length=253, unique=True)   # certs.names.normalize's form
    state = pw.CharField(max_length=16, default="pending-dns")
    reason = pw.TextField(default="")
    attempts = pw.IntegerField(default=0)                  # consecutive failures (backoff)
    next_attempt_at = pw.DateTimeField(null=True)          # NULL: at the next run
    not_after = pw.DateTimeField(null=True)                # the installed certificate's expiry
    checked_at = pw.DateTimeField(null=True)               # the reconciler's last look
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        table_name = "custom_domain"


MODELS = (User, Tunnel, Session, ApiToken, Route, RelayNode, AccessTicket, AccessGrant, DeviceAuthorization,
          TrafficEntry, CustomDomain)


def write_transaction():
    """A transaction that reads and then writes (a limit checked, then the row made).

    On SQLite it takes the write lock at BEGIN (BEGIN IMMEDIATE): a deferred transaction that has
    read cannot upgrade to writing once another connection (the relay, another process) has
    committed since its read, and SQLite fails it at once with "database is locked", without
    busy_timeout's wait.  Taken at BEGIN, the lock is waited for like any other.  Only for
    transactions whose every statement goes through the models' ``database`` (one connection):
    a write on another connection of the same thread would wait for this one's lock.
    """
    if isinstance(database.obj, pw.SqliteDatabase):
        return database.atomic(lock_type="IMMEDIATE")
    return database.atomic()


def connect_settings(settings) -> pw.Database:
    """The configured database, unconnected and not bound to the models (checks, doctor)."""
    return dburl.make_database(settings.db_url, settings.database_password_file, SQLITE_PRAGMAS)


def open_database(settings, migrate: bool = True) -> pw.Database:
    """Bind the models to the configured database (and bring its schema up to date).

    The one way the web app, the relay and ``intunnel-admin`` open it.
    """
    db = connect_settings(settings)
    database.initialize(db)
    if migrate:
        from .migrations import migrate as run_migrations
        with db.connection_context():
            run_migrations(db)
    return db
