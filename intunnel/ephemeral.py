"""Ephemeral tunnels: the ones `intunnel http PORT` makes when it has a login and no tunnel name.

Their client deletes them when it stops (Ctrl-C, SIGTERM).  A client that was killed can't,
so every relay runs ``reap`` now and then: one conditional DELETE of the ephemeral tunnels with
no agent connected whose agent left (``disconnected_at``, written by the relay that held it; or
``created_at`` when one never connected) more than ``relay_ephemeral_grace`` seconds ago.
The condition is the whole decision, so any number of relays sharing one database may run it
at once: a row is deleted once, by whichever DELETE gets it, and a tunnel whose agent is
connected (``status``, and on PostgreSQL a valid route lease) is never touched.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import peewee as pw

from .changes import tunnel_changed
from .models import Route, Tunnel, database
from .timeutil import utcnow


def reap_condition(cutoff, routes: bool):
    """Ephemeral, no agent connected, gone (or never come) since before ``cutoff``."""
    condition = (Tunnel.ephemeral & (Tunnel.status != "active")
                 & (pw.fn.COALESCE(Tunnel.disconnected_at, Tunnel.created_at) < cutoff))
    if routes:  # several relays (PostgreSQL): another relay's live lease means an agent is there
        from .relay.store import DB_NOW  # (the store imports this module)
        held = Route.select(Route.tunnel).where((Route.tunnel == Tunnel.id) & (Route.lease_expires_at > DB_NOW))
        condition &= ~pw.fn.EXISTS(held)
    return condition


def reap(grace: float, routes: bool, now: datetime | None = None) -> int:
    """Delete the abandoned ephemeral tunnels; returns how many (their routes, tickets and
    grants go with them: ON DELETE CASCADE).  ``routes`` (PostgreSQL): on the database's clock."""
    if routes and now is None:  # the clock the relays wrote disconnected_at with
        from .relay.store import _db_later
        cutoff = _db_later(-grace)
    else:
        cutoff = (now or utcnow()) - timedelta(seconds=grace)
    with database.atomic():
        query = Tunnel.delete().where(reap_condition(cutoff, routes))
        if not isinstance(database.obj, pw.PostgresqlDatabase):
            return query.execute()
        gone = [t for (t,) in query.returning(Tunnel.id).tuples().execute()]
        for tunnel_id in gone:  # a relay in the middle of an agent's handshake re-checks it
            tunnel_changed(tunnel_id)
        return len(gone)
