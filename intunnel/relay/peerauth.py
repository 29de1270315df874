"""Relays proving to each other who they are: the forwarded connection's opening request, pure.

A relay that forwards visitors to the relay holding their tunnel's agent (relay/peers.py)
opens a connection to that relay's peer listener and sends one request first::

    GET /_intunnel/peer HTTP/1.1
    Host: intunnel-peer
    Upgrade: intunnel-peer
    Connection: Upgrade
    X-InTunnel-Peer: <from relay id> <to relay id> <unix time> <nonce> <mac>

``mac`` is HMAC-SHA256 over the other four fields, keyed with the secret every relay shares
(``relay_peer_secret_file``).  The receiver checks that the request is meant for it (a
relay whose address moved to another relay id is not talked to by mistake), that the time
is within ``SKEW`` of its own clock, that the nonce was not used before within the window
(a recorded opening cannot be replayed), and the MAC, compared in constant time.  It
answers ``101`` and from then on the connection carries visitors' requests as from nginx.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PATH = "/_intunnel/peer"
UPGRADE = "intunnel-peer"
HEADER = "x-intunnel-peer"
SKEW = 30.0             # seconds two relays' clocks may differ (they run NTP; this is generous)
MIN_SECRET = 32         # bytes
MAX_NONCES = 100_000    # openings remembered within the window (each is one new connection)

SWITCHING = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {UPGRADE}\r\nConnection: Upgrade\r\n\r\n").encode()


class PeerAuthError(Exception):
    """An opening that is refused; the message says why (it names no secret)."""


def _mac(secret: bytes, fields: tuple[str, ...]) -> str:
    return hmac.new(secret, "\n".join(("intunnel-peer",) + fields).encode(), hashlib.sha256).hexdigest()


def opening(secret: bytes, from_id: str, to_id: str, now: float, nonce: str | None = None) -> bytes:
    """The request that opens a forwarded connection from ``from_id`` to ``to_id``."""
    nonce = nonce or secrets.token_hex(16)
    fields = (from_id, to_id, str(int(now)), nonce)
    value = " ".join(fields + (_mac(secret, fields),))
    return (f"GET {PATH} HTTP/1.1\r\nHost: intunnel-peer\r\nUpgrade: {UPGRADE}\r\n"
            f"Connection: Upgrade\r\nX-InTunnel-Peer: {value}\r\n\r\n").encode()


class Verifier:
    """Checks openings addressed to the relay ``own_id``; remembers their nonces for the window."""

    def __init__(self, secret: bytes, own_id: str):
        if len(secret) < MIN_SECRET:
            raise ValueError(f"the relays' shared secret must be at least {MIN_SECRET} bytes")
        self.secret = secret
        self.own_id = own_id
        self.seen: dict[str, float] = {}   # nonce -> when it may be forgotten

    def check(self, method: str, target: str, upgrade: str | None, value: str | None, now: float) -> str:
        """The calling relay's id, or PeerAuthError."""
        if method != "GET" or target != PATH or (upgrade or "").lower() != UPGRADE:
            raise PeerAuthError("not a peer relay's opening request")
        parts = (value or "").split(" ")
        if len(parts) != 5:
            raise PeerAuthError("malformed X-InTunnel-Peer header")
        from_id, to_id, stamp, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), _mac(self.secret, (from_id, to_id, stamp, nonce)).encode()):
            raise PeerAuthError(f"bad signature from {from_id!r} (is relay_peer_secret_file the same on every relay?)")
        if to_id != self.own_id:
            raise PeerAuthError(f"the opening is meant for relay {to_id!r}, this is {self.own_id!r}")
        if not stamp.isdigit() or abs(now - int(stamp)) > SKEW:
            raise PeerAuthError(f"the opening's time is more than {SKEW:.0f} s off this relay's clock")
        self._forget(now)
        if nonce in self.seen:
            raise PeerAuthError("a replayed opening (its nonce was used before)")
        if len(self.seen) >= MAX_NONCES:
            raise PeerAuthError("too many peer connections opened within the window")
        self.seen[nonce] = now + 2 * SKEW
        return from_id

    def _forget(self, now: float) -> None:
        # Nonces go in time order, so the oldest are first: stop at the first one still fresh.
        while self.seen:
            nonce, until = next(iter(self.seen.items()))
            if until > now:
                return
            del self.seen[nonce]
