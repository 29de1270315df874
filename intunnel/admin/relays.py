"""`intunnel-admin relay list|forget`: the relays sharing the database, and which holds a tunnel.

On PostgreSQL each relay keeps a ``relay`` row (its last heartbeat, every second)
and a ``route`` row per tunnel it holds (relay/routes).  A relay whose heartbeat
is older than ``relay_route_lease`` is marked stale: it died or lost the
database, and its leases have lapsed or soon will.  Times are compared on the
database's clock, the one the relays write with.  On SQLite (one host) no
routes are recorded: the one relay holds every active tunnel.

A relay that is gone for good (its host retired) stays listed as stale, and if every
relay died at once nobody is left to expire the leases of its routes: ``relay forget``
deletes a stale relay's row and routes, and its tunnels are inactive until an agent
connects again.
"""

from __future__ import annotations

from datetime import datetime

import peewee as pw

from .. import changes
from ..models import RelayNode, Route, Tunnel
from ..settings import relay_identity
from ..timeutil import iso
from .common import AdminError, Context

HEADERS = ("RELAY", "ADDRESS", "STATE", "LAST HEARTBEAT", "AGO", "AGENTS", "STARTED")


def routes_recorded(db) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def db_now(db) -> datetime:
    return db.execute_sql("SELECT now() AT TIME ZONE 'UTC'").fetchone()[0]


def relays(db, lease: float) -> list[dict]:
    """Every relay row with its state (live/stale) and the tunnels it holds under a valid lease."""
    now = db_now(db)
    held = dict(Route.select(Route.relay_id, pw.fn.COUNT(Route.tunnel))
                .where(Route.lease_expires_at > now).group_by(Route.relay_id).tuples())
    out = []
    for r in RelayNode.select().order_by(RelayNode.relay_id):
        ago = max(0.0, (now - r.last_heartbeat).total_seconds())
        out.append({"relay_id": r.relay_id, "address": r.address,
                    "state": "stale" if ago > lease else "live",
                    "last_heartbeat": iso(r.last_heartbeat), "seconds_since_heartbeat": round(ago, 1),
                    "agents": held.get(r.relay_id, 0), "agents_reported": r.agents,
                    "started_at": iso(r.started_at)})
    return out


def holder(db, settings, tunnel) -> dict | None:
    """Which relay holds ``tunnel`` now: {"relay_id", "lease_expires_at"} or None."""
    if not routes_recorded(db):
        if tunnel.status != "active":
            return None
        return {"relay_id": relay_identity(settings), "lease_expires_at": None}
    row = (Route.select(Route.relay_id, Route.lease_expires_at)
           .where((Route.tunnel == tunnel.id) & (Route.lease_expires_at > db_now(db))).tuples().first())
    return row and {"relay_id": row[0], "lease_expires_at": iso(row[1])}


def cmd_list(ctx: Context, args) -> int:
    db = ctx.open_db()
    if not routes_recorded(db):
        own = relay_identity(ctx.settings)
        if ctx.json:
            ctx.emit_json({"relays": [], "routes_recorded": False, "relay_id": own})
        else:
            ctx.out(f"single host (SQLite): routes are not recorded; this host's relay is {own}")
        return 0
    items = relays(db, ctx.settings.relay_route_lease)
    if ctx.json:
        ctx.emit_json({"relays": items, "routes_recorded": True})
        return 0
    rows = [[d["relay_id"], d["address"], d["state"], d["last_heartbeat"], f"{d['seconds_since_heartbeat']:g} s",
             d["agents"], d["started_at"]] for d in items]
    ctx.out(format_or_none(rows))
    return 0


def cmd_forget(ctx: Context, args) -> int:
    db = ctx.open_db()
    if not routes_recorded(db):
        raise AdminError("single host (SQLite): relays are not recorded, there is nothing to forget")
    found = {d["relay_id"]: d for d in relays(db, ctx.settings.relay_route_lease)}.get(args.relay_id)
    if found is None:
        raise AdminError(f"no relay {args.relay_id!r} is registered (see intunnel-admin relay list)")
    if found["state"] == "live":
        raise AdminError(f"relay {args.relay_id} is live (heartbeat {found['seconds_since_heartbeat']:g} s ago): "
                         "stop it first; a relay that stops cleanly removes itself")
    with db.atomic():
        held = [t for (t,) in Route.select(Route.tunnel).where(Route.relay_id == args.relay_id).tuples()]
        # Lock order as the relays take it (relay/store.py): the tunnel rows first, then routes.
        list(Tunnel.select(Tunnel.id).where(Tunnel.id.in_(held)).order_by(Tunnel.id).for_update().tuples())
        Route.delete().where(Route.relay_id == args.relay_id).execute()
        if held:
            Tunnel.update(status="inactive").where(Tunnel.id.in_(held)).execute()
        RelayNode.delete().where(RelayNode.relay_id == args.relay_id).execute()
        for tunnel_id in held:
            changes.tunnel_changed(tunnel_id)   # the other relays drop what they cached of its routes
    ctx.done(f"relay {args.relay_id} forgotten: {len(held)} route(s) deleted, those tunnels are inactive "
             "until their agents connect again", {"relay_id": args.relay_id, "routes_deleted": len(held)})
    return 0


def format_or_none(rows) -> str:
    from .table import format_table
    if not rows:
        return "no relay has registered (is intunnel-relay running on this database?)"
    return format_table(HEADERS, rows)


def register(groups, common) -> None:
    p = groups.add_parser("relay", help="relays sharing the database",
                          description="The relays sharing this database (PostgreSQL): heartbeats, agents held.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[common], help="list relays, their last heartbeat and agents held "
                        "(stale: no heartbeat within relay_route_lease)")
    ls.set_defaults(func=cmd_list)
    forget = sub.add_parser("forget", parents=[common], help="delete a stale relay's row and routes (its "
                            "tunnels become inactive); refused while the relay is live")
    forget.add_argument("relay_id", metavar="RELAY_ID")
    forget.set_defaults(func=cmd_forget)
