"""`intunnel-admin tunnel ...`: list, show, create, delete, disconnect, access (any user's tunnels)."""

from __future__ import annotations

import time
from datetime import datetime

from .. import tunnels as rules
from ..models import Tunnel, User
from ..timeutil import iso
from .common import AdminError, Context, find_tunnel, find_user

HEADERS = ("ID", "OWNER", "NAME", "SUBDOMAIN", "PORT", "STATUS", "LAST CONNECTED")
POLL_INTERVAL = 0.1


def tunnel_dict(settings, tunnel: Tunnel, show_token: bool = False) -> dict:
    """The API's detail object plus the owner; the token only when asked for."""
    d = rules.detail(settings, tunnel)
    d["owner"] = tunnel.owner.username
    d["disconnect_requested_at"] = iso(tunnel.disconnect_requested_at)
    if not show_token:
        d.pop("token", None)
    return d


def cmd_list(ctx: Context, args) -> int:
    ctx.open_db()
    query = Tunnel.select(Tunnel, User).join(User).order_by(Tunnel.id)
    if args.user:
        query = query.where(Tunnel.owner == find_user(args.user))
    if args.status:
        query = query.where(Tunnel.status == args.status)
    items = [tunnel_dict(ctx.settings, t) for t in query]
    rows = [[d["id"], d["owner"], d["name"], d["subdomain"], d["local_port"], d["status"], d["last_connected"]]
            for d in items]
    ctx.emit_list("tunnels", items, HEADERS, rows)
    return 0


def cmd_show(ctx: Context, args) -> int:
    from .relays import holder
    db = ctx.open_db()
    tunnel = find_tunnel(args.tunnel)
    d = tunnel_dict(ctx.settings, tunnel, show_token=args.show_token)
    d["relay"] = holder(db, ctx.settings, tunnel)
    if d["relay"] is None:
        held = "none"
    elif d["relay"]["lease_expires_at"]:
        held = f"{d['relay']['relay_id']} (lease until {d['relay']['lease_expires_at']})"
    else:
        held = f"{d['relay']['relay_id']} (single host)"
    pairs = [("id", d["id"]), ("owner", d["owner"]), ("name", d["name"]), ("subdomain", d["subdomain"]),
             ("url", d["url"]), ("local port", d["local_port"]), ("status", d["status"]),
             ("relay", held), ("created", d["created_at"]), ("last connected", d["last_connected"]),
             access_pairs(d["access"])[0]]
    if args.show_token:
        pairs.append(("token", d["token"]))
    ctx.emit_object("tunnel", d, pairs)
    return 0


def cmd_create(ctx: Context, args) -> int:
    """A tunnel for a user, by the same rules as the API (a TCP tunnel reserves a port of relay_tcp_ports)."""
    ctx.open_db()
    owner = find_user(args.user)
    tunnel = rules.create(ctx.settings, owner, args.name, args.subdomain, args.local_port,
                          protocol=args.protocol, remote_port=args.remote_port)
    d = tunnel_dict(ctx.settings, tunnel, show_token=True)
    d["owner"] = owner.username
    ctx.done(f"tunnel '{tunnel.subdomain}' created for {owner.username}: {d['url']} -> local port "
             f"{tunnel.local_port}; the client runs: {d['command']}", {"tunnel": d})
    return 0


def cmd_delete(ctx: Context, args) -> int:
    ctx.open_db()
    tunnel = find_tunnel(args.tunnel)
    label = f"'{tunnel.subdomain}' ({tunnel.name}, owner {tunnel.owner.username})"
    ctx.confirm(f"Delete tunnel {label}?", args.yes)
    rules.delete_row(tunnel)  # the relay notices the row is gone and cuts the agent
    ctx.done(f"deleted tunnel {label}", {"deleted": {"id": tunnel.id, "subdomain": tunnel.subdomain}})
    return 0


def wait_for_cut(tunnel_id: int, requested_at: datetime, timeout: float) -> str:
    """Poll until the relay reacts: 'inactive', 'reconnected' (a new session began), or 'timeout'."""
    deadline = time.monotonic() + timeout
    while True:
        t = Tunnel.get_or_none(Tunnel.id == tunnel_id)
        if t is None or t.status != "active":
            return "inactive"
        if t.last_connected and t.last_connected > requested_at:
            return "reconnected"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(POLL_INTERVAL)


def cmd_disconnect(ctx: Context, args) -> int:
    ctx.open_db()
    tunnel = find_tunnel(args.tunnel)
    was = tunnel.status
    requested_at = rules.request_disconnect(tunnel)
    name = f"'{tunnel.subdomain}'"
    if was != "active":
        ctx.done(f"tunnel {name} was not connected; a session starting later is unaffected",
                 {"result": "not-connected"})
        return 0
    result = wait_for_cut(tunnel.id, requested_at, args.wait)
    if result == "timeout":
        raise AdminError(f"disconnect requested, but tunnel {name} is still active after {args.wait:g} s "
                         "(is the relay running? 'intunnel-admin doctor' checks)")
    message = {
        "inactive": f"tunnel {name} disconnected",
        "reconnected": f"tunnel {name} was disconnected and its client connected again "
                       "(regenerate the token or delete the tunnel to keep it out)",
    }[result]
    ctx.done(message, {"result": result})
    return 0


def access_pairs(view: dict) -> list[tuple[str, str]]:
    if view.get("error"):
        return [("access", f"unreadable: {view['error']} (every visitor is refused)")]
    none = "none"
    return [("access", "public" if view["public"] else "restricted"),
            ("basic auth users", ", ".join(view["basic_auth"]) or none),
            ("allowed addresses", ", ".join(view["ip_allow"]) or "any"),
            ("denied addresses", ", ".join(view["ip_deny"]) or none),
            ("members only", members_text(view.get("members"))),
            ("bypass paths", ", ".join(view.get("bypass_paths") or ()) or none)]


def members_text(members: dict | None) -> str:
    if members is None:
        return "off"
    if members["owner_only"]:
        return "the owner only"
    listed = members["users"] + [f"@{d}" for d in members["email_domains"]]
    return "the owner, " + ", ".join(listed) if listed else "any account"


def access_change(ctx: Context, args) -> dict | None:
    """The API's access object from the options (None: nothing to change, show it)."""
    if args.public:
        if args.basic_auth or args.allow_ip or args.deny_ip or args.no_basic_auth or args.basic_auth_stdin \
                or args.members or args.member or args.member_domain or args.no_members \
                or args.bypass_path is not None:
            raise AdminError("--public clears every rule: give it alone", 2)
        return {"public": True}
    data: dict = {}
    users = list(args.basic_auth or [])
    if args.basic_auth_stdin:  # user:password lines, so no password shows in the process list
        users += [line.rstrip("\r\n") for line in ctx.stdin if line.strip()]
    if users or args.no_basic_auth:
        # USER alone keeps USER's stored password; USER:PASSWORD sets it
        data["basic_auth"] = [u if ":" in u else {"username": u} for u in users]
    if args.allow_ip is not None:
        data["ip_allow"] = [c for c in args.allow_ip if c]
    if args.deny_ip is not None:
        data["ip_deny"] = [c for c in args.deny_ip if c]
    if args.bypass_path is not None:
        data["bypass_paths"] = [p for p in args.bypass_path if p]
    if args.no_members and (args.members or args.member or args.member_domain):
        raise AdminError("--no-members turns members only off: give no other --member option with it", 2)
    if args.no_members:
        data["members"] = False
    elif args.members == "owner":
        if args.member or args.member_domain:
            raise AdminError("--members owner admits the owner alone: no --member or --member-domain", 2)
        data["members"] = {"owner_only": True}
    elif args.members or args.member or args.member_domain:
        data["members"] = {"users": list(args.member or []), "email_domains": list(args.member_domain or [])}
    return data or None


def cmd_access(ctx: Context, args) -> int:
    ctx.open_db()
    tunnel = find_tunnel(args.tunnel)
    data = access_change(ctx, args)
    if data is not None:
        rules.set_access(ctx.settings, tunnel, data)  # the relays apply it to the next request
    view = rules.access_view(tunnel)
    if data is None:
        ctx.emit_object("access", view, access_pairs(view))
        return 0
    summary = "; ".join(f"{k}: {v}" for k, v in access_pairs(view))
    ctx.done(f"tunnel '{tunnel.subdomain}': {summary}", {"access": view})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("tunnel", help="manage tunnels", description="Manage every user's tunnels.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    ls = sub.add_parser("list", parents=[common], help="list tunnels")
    ls.add_argument("--user", metavar="USER", help="only this user's (email, username or id)")
    ls.add_argument("--status", choices=("active", "inactive"))
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("show", parents=[common], help="show one tunnel")
    s.add_argument("tunnel", metavar="TUNNEL", help="id or subdomain")
    s.add_argument("--show-token", action="store_true", help="include the tunnel's token")
    s.set_defaults(func=cmd_show)

    c = sub.add_parser("create", parents=[common], help="create a tunnel for a user (HTTP, or TCP with a public port)")
    c.add_argument("--user", required=True, metavar="USER", help="its owner (email, username or id)")
    c.add_argument("--name", required=True, help="its name")
    c.add_argument("--local-port", required=True, type=int, metavar="PORT", help="the port on the owner's machine")
    c.add_argument("--subdomain", help="its subdomain (required for HTTP; a TCP tunnel gets one if left out)")
    c.add_argument("--protocol", choices=rules.PROTOCOLS, default="http",
                   help="http (default) or tcp: raw TCP at a public port of relay_tcp_ports")
    c.add_argument("--remote-port", type=int, metavar="PORT",
                   help="TCP: this public port of relay_tcp_ports (default: the next free one)")
    c.set_defaults(func=cmd_create)

    d = sub.add_parser("delete", parents=[common], help="delete a tunnel (cuts its live session)")
    d.add_argument("tunnel", metavar="TUNNEL", help="id or subdomain")
    d.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    d.set_defaults(func=cmd_delete)

    dc = sub.add_parser("disconnect", parents=[common], help="cut the tunnel's live agent session")
    dc.add_argument("tunnel", metavar="TUNNEL", help="id or subdomain")
    dc.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                    help="how long to wait for the relay to cut it (default 5)")
    dc.set_defaults(func=cmd_disconnect)

    a = sub.add_parser("access", parents=[common], help="show or change who may visit a tunnel",
                       description="Show the tunnel's access policy, or change it: each option given "
                                   "replaces that rule, the others stay. Live visitors get the new policy "
                                   "on their next request.")
    a.add_argument("tunnel", metavar="TUNNEL", help="id or subdomain")
    a.add_argument("--basic-auth", action="append", metavar="USER[:PASSWORD]",
                   help="a basic-auth user (repeat for more; replaces the users); USER alone keeps "
                        "that user's password")
    a.add_argument("--basic-auth-stdin", action="store_true",
                   help="read USER:PASSWORD lines from standard input (keeps passwords out of ps)")
    a.add_argument("--no-basic-auth", action="store_true", help="remove every basic-auth user")
    a.add_argument("--allow-ip", action="append", metavar="CIDR",
                   help="only these addresses may visit (repeat; replaces the list; '' empties it)")
    a.add_argument("--deny-ip", action="append", metavar="CIDR",
                   help="these addresses may not visit (repeat; replaces the list; '' empties it)")
    a.add_argument("--members", choices=("any", "owner"),
                   help="members only: visitors log in to this InTunnel; any: every enabled account, "
                        "owner: the tunnel's owner alone")
    a.add_argument("--member", action="append", metavar="USER",
                   help="members only, for the owner and this user (repeat; replaces the list)")
    a.add_argument("--member-domain", action="append", metavar="DOMAIN",
                   help="members only, for accounts whose email is at DOMAIN (repeat; replaces the list)")
    a.add_argument("--no-members", action="store_true", help="turn members only off")
    a.add_argument("--bypass-path", action="append", metavar="PREFIX",
                   help="requests under this path prefix (such as /webhooks/stripe) skip the password and "
                        "members checks, never the IP rules (repeat; replaces the list; '' empties it)")
    a.add_argument("--public", action="store_true", help="clear every rule: anyone may visit")
    a.set_defaults(func=cmd_access)
