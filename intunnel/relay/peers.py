"""Forwarding between relays: a visitor whose tunnel's agent is on another relay is served there.

Several relays share one PostgreSQL database (relay/routes.py); nginx usually sends a
visitor to the relay that holds its tunnel's agent (both hash the tunnel's host), but
not always: relays join and leave, and a client's first connection knows no subdomain
yet.  Then this relay passes the request on to the relay holding the agent:

  * **as nginx would.**  The owning relay's peer listener (``relay_peer_listen``, on the
    relays' private network) accepts connections opened with a signed request
    (relay/peerauth.py), then reads visitors' requests from them as from a trusted proxy:
    the X-Forwarded-* lines this relay wrote pass to the app as they are, so the app sees
    the visitor's address whichever relay took the visitor.  The forwarding relay's
    ``Link`` treats the peer connection as its upstream: its state machine frames every
    exchange, 101s and bodies of any size included, exactly as for a local agent.  So each
    request is routed by its own Host on both relays; a pooled connection carrying one
    tenant's request never carries another's to the wrong tunnel.
  * **one hop at most.**  A request that came in on the peer listener is never forwarded
    again: if that relay lost the agent meanwhile, the visitor gets its "offline" page.
  * **pooled.**  After an exchange the peer connection is parked per tunnel for the next
    request (``PEER_IDLE`` seconds, below the owner's idle timeout; a parked connection
    the owner closed meanwhile is retried as for the local app's, R10).  A route change
    heard from the database (another relay claimed the tunnel) drops the cached route and
    the tunnel's parked connections.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

from ..errors import ConfigError
from ..settings import parse_listen
from ..wire.http1 import HttpError, parse_request_head
from ..wire.netio import Conn, ConnClosed
from . import pages, peerauth

log = logging.getLogger("intunnel.relay")

ROUTE_TTL = 5.0        # seconds a looked-up route is trusted without hearing of a change
PEER_IDLE = 30.0       # seconds a parked peer connection is reused (the owner closes after relay_keepalive_timeout)
PARKED_PER_TUNNEL = 32
PEER_DOWN_FOR = 2.0    # seconds a peer that could not be reached is not dialed again (its visitors get a 502 at once)
OPENING_LIMIT = 4096   # bytes of the peer's opening request / reply


def read_secret(settings) -> bytes:
    path = Path(settings.relay_peer_secret_file)
    try:
        secret = path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"setting 'relay_peer_secret_file': cannot read {path} ({e.strerror})") from None
    if len(secret) < peerauth.MIN_SECRET:
        raise ConfigError(f"setting 'relay_peer_secret_file': {path} holds {len(secret)} bytes; "
                          f"the relays' shared secret must be at least {peerauth.MIN_SECRET}")
    return secret


class PeerUnreachable(Exception):
    pass


class Peers:
    """This relay's peer listener and its forwards to the other relays.  None of it exists
    unless ``relay_peer_listen`` is set (one relay: no forwarding, no extra socket)."""

    def __init__(self, relay, secret: bytes):
        self.relay = relay
        self.secret = secret
        self.verifier: peerauth.Verifier | None = None
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self.routes: dict[str, tuple[float, tuple[int, str, str] | None]] = {}  # subdomain -> (until, route)
        self.parked: dict[str, collections.deque] = {}   # subdomain -> deque[(conn, parked at)]
        self.timeout = relay.settings.relay_peer_timeout
        self.down: dict[str, float] = {}   # relay id -> until when it is not dialed (it could not be reached)

    # --- the peer listener ---------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        self.verifier = peerauth.Verifier(self.secret, self.relay.relay_id)
        host, port = parse_listen(self.relay.settings.relay_peer_listen, "relay_peer_listen")
        self.server = await self.relay.loop.create_server(
            lambda: self.relay.make_conn(self._opening), host, port, backlog=1024, reuse_address=True)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self.address

    @property
    def dial_address(self) -> str:
        """Where the other relays reach this one (recorded in its ``relay`` row)."""
        s = self.relay.settings
        if s.relay_peer_address:
            return s.relay_peer_address
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for queue in self.parked.values():
            for conn, _ in queue:
                conn.close()
        self.parked.clear()

    def _opening(self, conn: Conn, raw: bytes) -> None:
        """The first request on the peer listener: a peer relay's signed opening, or nothing."""
        try:
            head = parse_request_head(raw)
            caller = self.verifier.check(head.method, head.target, head.get("upgrade"),
                                         head.get(peerauth.HEADER), time.time())
        except (HttpError, peerauth.PeerAuthError) as e:
            log.warning("peer connection from %s refused: %s", conn.peername, e)
            self.relay._refuse(conn, pages.response(403, "Not a peer relay.", "application/json", code="FORBIDDEN"))
            return
        log.debug("peer connection from relay %s (%s)", caller, conn.peername)
        conn.write(peerauth.SWITCHING)
        self.relay.accept_heads(conn, self.relay.dispatch_forwarded)

    # --- forwarding to the other relays ---------------------------------------------------------
    def forget(self, tunnel_id: int) -> None:
        """Another relay claimed ``tunnel_id`` (heard from the database): look its route up anew."""
        for subdomain, (_, route) in list(self.routes.items()):
            if route is not None and route[0] == tunnel_id:
                del self.routes[subdomain]
                for conn, _ in self.parked.pop(subdomain, ()):
                    conn.close()

    async def _route(self, subdomain: str, fresh: bool = False) -> tuple[int, str, str] | None:
        now = time.monotonic()
        cached = self.routes.get(subdomain)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        route = await self.relay.store.route_of(subdomain)
        if route is not None and route[1] == self.relay.relay_id:
            route = None   # our own (a session that is ending): nothing to forward to
        if route is not None:
            self.routes[subdomain] = (now + ROUTE_TTL, route)
        else:
            self.routes.pop(subdomain, None)
        return route

    async def upstream(self, subdomain: str) -> tuple[Conn, bool] | None:
        """A connection to the relay holding ``subdomain``'s agent, ready for a request, and
        whether it was reused; None when no other relay holds it.  PeerUnreachable when one
        does but can't be reached (after one fresh look at the route)."""
        route = await self._route(subdomain)
        if route is None:
            return None
        queue = self.parked.get(subdomain)
        now = time.monotonic()
        while queue:
            conn, since = queue.pop()
            if not conn.closed and not conn.eof and now - since < PEER_IDLE:
                return conn, True
            conn.close()
        try:
            return await self._dial(route), False
        except PeerUnreachable as e:
            again = await self._route(subdomain, fresh=True)   # maybe it moved meanwhile
            if again is None:
                return None
            if again == route:
                raise e
            return await self._dial(again), False

    async def connection_to_holder(self, subdomain: str) -> Conn | None:
        """A fresh authenticated connection to the relay holding ``subdomain``'s agent, for one TCP
        visitor (relay/tcp_listeners: never parked); None when no other relay holds it."""
        route = await self._route(subdomain)
        return None if route is None else await self._dial(route)

    async def _dial(self, route: tuple[int, str, str]) -> Conn:
        _, relay_id, address = route
        if self.down.get(relay_id, 0.0) > time.monotonic():
            raise PeerUnreachable(relay_id)   # a cut-off host: don't make every visitor wait the timeout
        conn: Conn | None = None
        try:
            host, port = parse_listen(address, f"relay {relay_id}'s address")
            async with asyncio.timeout(self.timeout):
                _, conn = await self.relay.loop.create_connection(Conn, host, port)
                conn.write(peerauth.opening(self.secret, self.relay.relay_id, relay_id, time.time()))
                reply = await conn.read_head(OPENING_LIMIT)
        except (OSError, TimeoutError, ConnClosed, ValueError, ConfigError) as e:
            if conn is not None:
                conn.abort()
            self.relay.stats.peer_failures += 1
            self.down[relay_id] = time.monotonic() + PEER_DOWN_FOR
            log.warning("relay %s at %s: could not forward to it (%s)", relay_id, address,
                        type(e).__name__ if not str(e) else e)
            raise PeerUnreachable(relay_id) from None
        self.relay.stats.peer_dials += 1
        if not reply.startswith(b"HTTP/1.1 101 "):
            conn.abort()
            self.relay.stats.peer_failures += 1
            log.warning("relay %s at %s refused the forward: %s (is relay_peer_listen set there, and "
                        "relay_peer_secret_file the same on every relay?)", relay_id, address,
                        reply.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
            raise PeerUnreachable(relay_id)
        return conn

    def sweep(self, now: float) -> None:
        """From the heartbeat timer: close parked connections idle for PEER_IDLE (each holds a
        visitor slot, a data connection and a connection to the app at the owner)."""
        for subdomain, queue in list(self.parked.items()):
            while queue and now - queue[0][1] >= PEER_IDLE:   # oldest first
                queue.popleft()[0].close()
            if not queue:
                del self.parked[subdomain]

    def park(self, subdomain: str, conn: Conn) -> None:
        """An exchange ended cleanly on ``conn``: keep it for the tunnel's next request."""
        queue = self.parked.setdefault(subdomain, collections.deque())
        if len(queue) >= PARKED_PER_TUNNEL:
            conn.close()
            return
        conn.on_data = lambda data: conn.abort()   # nothing may arrive between exchanges (R6)
        conn.on_eof = conn.close
        conn.resume()
        queue.append((conn, time.monotonic()))


class PeerUpstream:
    """A forwarding visitor's attachment to a peer relay's connection (``Upstream``'s shape)."""

    __slots__ = ("peers", "subdomain", "conn", "reused", "holder")

    def __init__(self, peers: Peers, subdomain: str, conn: Conn, reused: bool, holder):
        self.peers, self.subdomain, self.conn, self.reused, self.holder = peers, subdomain, conn, reused, holder

    def detach(self, park: bool) -> None:
        peers, self.peers = self.peers, None
        if peers is None:
            return
        conn = self.conn
        conn.on_data = conn.on_eof = conn.on_close = None
        if self.holder in conn.feeders:
            conn.feeders.remove(self.holder)
        if park and not conn.closed and not conn.eof:
            peers.park(self.subdomain, conn)
        else:
            conn.close()
