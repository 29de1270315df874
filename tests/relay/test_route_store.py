"""The relay store's route bookkeeping against a real PostgreSQL database, two relays' stores
side by side (no sockets): the cases the process tests can't time — a release racing a
takeover, a lease lapsing while its relay lives on, a lease taken by another relay, a
route whose session is gone.  On SQLite the store records nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from intunnel.models import RelayNode, Route, Tunnel
from intunnel.relay.store import LiveSession, Store
from intunnel.wire import protocol as p
from tests.support.tunnel import make_tunnel


def stores(settings, *ids):
    out = []
    for relay_id in ids:
        store = Store(settings)
        store._open()
        store._register(relay_id, "127.0.0.1:1")
        out.append(store)
    return out


def live(tunnel, session_id):
    return LiveSession(tunnel.id, tunnel.token, dt.datetime(2026, 1, 1), session_id, routed=True)


def lapse(tunnel_id):
    Route.update(lease_expires_at=dt.datetime(2000, 1, 1)).where(Route.tunnel == tunnel_id).execute()


def status(tunnel_id):
    return Tunnel.get_by_id(tunnel_id).status


def test_newest_session_wins_and_the_loser_is_replaced(settings, db, db_backend):
    if db_backend != "postgresql":
        pytest.skip("routes are recorded on PostgreSQL only")
    tunnel = make_tunnel(settings)
    a, b = stores(settings, "relay-a", "relay-b")
    assert a._claim(tunnel.id, "sa") is None
    assert b._claim(tunnel.id, "sb") == "relay-a"
    (cut,) = a._revoked([live(tunnel, "sa")])
    assert cut[1].code == p.REVOKED_REPLACED and "relay relay-b" in cut[1].reason
    assert b._revoked([live(tunnel, "sb")]) == []
    # a session not yet routed is never judged by a route (its claim may still be on the way)
    assert a._revoked([LiveSession(tunnel.id, tunnel.token, dt.datetime(2026, 1, 1), "sa")]) == []
    # A's release of its replaced session leaves B's route and the tunnel active
    a._release(tunnel.id, "sa", mark_inactive=True)
    assert Route.get_by_id(tunnel.id).relay_id == "relay-b" and status(tunnel.id) == "active"
    b._release(tunnel.id, "sb", mark_inactive=True)
    assert Route.select().count() == 0 and status(tunnel.id) == "inactive"


def test_renewals_expire_lapsed_leases_retake_free_ones_and_report_lost_ones(settings, db, db_backend):
    if db_backend != "postgresql":
        pytest.skip("routes are recorded on PostgreSQL only")
    tunnel, other = make_tunnel(settings, "one"), make_tunnel(settings, "two")
    a, b = stores(settings, "relay-a", "relay-b")
    b._claim(tunnel.id, "sb")
    before = Route.get_by_id(tunnel.id).lease_expires_at
    assert b._renew({tunnel.id: "sb"}) == []
    assert Route.get_by_id(tunnel.id).lease_expires_at >= before
    assert RelayNode.get_by_id("relay-b").agents == 1

    lapse(tunnel.id)  # relay B stopped renewing (dead, or cut off from the database)
    assert a._renew({}) == []  # any other relay's tick frees it
    assert Route.select().count() == 0 and status(tunnel.id) == "inactive"
    assert b._renew({tunnel.id: "sb"}) == []  # B back: the tunnel was free, B takes it again
    assert Route.get_by_id(tunnel.id).relay_id == "relay-b" and status(tunnel.id) == "active"

    a._claim(tunnel.id, "sa")  # a newer session on A: B's tick reports the loss, takes nothing
    assert b._renew({tunnel.id: "sb"}) == [tunnel.id]
    assert Route.get_by_id(tunnel.id).relay_id == "relay-a"

    b._claim(other.id, "gone")  # a session that ended without its release
    assert b._renew({}) == []
    assert Route.get_or_none(Route.tunnel == other.id) is None and status(other.id) == "inactive"

    a._unregister()  # a clean stop
    assert Route.select().count() == 0 and RelayNode.get_or_none(RelayNode.relay_id == "relay-a") is None
    assert status(tunnel.id) == "inactive"


def test_sqlite_records_no_route(settings, db, db_backend):
    if db_backend != "sqlite":
        pytest.skip("SQLite behaviour")
    (store,) = stores(settings, "relay-a")
    assert store.routes is False
    assert store._holders([1]) == {}
    assert Route.select().count() == 0 and RelayNode.select().count() == 0
