"""Members-only tunnels: from the web app's login to an access cookie on the tunnel's host.

The pattern of oauth2-proxy and Cloudflare Access, with the appliance's own accounts:

 1. An anonymous visitor of ``https://myapp.<domain>/path?q`` is sent by the relay to the
    web app's ``/access?to=<that URL>``, which asks them to log in first (``/login?next=``).
 2. Logged in, ``/access`` checks the tunnel is members-only and admits this account
    (``members``), then ``issue_ticket``: a random one-time ticket, valid ``access_ticket_ttl``
    seconds (60), bound to that tunnel, to this login session and to the path asked for, and
    sends the browser to ``https://myapp.<domain>/_intunnel/auth?ticket=T``.
 3. The relay answers that path itself (the app never sees it): ``redeem`` deletes the
    ticket (one use, even with several relays: one DELETE wins) and makes an access grant,
    whose random token becomes a host-only cookie of the tunnel's host, then redirects to
    the path the ticket names (never to a URL from the query: no open redirect).
 4. Each later request carries that cookie; the relay looks its grant up once (``grants``),
    remembers who it is for a while, and strips the cookie before the request goes on.

Tickets and grants are stored as SHA-256 hashes only.  A grant belongs to the login session
it came from (ON DELETE CASCADE): logging out, logging out everywhere, a password change
that ends other sessions, or disabling the account ends the visitor's access to every
tunnel, and the relays drop what they remembered on the ``u:<user id>`` notification
(PostgreSQL) or their next poll (SQLite).  A grant also expires on its own
(``access_grant_max_age``), never after its session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from .models import AccessGrant, AccessTicket, Session, User, database, write_transaction
from .members import Identity
from .security import sha256_hex
from .timeutil import utcnow

AUTH_PATH = "/_intunnel/auth"   # answered by the relay on every members-only tunnel's host
COOKIE = "intunnel_access"      # ``__Host-intunnel_access`` under https (host-only, Secure)
MAX_TARGET = 2048               # the longest path and query a ticket remembers
TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Grant:
    tunnel_id: int
    who: Identity
    expires_at: datetime        # naive UTC


def cookie_name(secure: bool) -> str:
    return ("__Host-" + COOKIE) if secure else COOKIE


def issue_ticket(session: Session, tunnel_id: int, target: str, ttl: int) -> str:
    """A one-time ticket for ``session``'s user to enter tunnel ``tunnel_id`` at ``target``."""
    now = utcnow()
    AccessTicket.delete().where(AccessTicket.expires_at <= now).execute()  # housekeeping
    ticket = secrets.token_urlsafe(TOKEN_BYTES)
    AccessTicket.create(token_hash=sha256_hex(ticket), session=session.id_hash, tunnel=tunnel_id,
                        target=target[:MAX_TARGET], expires_at=now + timedelta(seconds=ttl))
    return ticket


def redeem(ticket: str, tunnel_id: int, max_age: int) -> tuple[str, str, int, Grant] | None:
    """(access token, target path, cookie max-age in seconds, the grant) for a live ticket of this
    tunnel; None for anything else (unknown, used, expired, another tunnel's, its session gone)."""
    if not ticket or len(ticket) > 128:
        return None
    digest, now = sha256_hex(ticket), utcnow()
    with write_transaction():
        row = AccessTicket.get_or_none(AccessTicket.token_hash == digest)
        if row is None:
            return None
        # The DELETE that removes the row is the one redemption: a second one, here or on
        # another relay, deletes nothing.
        if AccessTicket.delete().where(AccessTicket.token_hash == digest).execute() != 1:
            return None
        if row.tunnel_id != tunnel_id or row.expires_at <= now:
            return None
        session = (Session.select(Session, User).join(User)
                   .where(Session.id_hash == row.session_id, Session.expires_at > now, ~User.disabled)
                   .first())
        if session is None:
            return None
        expires = min(session.expires_at, now + timedelta(seconds=max_age))
        token = secrets.token_urlsafe(TOKEN_BYTES)
        AccessGrant.delete().where(AccessGrant.expires_at <= now).execute()  # housekeeping
        AccessGrant.create(token_hash=sha256_hex(token), session=session.id_hash, tunnel=tunnel_id,
                           user=session.user_id, expires_at=expires)
    user = session.user
    return (token, row.target, max(1, int((expires - now).total_seconds())),
            Grant(tunnel_id, Identity(user.id, user.username, user.email), expires))


def grants(token_hashes: list[str]) -> dict[str, Grant]:
    """The live grants among ``token_hashes``: not expired, session alive, account enabled."""
    if not token_hashes:
        return {}
    now = utcnow()
    rows = (AccessGrant.select(AccessGrant.token_hash, AccessGrant.tunnel, AccessGrant.expires_at,
                               User.id, User.username, User.email)
            .join(User).switch(AccessGrant).join(Session)
            .where(AccessGrant.token_hash.in_(token_hashes), AccessGrant.expires_at > now,
                   Session.expires_at > now, ~User.disabled)
            .tuples())
    return {h: Grant(tunnel_id, Identity(user_id, username, email), expires)
            for h, tunnel_id, expires, user_id, username, email in rows}
