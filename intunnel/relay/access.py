"""Tunnel access policies at the relay: every request is checked before a byte of it reaches the agent.

The rules are ``intunnel.access`` (pure); this module is where the relay applies them:

  * a ``Gate`` per agent session holds its tunnel's current policy, loaded with the
    tunnel when the agent authenticates (``store.TunnelInfo.access``) and replaced when
    it changes (``refresh``, from the revocation checker: pushed on PostgreSQL by the
    ``t:<tunnel id>`` notification the writer sends, polled on SQLite), so the next
    request of every connected visitor is judged by the new policy;
  * ``Link._route`` calls ``admit`` for a request that needs an upstream of a tunnel whose
    policy is not public, and the proxy state machine asks ``Link.admits`` (``admits_attached``)
    about each further request of a keep-alive connection to the same tunnel: one it can't
    let through at once is routed anew (``proxy`` rule R12), so ``admit`` decides it;
  * a request on one of the policy's bypass paths (``access.bypassed``) skips the password and
    members checks, never the IP rules;
  * a refused request gets the relay's 401 (``WWW-Authenticate: Basic realm="<subdomain>"``)
    or 403 page and closes; it never takes or opens a data connection.

Passwords: checking one costs an argon2 hash (tens of ms), so it runs in a small thread
pool, never on the event loop, at most ``relay_access_max_pending`` at once (more get 429).
Wrong passwords are counted per (tunnel, visitor address) and per tunnel, each in a one-minute
window (``relay_access_max_failures``, ``relay_access_max_failures_per_tunnel``): past either,
a password check is refused with 429 and ``Retry-After`` before any hash is spent.
Verified credentials are remembered per relay (``Checker``): an LRU of
``relay_access_cache_size`` entries, keyed by keyed BLAKE2b under a random key of this process
over (the policy's stamp, the Authorization header), so the plain password is never kept, a
key is worthless outside this process, and a policy change (a new stamp: any password
reset, user removed, rule changed) misses every entry made under the old one.  A keep-alive
visitor's further requests then cost a dictionary lookup, not a hash.  Wrong passwords are
neither cached nor logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .. import access
from ..access import ALLOW, CHALLENGE, FORBID, Verify
from ..ratelimit import RateLimiter
from ..security import verify_password
from . import members, pages

log = logging.getLogger("intunnel.relay")

FAILURE_WINDOW = 60.0  # seconds over which wrong passwords are counted
HASH_THREADS = 2  # argon2 releases the GIL: two hashes at once on the relay's two cores, the loop free
# What an unreadable stored policy (a newer version's, or damaged) enforces: no visitor at all.
NOBODY = access.Policy(deny=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))


class Gate:
    """One agent session's view of its tunnel's policy (``policy`` None: public)."""

    __slots__ = ("tunnel_id", "subdomain", "stored", "policy", "stamp")

    def __init__(self, tunnel_id: int, subdomain: str, stored: str | None):
        self.tunnel_id, self.subdomain = tunnel_id, subdomain
        self.stored = self.policy = None
        self.stamp = b""
        self.load(stored)

    def load(self, stored: str | None) -> bool:
        """Take the stored policy ``stored``; True if it changed."""
        if stored == self.stored and self.stamp:
            return False
        try:
            policy = access.load(stored)
        except access.PolicyError as e:
            log.error("tunnel %s: %s; refusing every visitor until it is set again", self.subdomain, e)
            policy = NOBODY
        self.stored = stored
        self.policy = None if policy.public else policy
        self.stamp = hashlib.sha256(f"{self.tunnel_id}\0{stored or ''}".encode()).digest()
        return True

    narrow = None   # the session's own rules (NarrowedGate)


# A Verify of a narrowed session whose stored policy passed already (or asks no password):
# only the session's password is left to check.
SESSION_ONLY = "session-only"


class NarrowedGate(Gate):
    """The gate of a session whose client added rules (intunnel.session_access): the tunnel's
    own policy (``base``, reloaded as always) and the session's rules (``narrow``) both must pass.
    ``policy`` is never None (there is always something to check); ``stamp`` covers both, so
    credentials verified for the tunnel's policy alone are not taken for this session."""

    __slots__ = ("base", "narrow")

    def __init__(self, tunnel_id: int, subdomain: str, stored: str | None, narrow):
        self.base = Gate(tunnel_id, subdomain, stored)
        self.narrow = narrow
        super().__init__(tunnel_id, subdomain, stored)

    def load(self, stored: str | None) -> bool:
        changed = self.base.load(stored)
        if self.stamp and not changed:
            return False
        self.stored = stored
        self.policy = self.base.policy or access.PUBLIC
        self.stamp = hashlib.sha256(self.base.stamp + self.narrow.stamp).digest()
        return True


def gate_for(tunnel, narrow=None) -> Gate:
    """An agent session's gate: its tunnel's policy, narrowed by the session's rules if any."""
    if narrow is None:
        return Gate(tunnel.id, tunnel.subdomain, tunnel.access)
    return NarrowedGate(tunnel.id, tunnel.subdomain, tunnel.access, narrow)


class Checker:
    """The relay's credential cache and password-hashing pool (one per relay)."""

    def __init__(self, settings):
        self.trust_proxy = settings.relay_trust_proxy
        self.size = max(0, settings.relay_access_cache_size)
        self.max_pending = max(1, settings.relay_access_max_pending)
        self.pending = 0
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        self.failures = RateLimiter(settings.relay_access_max_failures, FAILURE_WINDOW, time.monotonic)
        self.tunnel_failures = RateLimiter(settings.relay_access_max_failures_per_tunnel, FAILURE_WINDOW,
                                           time.monotonic)
        self.grants = members.Grants(settings)   # members only: the access cookies seen (relay/members)

    def throttled(self, gate: Gate, address: str) -> int:
        """Seconds to wait before another password check of ``address`` on this tunnel (0: go on)."""
        now = time.monotonic()
        waits = [d.retry_after(now) for d in (self.failures.peek(f"{gate.tunnel_id}|{address}"),
                                              self.tunnel_failures.peek(str(gate.tunnel_id))) if not d.allowed]
        return max(waits, default=0)

    def failed(self, gate: Gate, address: str) -> None:
        """A wrong password (or an unknown user) from ``address``."""
        self.failures.hit(f"{gate.tunnel_id}|{address}")
        self.tunnel_failures.hit(str(gate.tunnel_id))

    def address(self, peer: str, head, hop: bool = False) -> str:
        return access.visitor_address(peer, head.get("x-forwarded-for"), self.trust_proxy, hop)

    def _cache_key(self, gate: Gate, authorization: str) -> bytes:
        # BLAKE2b in its keyed mode is a MAC (RFC 7693), and a few times cheaper than HMAC-SHA256.
        return hashlib.blake2b(gate.stamp + authorization.encode("utf-8", "surrogateescape"),
                               key=self._key, digest_size=32).digest()

    def check(self, gate: Gate, head, peer: str, hop: bool = False):
        """ALLOW, FORBID, CHALLENGE, or the ``Verify`` to do (credentials not verified before)."""
        policy = gate.policy
        if policy is None:
            return ALLOW
        if gate.narrow is not None:
            return self._narrowed(gate, head, peer, hop)
        authorization = head.get("authorization")
        address = self.address(peer, head, hop)
        if policy.users and authorization:
            # IP rules first, then the bypass paths (no digest), then the cache: credentials
            # verified under this very policy
            if not access.address_admitted(policy, address):
                return FORBID
            if policy.bypass and access.bypassed(policy.bypass, head.target):
                return ALLOW
            key = self._cache_key(gate, authorization)
            if key in self._verified:
                self._verified.move_to_end(key)
                return ALLOW
        return access.evaluate(policy, address, authorization, head.target)

    def _narrowed(self, gate: "NarrowedGate", head, peer: str, hop: bool):
        """``check`` for a session that narrowed its tunnel's policy: the session's IP rules, then
        the tunnel's policy as if not narrowed (its FORBID, CHALLENGE, ... stand), then the
        session's password.  A Verify then carries the stored hash still to check, or SESSION_ONLY."""
        rules = gate.narrow.rules
        if not access.address_admitted(rules, self.address(peer, head, hop)):
            return FORBID
        verdict = self.check(gate.base, head, peer, hop)
        if not rules.users or not (verdict is ALLOW or type(verdict) is Verify):
            return verdict
        authorization = head.get("authorization")
        credentials = access.parse_basic(authorization)
        if credentials is None:
            return CHALLENGE
        key = self._cache_key(gate, authorization)   # verified for this very session: both passed
        if key in self._verified:
            self._verified.move_to_end(key)
            return ALLOW
        return Verify(*credentials, verdict.hash if type(verdict) is Verify else SESSION_ONLY)

    async def verify(self, gate: Gate, authorization: str, verdict: Verify) -> bool:
        """Check the password off the loop; remember the credentials if they are right."""
        loop = asyncio.get_running_loop()
        key = self._cache_key(gate, authorization)  # the stamp of the policy whose hash is checked
        narrow = gate.narrow
        if narrow is not None and narrow.rules.users and not narrow.accepts(verdict.user, verdict.password):
            return False   # the session's password: a keyed digest, checked at once (no hash spent)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="relay-access")
        self.pending += 1
        try:
            ok = verdict.hash == SESSION_ONLY or \
                await loop.run_in_executor(self._executor, verify_password, verdict.password, verdict.hash)
        finally:
            self.pending -= 1
        if ok and verdict.hash is not None and self.size:
            self._verified[key] = None
            while len(self._verified) > self.size:
                self._verified.popitem(last=False)
        return ok and verdict.hash is not None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _page(verdict: str, gate: Gate, head) -> bytes:
    accept, head_only = head.get("accept"), head.method == "HEAD"
    if verdict == FORBID:
        return pages.access_forbidden(accept, head_only)
    return pages.auth_required(gate.subdomain, accept, head_only)


def admit(link, session, head) -> bool:
    """``Link._route``: may ``head`` have an upstream of ``session``'s tunnel now?  If not, the
    visitor was answered (401/403/429), or its password is being checked and the request is
    routed again once it was (then from the cache)."""
    relay, gate = link.relay, session.gate
    checker = relay.access
    if gate.policy.members is not None and not gate.policy.bypasses(head.target) and \
            not members.admit(link, session, head):
        return False   # members only: not signed in, not admitted, or being looked up (relay/members)
    verdict = checker.check(gate, head, link.conn.peername, getattr(link, "hop", False))
    if verdict is ALLOW:
        return True
    now = link.loop.time()
    if type(verdict) is not Verify:
        link.run(link.state.route_failed(_page(verdict, gate, head), now))
        return False
    accept, head_only = head.get("accept"), head.method == "HEAD"
    address = checker.address(link.conn.peername, head, getattr(link, "hop", False))
    wait = checker.throttled(gate, address)
    if wait:
        link.run(link.state.route_failed(pages.access_throttled(wait, accept, head_only), now))
        return False
    if checker.pending >= checker.max_pending:
        link.run(link.state.route_failed(pages.access_busy(accept, head_only), now))
        return False
    link._task(_verify_then_route(link, gate, head, verdict, address))
    return False


async def _verify_then_route(link, gate: Gate, head, verdict: Verify, address: str) -> None:
    checker = link.relay.access
    ok = await checker.verify(gate, head.get("authorization"), verdict)
    del verdict  # the plain password: no longer than the check
    if not ok:
        checker.failed(gate, address)
    if link.done:
        return
    if ok:
        link._route(head)  # from the top: the session may have changed meanwhile; the cache answers
    else:
        link.run(link.state.route_failed(_page(CHALLENGE, gate, head), link.loop.time()))


def admits_attached(link, head) -> bool:
    """``Link.admits``, which the proxy asks about each further request of a keep-alive connection
    to the tunnel it is attached to (R12): True lets it through at once; False routes it anew
    (``admit`` decides).  A method of the Link, not a closure made per connection: a new
    connection per request is the relay's most expensive case."""
    session = getattr(link.up, "session", None)
    if session is None:   # a peer relay's upstream (relay/peers): the holding relay checks
        return True
    if session.closed and session.moving:
        return False      # its agent moved (relay/placement): the next request goes to its new session
    gate = session.gate
    policy = gate.policy
    if policy is None:
        return True
    checker = link.relay.access
    if policy.members is not None and not policy.bypasses(head.target) and checker.grants.verdict(
            session.tunnel.id, session.tunnel.owner_id, policy.members, head) is not ALLOW:
        return False
    return checker.check(gate, head, link.conn.peername, getattr(link, "hop", False)) is ALLOW


async def refresh(relay, sessions) -> None:
    """Reload the stored policies of ``sessions`` (the revocation checker's, after its cuts)."""
    live = [s for s in sessions if not s.closed]
    if not live:
        return
    stored = await relay.store.policies([s.tunnel.id for s in live])
    for session in live:
        if session.tunnel.id in stored and session.gate.load(stored[session.tunnel.id]):
            log.info("tunnel %s: access policy changed (%s)", session.subdomain,
                     "public" if session.gate.policy is None else "restricted")
