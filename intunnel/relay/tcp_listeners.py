"""TCP tunnels at the relay: a listener per reserved port, each visitor spliced to one data connection.

A TCP tunnel (``tunnel.protocol`` "tcp") holds a public port of ``relay_tcp_ports``
(intunnel.tcpports) until it is deleted.  Every relay listens on every reserved port, on
``relay_tcp_listen_host`` (``*``: every address, IPv4 and IPv6):

  * at start, before its agent endpoint listens (so a restarted relay has its ports back
    before the first agent reconnects), then every ``relay_tcp_refresh`` seconds (tunnels
    created or deleted meanwhile), and at once when a TCP tunnel's agent connects here;
  * a port another program holds on the host is skipped with one log line (tried again at
    each refresh), never an error for the rest.

A visitor on a port is one data connection of the tunnel's agent, exactly as an HTTP
visitor's (``upstream.open_data``: Bind, the agent dials its local service, DataReady), then
``netio.splice``: raw bytes both ways (splice(2) in the kernel where it can), half-closes
mirrored.  Nothing is parsed.  Before a data connection is taken: the tunnel's IP rules
(``access.raw_admitted``: the only access control a raw TCP visitor can have) and its
``relay_max_visitors_per_tunnel`` slots.  Refused, offline, or the local service refusing:
the connection is closed at once (no banner can be written for an unknown protocol), logged
at debug level only (a port scanner must not flood the log).

Several relays: a visitor whose tunnel's agent is on another relay is forwarded there over
an authenticated peer connection (relay/peers), opened with one request head naming the
tunnel (``FORWARD_PATH``); the owner serves it as its own visitor (its IP rules judge the
address the first relay saw) and never forwards it again (one hop).
"""

from __future__ import annotations

import asyncio
import logging

from .. import access, tcpports
from ..wire.http1 import HttpError, parse_request_head
from ..wire.netio import KERNEL_AFTER, Conn, splice
from .peers import PeerUnreachable
from .upstream import Refused, Upstream, open_data

log = logging.getLogger("intunnel.relay")

EVERY_ADDRESS = "*"                      # relay_tcp_listen_host: IPv4 and IPv6
FORWARD_PATH = "/_intunnel/tcp"          # a peer relay's opening for a forwarded TCP visitor
FORWARD_PREFIX = f"GET {FORWARD_PATH} ".encode()
TUNNEL_HEADER = "X-InTunnel-Tcp-Tunnel"  # its tunnel (subdomain); the visitor's address in X-Forwarded-For


class _Spliced:
    """A TCP visitor's state for the HTTP side's eviction (never idle between requests)."""
    between_requests = False
    idle_since = 0.0


class TcpVisitor:
    """The holder of a TCP visitor's slot (``Upstream.holder``)."""
    __slots__ = ("conn", "__weakref__")
    state = _Spliced()

    def __init__(self, conn: Conn):
        self.conn = conn

    def pause(self) -> None:   # netio feeders interface (splice does its own)
        pass

    resume = pause


def _keep_half_open() -> None:
    """A visitor's EOF before its splice: keep the socket; splice mirrors it then."""


class TcpListeners:
    def __init__(self, relay):
        self.relay = relay
        settings = relay.settings
        self.enabled = bool(tcpports.parse_ranges(settings.relay_tcp_ports))   # ConfigError at start if bad
        self.host = settings.relay_tcp_listen_host
        # "*": every address of both families (asyncio binds one socket per family for None).
        self.bind_host = None if self.host == EVERY_ADDRESS else self.host
        self.ports: dict[int, str] = {}                       # reserved port -> tunnel's subdomain
        self.servers: dict[int, asyncio.AbstractServer] = {}
        self.opening: set[int] = set()
        self.skipped: set[int] = set()                        # held by another program (logged once)

    # --- listeners -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on every reserved port (before the agents can reconnect), then keep up."""
        if not self.enabled:
            return
        await self.apply(await self.relay.store.tcp_ports())
        self.relay.spawn(self._refresh())

    async def _refresh(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.relay.settings.relay_tcp_refresh)
            try:
                ports = await self.relay.store.tcp_ports()
            except Exception:
                if not failing:
                    log.exception("could not reload the TCP tunnels' ports (keeping the last known)")
                failing = True
                continue
            failing = False
            await self.apply(ports)

    async def apply(self, ports: dict[int, str]) -> None:
        self.ports = ports
        for port in [p for p in self.servers if p not in ports]:
            self.servers.pop(port).close()   # its tunnel was deleted; spliced visitors end with the agent
            log.info("TCP port %d: no tunnel holds it any more; not listening", port)
        self.skipped &= set(ports)
        await asyncio.gather(*(self._listen(port) for port in ports))

    def joined(self, session) -> None:
        """A TCP tunnel's agent connected here: its port is listened on now, not at the next refresh."""
        port = session.tunnel.remote_port
        if port is None or not self.enabled:
            return
        self.ports[port] = session.subdomain
        if port not in self.servers:
            self.relay.spawn(self._listen(port))

    async def _listen(self, port: int) -> None:
        if port in self.servers or port in self.opening or self.relay.stopping:
            return
        self.opening.add(port)
        try:
            server = await self.relay.loop.create_server(lambda: self._conn(port), self.bind_host, port,
                                                         backlog=1024, reuse_address=True)
        except OSError as e:
            if port not in self.skipped:
                log.warning("TCP port %d (tunnel %s): cannot listen on %s (%s); skipped: another program "
                            "holds it? (tried again every relay_tcp_refresh)", port, self.ports.get(port),
                            self.host, e.strerror or e)
                self.skipped.add(port)
            return
        finally:
            self.opening.discard(port)
        if self.relay.stopping or port not in self.ports:
            server.close()
            return
        self.skipped.discard(port)
        self.servers[port] = server
        log.info("TCP port %d: listening on %s for tunnel %s", port, self.host, self.ports[port])

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    # --- visitors ------------------------------------------------------------------------------
    def _conn(self, port: int) -> Conn:
        conn = Conn()
        conn.registry = self.relay.conns
        conn.on_made = lambda: self._accepted(conn, port)
        return conn

    def _accepted(self, conn: Conn, port: int) -> None:
        relay = self.relay
        relay.conns.add(conn)
        conn.on_eof = _keep_half_open
        conn.pause()   # nothing is read until the data connection is there (TCP's own backpressure)
        subdomain = self.ports.get(port)
        session = relay.sessions.get(subdomain) if subdomain else None
        if session is not None:
            self.serve(conn, session, conn.peername)
        elif subdomain and relay.peers is not None and not relay.stopping:
            relay.spawn(self._forward(conn, subdomain))
        else:
            conn.close()   # offline (or a port no tunnel holds now): at once

    def serve(self, conn: Conn, session, address: str) -> None:
        """Admit ``conn`` (a visitor from ``address``) to ``session``'s tunnel, or close it at once."""
        gate = session.gate
        narrow = getattr(gate, "narrow", None)
        if not access.raw_admitted((gate.policy, narrow.rules if narrow is not None else None), address):
            log.debug("tunnel %s: TCP visitor %s refused by the IP rules", session.subdomain, address)
            conn.close()
            return
        if session.visitors >= self.relay.tunables.relay_max_visitors_per_tunnel:
            log.debug("tunnel %s: TCP visitor %s refused: too many open connections", session.subdomain, address)
            conn.close()
            return
        self.relay.spawn(self._bind(conn, session, address))

    async def _bind(self, conn: Conn, session, address: str) -> None:
        try:
            data, rest = await open_data(session, address)
        except Refused as e:
            log.debug("tunnel %s: TCP visitor %s closed: %s", session.subdomain, address,
                     "the agent is offline" if e.kind == "offline" else "the local service refused it")
            conn.close()
            return
        if conn.closed or session.closed:
            data.close()
            conn.close()
            return
        up = Upstream(session, data, False, TcpVisitor(conn))   # holds a slot until the splice ends
        if rest:
            conn.write(rest)
        if conn.buffer:   # what the visitor sent meanwhile goes first: splice mirrors an EOF at once
            data.write(bytes(conn.buffer))
            conn.buffer.clear()
        conn.resume()
        data.resume()
        splice(conn, data, on_close=lambda: up.detach(park=False), kernel_after=KERNEL_AFTER)

    # --- several relays ------------------------------------------------------------------------
    async def _forward(self, conn: Conn, subdomain: str) -> None:
        """The agent is on another relay: one authenticated hop there, then raw bytes."""
        peers = self.relay.peers
        try:
            peer = await peers.connection_to_holder(subdomain)
        except PeerUnreachable:
            peer = None
        if peer is None or conn.closed:
            if peer is not None:
                peer.close()
            conn.close()
            return
        peer.write((f"GET {FORWARD_PATH} HTTP/1.1\r\nHost: {self.relay.domain}\r\n{TUNNEL_HEADER}: {subdomain}\r\n"
                    f"X-Forwarded-For: {conn.peername}\r\n\r\n").encode("ascii"))
        self.relay.stats.routed["forwarded_out"] += 1
        if conn.buffer:   # before splice mirrors an EOF that came with them
            peer.write(bytes(conn.buffer))
            conn.buffer.clear()
        conn.resume()
        splice(conn, peer, kernel_after=KERNEL_AFTER)

    def forwarded(self, conn: Conn, raw: bytes) -> None:
        """A peer relay's forwarded TCP visitor (its opening head ``raw``): ours, or closed."""
        try:
            head = parse_request_head(raw)
        except HttpError:
            conn.close()
            return
        subdomain = head.get(TUNNEL_HEADER) or ""
        session = self.relay.sessions.get(subdomain)
        if session is None or session.tunnel.remote_port is None:
            conn.close()   # not here (any more): never forwarded again
            return
        forwarded_for = head.get("x-forwarded-for") or ""
        address = forwarded_for.rsplit(",", 1)[-1].strip() or conn.peername
        self.relay.stats.routed["forwarded_in"] += 1
        conn.on_eof = _keep_half_open
        conn.pause()
        self.serve(conn, session, address)
