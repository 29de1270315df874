"""Telling the relay at once that a live agent session may have to be cut (PostgreSQL).

On PostgreSQL every change that can end an agent's right to its tunnel sends a
``NOTIFY`` on ``CHANNEL`` in the same transaction as the change, so the relay
(which ``LISTEN``s, see ``relay/revocations``) hears of it exactly when it
commits, and never of a change rolled back.  On SQLite these calls do nothing:
the relay polls (``relay_revocation_poll``).

Payloads are small and carry no secret, only what to re-check:

    t:<tunnel id>   the tunnel's token was regenerated, it was deleted, a
                    disconnect was requested (``intunnel-admin tunnel disconnect``),
                    or its access policy changed (the relay reloads it)
    u:<user id>     the account was disabled or deleted (all of its tunnels), or
                    some of its login sessions ended (logout, logout everywhere, a
                    password change): the members-only access they gave ends too

The relay re-reads the rows it names; a notification is a hint, never the
truth, so a duplicate or a spurious one costs one query.  Every writer goes
through ``tunnels`` and ``accounts`` (the web app, the dashboard and
``intunnel-admin`` alike), which call these functions.
"""

from __future__ import annotations

import peewee as pw

from .models import database

CHANNEL = "intunnel_changes"
TUNNEL, USER = "t", "u"


def _notify(kind: str, ident: int) -> None:
    db = database.obj
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, f"{kind}:{int(ident)}"))


def tunnel_changed(tunnel_id: int) -> None:
    """Call inside the transaction that regenerates, deletes, disconnects a tunnel or changes its policy."""
    _notify(TUNNEL, tunnel_id)


def user_changed(user_id: int) -> None:
    """Call inside the transaction that disables or deletes an account or ends its sessions."""
    _notify(USER, user_id)


def parse(payload: str) -> tuple[str, int] | None:
    """(kind, id) of a payload; None for anything else (the relay then re-checks everything)."""
    kind, _, ident = (payload or "").partition(":")
    if kind in (TUNNEL, USER) and ident.isascii() and ident.isdigit() and len(ident) <= 18:
        return kind, int(ident)
    return None
