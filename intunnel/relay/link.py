"""One visitor connection on the relay, as I/O: feeds ``proxy.ProxyState`` and carries out its actions.

A ``Link`` owns the visitor's connection and, while one is attached, an ``Upstream``
(a data connection of the visitor's current tunnel): their callbacks, the kernel pumps
between them, one timer and the read pauses the state machine asks for.  ``cut()`` ends
it all.  Every decision is the state machine's; nothing here parses HTTP or the agent
protocol.
"""

from __future__ import annotations

import logging

from ..wire.netio import Conn, pump_through_kernel, splice
from . import pages, proxy
from .peers import PeerUnreachable, PeerUpstream
from .upstream import Refused, Upstream, open_data
from .access import admit, admits_attached
from .traffic import Bytes

log = logging.getLogger("intunnel.relay")

# Pieces for the visitor that come out of one event (a response head and its body) go out in
# one write up to this size: one system call instead of two; bigger ones aren't copied.
COALESCE = 64 * 1024


def limits_for(settings) -> proxy.Limits:
    """What every visitor connection's state machine needs of the settings (one per relay)."""
    t = settings
    return proxy.Limits(t.relay_max_header_size, t.relay_handshake_timeout, t.relay_keepalive_timeout,
                        t.relay_body_timeout, t.relay_body_min_rate, t.relay_upstream_timeout,
                        t.relay_trust_proxy, t.public_scheme, t.domain.lower().rstrip("."),
                        t.relay_upstream_keepalive > 0)


class Link:
    admits = admits_attached   # R12, asked by the proxy state machine (relay/access)

    def __init__(self, relay, conn: Conn, head, rest: bytes, hop: bool = False):
        self.relay = relay
        self.conn = conn
        self.loop = relay.loop
        self.hop = hop             # a peer relay forwarded it (relay/peers): never forwarded on
        now = self.loop.time()
        self.state = proxy.ProxyState(relay.hop_limits if hop else relay.limits, conn.peername, now)
        self.state.guard = self   # R12: each request to an attached tunnel passes its policy (admits)
        self.up: Upstream | None = None
        self.timer = None
        self.timer_at = 0.0
        self.reading = True
        self.up_reading: bool | None = None
        self.pump = None           # (pump, limit) while the kernel moves a request body
        self.done = False
        self.meter: Bytes | None = None   # the attached data connection's bytes, while its tunnel's traffic view is on
        relay.visitors.add(self)
        conn.feeders.append(self)  # its write buffer full/drained: sync() pauses/resumes the upstream
        conn.on_eof = self._visitor_eof
        conn.on_close = self._visitor_closed
        conn.on_data = self._visitor_data
        self.run(self.state.start(head, rest, now))

    # --- events in ---------------------------------------------------------------------------
    def _visitor_data(self, data: bytes) -> None:
        self.run(self.state.visitor_data(data, self.loop.time()))

    def _visitor_eof(self) -> None:
        self.run(self.state.visitor_eof(self.loop.time()))

    def _visitor_closed(self) -> None:
        self.cut()

    def _upstream_data(self, data: bytes) -> None:
        self.run(self.state.upstream_data(data, self.loop.time()))

    def _upstream_ended(self) -> None:
        self.run(self.state.upstream_ended(self.loop.time()))

    def _timer(self) -> None:
        self.timer = None
        if self.pump is not None:
            pump, limit = self.pump
            self.state.note_kernel_progress(limit - (pump.left or 0))
        self.run(self.state.timer(self.loop.time()))

    def evict(self) -> bool:
        """The tunnel is full: close this visitor if it is idle between requests (True)."""
        if not self.state.between_requests or self.done:
            return False
        self.run(self.state.evict(self.loop.time()))
        return True

    # --- actions out -------------------------------------------------------------------------
    def run(self, actions: list) -> None:
        """Carry out ``actions`` in order.  A ``Route`` is always its batch's last action, so the
        actions of an upstream attached at once (a parked one) run right inside it, in order."""
        try:
            to_visitor: list = []
            for action in actions:
                kind = type(action)
                if kind is proxy.ToVisitor:
                    to_visitor.append(action.data)   # a head and its body: one write, one syscall
                    continue
                if to_visitor:
                    self._write_visitor(to_visitor)
                    to_visitor = []
                self._do(action)
            if to_visitor:
                self._write_visitor(to_visitor)
        except Exception:  # never let one visitor take the relay down
            log.exception("visitor %s: relay error", self.conn.peername)
            self.conn.abort()
            self.cut()
            return
        if not self.done:
            self.sync()

    def _write_visitor(self, pieces: list) -> None:
        if len(pieces) == 1:
            self.conn.write(pieces[0])
        elif sum(map(len, pieces)) <= COALESCE:
            self.conn.write(b"".join(pieces))
        else:
            for piece in pieces:
                self.conn.write(piece)

    def _do(self, a) -> None:
        kind = type(a)
        if kind is proxy.ToUpstream:
            self.up.conn.write(a.data)
        elif kind is proxy.ToVisitor:
            self.conn.write(a.data)
        elif kind is proxy.Route:
            self._route(a.head)
        elif kind is proxy.Detach:
            self._detach(a.park)
        elif kind is proxy.KernelUp:
            self._kernel(self.conn, self.up.conn, a.n)
        elif kind is proxy.KernelDown:
            self._kernel(self.up.conn, self.conn, a.n)
        elif kind is proxy.Splice:
            self._splice()
        elif kind is proxy.Close:
            if a.abort:
                self.conn.abort()
            else:
                self.conn.close()
            self.cut()
        else:
            raise AssertionError(f"unknown action {a!r}")

    def sync(self) -> None:
        """Read each side only when the state machine wants its bytes and the other side can
        take them (TCP's own backpressure, end to end)."""
        st, up = self.state, self.up
        want = st.wants_visitor_input and not (up is not None and up.conn._writing_paused)
        if want != self.reading and st.kernel != "up":
            self.reading = want
            self.conn.resume() if want else self.conn.pause()
        if up is not None and st.kernel != "down":
            want = st.wants_upstream_input and not self.conn._writing_paused
            if want is not self.up_reading:   # None: not known (just attached, or after a pump)
                self.up_reading = want
                up.conn.resume() if want else up.conn.pause()
        when = st.deadline()
        if when is None:
            return
        if self.timer is None or when < self.timer_at - 0.01:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = when
            self.timer = self.loop.call_at(when, self._timer)

    # netio feeders interface: a connection whose write buffer filled up or drained
    def pause(self) -> None:
        if not self.done:
            self.sync()

    resume = pause

    # --- routing -----------------------------------------------------------------------------
    def _route(self, head) -> None:
        """Attach an upstream of the tunnel ``head`` names: a parked one at once, else a fresh one."""
        relay, now = self.relay, self.loop.time()
        accept, head_only = head.get("accept"), head.method == "HEAD"
        subdomain = relay.tunnel_label(head.host)
        if subdomain is None:
            self.run(self.state.route_failed(pages.unknown_tunnel(head.host, accept, head_only), now))
            return
        session = relay.sessions.get(subdomain)
        if session is not None and session.tunnel.remote_port is not None:   # a TCP tunnel: no HTTP
            self.run(self.state.route_failed(pages.unknown_tunnel(head.host, accept, head_only), now))
            return
        if session is None:
            if relay.peers is not None and not self.hop:
                self._task(self._forward(subdomain, head))
            else:
                self._task(self._offline(subdomain, head))
            return
        if session.gate.policy is not None and not admit(self, session, head):
            return   # refused (401/403), or its password is being checked (then routed again)
        limit = relay.tunables.relay_max_visitors_per_tunnel
        if session.visitors >= limit:
            idlest = sorted((h for h in session.holders if h is not self and h.state.between_requests),
                            key=lambda h: h.state.idle_since)
            for holder in idlest[:1]:
                holder.evict()
        if session.visitors >= limit:
            self.run(self.state.route_failed(pages.response(
                503, f"The tunnel '{subdomain}' has too many open connections; try again shortly.",
                accept, code="TOO_MANY_CONNECTIONS", head_only=head_only), now))
            return
        data = session.take_parked() if relay.tunables.relay_upstream_keepalive > 0 else None
        if data is not None:
            self._attach(session, data, b"", reused=True)
            return
        self._task(self._fresh(session, head))

    def _task(self, coro) -> None:
        self.relay.spawn(self._guarded(coro))

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except Exception:
            log.exception("visitor %s: routing failed", self.conn.peername)
            if not self.done:
                self.run(self.state.route_failed(pages.response(502, "The relay could not reach the tunnel.",
                                                                why="relay_error"), self.loop.time()))

    async def _offline(self, subdomain: str, head) -> None:
        known = await self.relay.store.exists(subdomain)
        if self.done:
            return
        accept, head_only = head.get("accept"), head.method == "HEAD"
        page = pages.tunnel_offline(subdomain, accept, head_only) if known else \
            pages.unknown_tunnel(head.host, accept, head_only)
        self.run(self.state.route_failed(page, self.loop.time()))

    async def _forward(self, subdomain: str, head) -> None:
        """No agent here: the relay holding it serves the request, through this relay (relay/peers)."""
        try:
            got = await self.relay.peers.upstream(subdomain)
        except PeerUnreachable:
            if not self.done:
                self.run(self.state.route_failed(pages.response(
                    502, f"The relay holding the tunnel '{subdomain}' could not be reached; try again shortly.",
                    head.get("accept"), head_only=head.method == "HEAD", why="peer_unreachable"),
                    self.loop.time()))
            return
        if got is None:
            await self._offline(subdomain, head)
            return
        conn, reused = got
        if self.done:
            conn.close()
            return
        self.relay.stats.routed["forwarded_out"] += 1
        self._connect(PeerUpstream(self.relay.peers, subdomain, conn, reused, self), None, b"")

    async def _fresh(self, session, head) -> None:
        try:
            data, rest = await open_data(session, self.conn.peername)
        except Refused as e:
            if self.done:
                return
            accept, head_only = head.get("accept"), head.method == "HEAD"
            page = pages.tunnel_offline(session.subdomain, accept, head_only) if e.kind == "offline" else \
                pages.local_refused(session.subdomain, e.port or session.local_port, accept, head_only)
            self.run(self.state.route_failed(page, self.loop.time()))
            return
        if self.done or session.closed:
            data.close()
            if not self.done:
                self.run(self.state.route_failed(pages.tunnel_offline(
                    session.subdomain, head.get("accept"), head.method == "HEAD"), self.loop.time()))
            return
        self._attach(session, data, rest, reused=False)

    def _attach(self, session, data: Conn, rest: bytes, reused: bool) -> None:
        if self.hop:
            self.relay.stats.routed["forwarded_in"] += 1
            session.hops += 1
        else:
            self.relay.stats.routed["local"] += 1
            session.direct += 1
        self._connect(Upstream(session, data, reused, self), session.host_header, rest)

    def _connect(self, up, host_header: str | None, rest: bytes) -> None:
        self.up = up
        self.up_reading = None
        data = up.conn
        data.feeders.append(self)
        data.on_eof = self._upstream_ended
        data.on_close = self._upstream_ended
        data.on_data = self._upstream_data
        session = getattr(up, "session", None)
        if session is not None and session.traffic_view:
            if self.meter is None:
                self.meter = Bytes()
            data.meter = self.meter           # (Upstream.detach takes it off)
            self.state.journal = self         # relay/traffic: the dashboard's traffic view
        else:
            self.state.journal = None
        actions = self.state.attached_upstream(host_header, up.reused, self.loop.time(),
                                               to_peer=type(up) is PeerUpstream)
        if rest:
            actions = actions + self.state.upstream_data(rest, self.loop.time())
        self.run(actions)

    def exchange(self, head, status: int, began: float, now: float) -> None:
        """The state machine's journal (relay/traffic): an exchange of the attached tunnel is over.
        On every request of a tunnel with the view on: only references and numbers go into the
        ring here (``traffic.raw``); the flusher makes the row of them."""
        session = getattr(self.up, "session", None)   # (None: detached meanwhile, or a peer relay's)
        if session is None or not session.traffic_view:
            return
        meter, traffic = self.meter, self.relay.traffic
        ring = traffic.rings.get(session.tunnel.id)
        if ring is None:
            ring = traffic.ring(session.tunnel.id)
        ring.append((began, now, head.method, head.target, status, meter.tx, meter.rx, self.conn.peername,
                     head.get("x-forwarded-for") if traffic.forwarded or self.hop else None, self.hop))
        meter.rx = meter.tx = 0

    def _detach(self, park: bool) -> None:
        """The machine parks only an idle upstream (no kernel pump); closing one stops its pumps."""
        up, self.up = self.up, None
        if up is not None:
            up.detach(park)

    # --- moving bytes ------------------------------------------------------------------------
    def _kernel(self, src: Conn, dst: Conn, n: int) -> None:
        """The kernel moves the next ``n`` body bytes; the state machine hears when it is done."""
        up = src is self.conn

        def done():
            self.pump = None
            self.up_reading = None
            self.reading = up or self.reading
            self.run(self.state.kernel_done(n, self.loop.time()))

        def refused():
            self.pump = None
            self.up_reading = None
            self.run(self.state.kernel_done(0, self.loop.time()))

        def failed():
            self.pump = None
            src.abort()
            dst.abort()

        if not pump_through_kernel(src, dst, src.eof_received, failed, n, None, done, refused):
            self.state.kernel = None  # nothing moved: the event loop carries these bytes
            return
        if up:
            self.pump = (src.pump, n)

    def _splice(self) -> None:
        """After a 101: raw bytes both ways until either side closes; the slot is held till then."""
        up = self.up
        for c in (self.conn, up.conn):
            if self in c.feeders:
                c.feeders.remove(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.resume()
        up.conn.resume()
        splice(self.conn, up.conn, on_close=self.cut)

    def cut(self) -> None:
        """The end: release the upstream (parked only if the machine said so before), timers, registry."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.up is not None:
            self._detach(park=False)
        self.conn.close()
        self.relay.visitors.discard(self)
