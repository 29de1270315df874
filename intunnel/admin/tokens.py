"""`intunnel-admin token ...`: list and revoke personal API tokens."""

from __future__ import annotations

from ..models import ApiToken, User
from ..timeutil import iso
from .common import Context, find_token, find_user

HEADERS = ("ID", "USER", "NAME", "PREFIX", "CREATED", "LAST USED")


def token_dict(token: ApiToken) -> dict:
    return {
        "id": token.id,
        "user": token.user.username,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
    }


def cmd_list(ctx: Context, args) -> int:
    ctx.open_db()
    query = ApiToken.select(ApiToken, User).join(User).order_by(ApiToken.id)
    if args.user:
        query = query.where(ApiToken.user == find_user(args.user))
    items = [token_dict(t) for t in query]
    rows = [[d["id"], d["user"], d["name"], d["prefix"], d["created_at"], d["last_used_at"]] for d in items]
    ctx.emit_list("tokens", items, HEADERS, rows)
    return 0


def cmd_revoke(ctx: Context, args) -> int:
    ctx.open_db()
    token = find_token(args.token)
    d = token_dict(token)
    token.delete_instance()  # only the hash was stored: the token is now useless
    ctx.done(f"revoked API token {d['prefix']} '{d['name']}' of '{d['user']}'", {"revoked": d})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("token", help="manage personal API tokens", description="Manage personal API tokens.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[common], help="list API tokens (never the secrets)")
    ls.add_argument("--user", metavar="USER", help="only this user's (email, username or id)")
    ls.set_defaults(func=cmd_list)
    r = sub.add_parser("revoke", parents=[common], help="revoke an API token")
    r.add_argument("token", metavar="TOKEN", help="id or prefix")
    r.set_defaults(func=cmd_revoke)
