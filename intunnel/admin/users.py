"""`intunnel-admin user ...`: create, list, show, set-password, disable, enable,
delete, promote, demote."""

from __future__ import annotations

import peewee as pw

from .. import accounts
from ..models import ApiToken, Tunnel, User
from ..timeutil import iso
from .common import Context, find_user

HEADERS = ("ID", "USERNAME", "EMAIL", "ADMIN", "DISABLED", "TUNNELS", "CREATED")


def user_dict(user: User, tunnels: int) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "tunnels": tunnels,
        "created_at": iso(user.created_at),
    }


def user_row(d: dict) -> list:
    return [d["id"], d["username"], d["email"], d["is_admin"], d["disabled"], d["tunnels"], d["created_at"]]


def tunnel_count(user: User) -> int:
    return Tunnel.select().where(Tunnel.owner == user).count()


def cmd_create(ctx: Context, args) -> int:
    password = ctx.read_new_password(args.password_stdin)
    ctx.open_db(create=True)
    user = accounts.create_user(args.email, args.username, password, is_admin=args.admin)
    role = "admin" if user.is_admin else "user"
    ctx.done(f"created {role} '{user.username}' <{user.email}> (id {user.id})", {"user": user_dict(user, 0)})
    return 0


def cmd_list(ctx: Context, args) -> int:
    ctx.open_db()
    count = pw.fn.COUNT(Tunnel.id)
    query = (User.select(User, count.alias("n_tunnels"))
             .join(Tunnel, pw.JOIN.LEFT_OUTER, on=(Tunnel.owner == User.id))
             .group_by(User.id).order_by(User.id))
    if args.admins:
        query = query.where(User.is_admin)
    if args.disabled:
        query = query.where(User.disabled)
    items = [user_dict(u, u.n_tunnels) for u in query]
    ctx.emit_list("users", items, HEADERS, [user_row(d) for d in items])
    return 0


def cmd_show(ctx: Context, args) -> int:
    ctx.open_db()
    user = find_user(args.user)
    d = user_dict(user, tunnel_count(user))
    d["api_tokens"] = ApiToken.select().where(ApiToken.user == user).count()
    ctx.emit_object("user", d, [
        ("id", d["id"]), ("username", d["username"]), ("email", d["email"]),
        ("admin", d["is_admin"]), ("disabled", d["disabled"]), ("tunnels", d["tunnels"]),
        ("api tokens", d["api_tokens"]), ("created", d["created_at"]),
    ])
    return 0


def cmd_set_password(ctx: Context, args) -> int:
    ctx.open_db()
    user = find_user(args.user)  # before prompting: no point asking for an unknown user
    password = ctx.read_new_password(args.password_stdin)
    accounts.set_password(user, password)
    ctx.done(f"password of '{user.username}' changed")
    return 0


def _toggle(ctx: Context, args, change, message: str) -> int:
    ctx.open_db()
    user = find_user(args.user)
    change(user)
    ctx.done(message.format(user=user.username), {"user": user_dict(user, tunnel_count(user))})
    return 0


def cmd_disable(ctx, args):
    return _toggle(ctx, args, lambda u: accounts.set_disabled(u, True),
                   "disabled '{user}': sessions ended, live tunnels cut, API tokens refused")


def cmd_enable(ctx, args):
    return _toggle(ctx, args, lambda u: accounts.set_disabled(u, False), "enabled '{user}'")


def cmd_promote(ctx, args):
    return _toggle(ctx, args, lambda u: accounts.set_admin(u, True), "'{user}' is now an admin")


def cmd_demote(ctx, args):
    return _toggle(ctx, args, lambda u: accounts.set_admin(u, False), "'{user}' is no longer an admin")


def cmd_delete(ctx: Context, args) -> int:
    ctx.open_db()
    user = find_user(args.user)
    n = tunnel_count(user)
    ctx.confirm(f"Delete user '{user.username}' <{user.email}> and their {n} tunnel(s)?", args.yes)
    deleted = accounts.delete_user(user)
    ctx.done(f"deleted user '{user.username}' and {deleted} tunnel(s)",
             {"deleted": {"user": user.username, "tunnels": deleted}})
    return 0


def register(groups, common) -> None:
    p = groups.add_parser("user", help="manage user accounts", description="Manage user accounts.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = sub.add_parser("create", parents=[common], help="create a user (password from a prompt or stdin)")
    c.add_argument("--email", required=True)
    c.add_argument("--username", required=True)
    c.add_argument("--admin", action="store_true", help="make the user an admin")
    c.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    c.set_defaults(func=cmd_create)

    ls = sub.add_parser("list", parents=[common], help="list users")
    ls.add_argument("--admins", action="store_true", help="only admins")
    ls.add_argument("--disabled", action="store_true", help="only disabled accounts")
    ls.set_defaults(func=cmd_list)

    for name, func, text in (
        ("show", cmd_show, "show one user"),
        ("disable", cmd_disable, "disable an account (ends its sessions, cuts its tunnels)"),
        ("enable", cmd_enable, "re-enable an account"),
        ("promote", cmd_promote, "make a user an admin"),
        ("demote", cmd_demote, "take admin rights away"),
    ):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("user", metavar="USER", help="email, username or id")
        s.set_defaults(func=func)

    sp = sub.add_parser("set-password", parents=[common], help="set a user's password")
    sp.add_argument("user", metavar="USER", help="email, username or id")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    sp.set_defaults(func=cmd_set_password)

    d = sub.add_parser("delete", parents=[common], help="delete a user and their tunnels and tokens")
    d.add_argument("user", metavar="USER", help="email, username or id")
    d.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    d.set_defaults(func=cmd_delete)
