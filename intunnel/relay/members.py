"""Members-only tunnels at the relay: the access cookie, who it is for, and the login redirect.

The flow is ``intunnel.memberpass``'s; this module is the relay's part of it:

  * ``/_intunnel/auth?ticket=T`` on a members-only tunnel's host is answered here, never
    forwarded: the ticket is redeemed (once: ``store.redeem``), the answer sets the tunnel's
    access cookie (host-only, HttpOnly, SameSite=Lax, ``__Host-`` and Secure under https) and
    redirects to the path the ticket names;
  * a request without a valid cookie is redirected to the web app's ``/access`` (a browser's
    GET or HEAD), or answered 401 with where to log in (anything else: a POST's body would be
    lost on the way, a script can't log in);
  * a cookie is looked up in the database once per relay (``store.grants``), then remembered
    (``Grants``: a bounded LRU, including tokens found to be no grant, which can never become
    one), and every revocation check re-reads the remembered live ones
    (``refresh``): on SQLite each poll, on PostgreSQL the ``u:<user id>`` notification that
    logging out, out everywhere, a password change or disabling the account sends;
  * the members rule is applied on every request (``members.Members.admits``), so a change of
    the rule applies at once, to cached identities too.

The proxy strips the access cookie from every request it forwards, and drops an app's
``Set-Cookie`` for that name (relay/cookies): the app never sees it, nor can it plant one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timezone
from urllib.parse import parse_qs, urlencode

from ..access import ALLOW
from ..access import address_admitted as access_admitted
from ..errors import wants_json
from ..memberpass import AUTH_PATH, Grant, cookie_name
from ..security import sha256_hex as _digest   # how memberpass stores tokens
from . import pages
from .cookies import access_tokens

log = logging.getLogger("intunnel.relay")

LOGIN, REDEEM, NOT_MEMBER = "login", "redeem", "not_member"
_MISSING = None   # a token looked up and found to be no grant


@dataclass(frozen=True, slots=True)
class LookUp:
    """A cookie this relay has not seen: look its grant up (then route the request again)."""
    token: str
    token_hash: str


def is_auth_path(target: str) -> bool:
    return target == AUTH_PATH or target.startswith(AUTH_PATH + "?")


def ticket_of(target: str) -> str:
    values = parse_qs(target.partition("?")[2]).get("ticket") or [""]
    return values[0]


class Grants:
    """The access cookies one relay has looked up (``relay_access_grant_cache_size``), least
    recently used first out: token -> (its SHA-256, the grant or None, expiry as a Unix time).
    Keyed by the token itself so a visitor's request costs a dictionary lookup, not a hash (the
    tokens stay in this process's memory, as any server's session cache; never logged)."""

    def __init__(self, settings):
        self.size = max(1, settings.relay_access_grant_cache_size)
        self.secure = settings.cookie_secure
        self.cookie = cookie_name(self.secure)
        self.web_url = settings.web_url
        self._known: OrderedDict[str, tuple[str, Grant | None, float]] = OrderedDict()

    def verdict(self, tunnel_id: int, owner_id: int, rule, head):
        """ALLOW, NOT_MEMBER (an account the rule doesn't admit), LOGIN, REDEEM, or a ``LookUp``."""
        if is_auth_path(head.target):
            return REDEEM
        tokens = access_tokens(head.index.get("cookie"))
        if not tokens:
            return LOGIN
        now, known, refused = time.time(), self._known, False
        for token in tokens:
            entry = known.get(token)
            if entry is None:
                return LookUp(token, _digest(token))
            known.move_to_end(token)
            grant = entry[1]
            if grant is _MISSING or grant.tunnel_id != tunnel_id or entry[2] <= now:
                continue
            if rule.admits(grant.who, owner_id):
                return ALLOW
            refused = True
        return NOT_MEMBER if refused else LOGIN

    def remember(self, token: str, digest: str, grant: Grant | None) -> None:
        expires = grant.expires_at.replace(tzinfo=timezone.utc).timestamp() if grant is not None else 0.0
        self._known[token] = (digest, grant, expires)
        self._known.move_to_end(token)
        while len(self._known) > self.size:
            self._known.popitem(last=False)

    def live(self, users: set[int] | None = None) -> list[str]:
        """The digests of the remembered grants (of ``users``; None: all) a revocation check re-reads."""
        return [d for d, g, _ in self._known.values()
                if g is not _MISSING and (users is None or g.who.user_id in users)]

    def keep_only(self, checked: list[str], still: dict[str, Grant]) -> int:
        """After re-reading ``checked``: forget those no longer live; how many went."""
        checked_set, gone = set(checked), 0
        for token, (digest, grant, _) in list(self._known.items()):
            if grant is _MISSING or digest not in checked_set:
                continue
            if digest in still:
                self.remember(token, digest, still[digest])
            else:
                del self._known[token]
                gone += 1
        return gone

    # --- what the relay answers -------------------------------------------------------------

    def login_url(self, settings, subdomain: str, target: str) -> str:
        return f"{self.web_url}/access?" + urlencode({"to": settings.tunnel_url(subdomain) + target})

    def set_cookie(self, token: str, max_age: int) -> str:
        return (f"Set-Cookie: {self.cookie}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
                + ("; Secure" if self.secure else ""))


async def refresh(relay, users: set[int] | None) -> None:
    """Re-read the remembered grants (of ``users``; None: all): logged out, disabled, expired go."""
    grants = relay.access.grants
    checked = grants.live(users)
    if not checked:
        return
    still = await relay.store.grants(checked)
    gone = grants.keep_only(checked, still)
    if gone:
        log.info("members-only access: %d signed-in visitor%s signed out", gone, "" if gone == 1 else "s")


def _safe_target(target: str) -> str:
    """Where to send a visitor after the login: a path on this host, nothing else."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or not target.isascii() \
            or any(ord(c) < 33 or ord(c) == 127 for c in target) or is_auth_path(target):
        return "/"
    return target


def admit(link, session, head) -> bool:
    """``relay/access.admit`` for a members-only tunnel: True when the visitor is signed in as an
    account the rule admits (the password check, if any, comes next); else the visitor was
    answered, or its cookie or ticket is being looked up (then the request is routed again)."""
    relay, gate, tunnel = link.relay, session.gate, session.tunnel
    checker = relay.access
    accept, head_only, now = head.get("accept"), head.method == "HEAD", link.loop.time()
    address = checker.address(link.conn.peername, head, link.hop)
    if not access_admitted(gate.policy, address):   # IP rules first: a refused address never logs in
        link.run(link.state.route_failed(pages.access_forbidden(accept, head_only), now))
        return False
    grants = checker.grants
    verdict = grants.verdict(tunnel.id, tunnel.owner_id, gate.policy.members, head)
    if verdict is ALLOW:
        return True
    if verdict == LOGIN or verdict == NOT_MEMBER:
        if verdict == NOT_MEMBER:
            page = pages.not_member(accept, head_only)
        else:
            target = head.target if head.target.startswith("/") else "/"
            page = pages.login_required(grants.login_url(relay.settings, session.subdomain, target), accept,
                                        head_only, redirect=head.method in ("GET", "HEAD") and not
                                        wants_json(accept))
        link.run(link.state.route_failed(page, now))
        return False
    wait = checker.throttled(gate, address)   # guessing tickets or cookies costs like guessing passwords
    if wait:
        link.run(link.state.route_failed(pages.access_throttled(wait, accept, head_only), now))
        return False
    if verdict == REDEEM:
        link._task(_redeem(link, session, head, address))
    else:
        link._task(_look_up(link, session, head, verdict, address))
    return False


async def _look_up(link, session, head, verdict: LookUp, address: str) -> None:
    checker = link.relay.access
    found = await link.relay.store.grants([verdict.token_hash])
    checker.grants.remember(verdict.token, verdict.token_hash, found.get(verdict.token_hash))
    if verdict.token_hash not in found:
        checker.failed(session.gate, address)
    if not link.done:
        link._route(head)   # from the top, now from what was remembered


async def _redeem(link, session, head, address: str) -> None:
    relay = link.relay
    checker = relay.access
    got = await relay.store.redeem(ticket_of(head.target), session.tunnel.id)
    if link.done:
        return
    if got is None:
        checker.failed(session.gate, address)
        page = pages.ticket_refused(checker.grants.login_url(relay.settings, session.subdomain, "/"),
                                    head.get("accept"), head.method == "HEAD")
    else:
        token, target, max_age, grant = got
        checker.grants.remember(token, _digest(token), grant)
        page = pages.signed_in(_safe_target(target), checker.grants.set_cookie(token, max_age))
    link.run(link.state.route_failed(page, link.loop.time()))
