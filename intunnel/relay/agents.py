"""One connected agent on the relay: its control channel and its pool of data connections."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import datetime, timezone

from .. import session_access
from ..wire import protocol as p
from ..wire.netio import Conn
from .access import gate_for
from .store import LiveSession, TunnelInfo

log = logging.getLogger("intunnel.relay")

CONTROL_FRAMES_PER_TURN = 256  # control frames handled per loop turn; the rest wait for the next


class AgentSession:
    # Slots: one per connected agent, and a dict for its 30-odd attributes was ~1.5 KiB of each.
    __slots__ = ("relay", "conn", "tunnel", "subdomain", "local_port", "host_header", "control", "secret",
                 "session_id", "routed", "gate", "narrowed", "traffic_view", "started_at", "idle", "active",
                 "parked", "waiters", "visitors", "holders", "closed", "last_ping", "named", "direct", "hops",
                 "misplaced_since", "moving", "write_limit", "cut", "stalled_since", "_backlog", "__weakref__")

    def __init__(self, relay, conn: Conn, tunnel: TunnelInfo, hello: p.Hello, control: p.ControlSession,
                 narrow=None):
        self.relay = relay
        self.conn = conn
        self.tunnel = tunnel
        self.subdomain = tunnel.subdomain
        self.local_port = hello.local_port or tunnel.local_port
        self.host_header = hello.host_header
        self.control = control
        self.secret = secrets.token_urlsafe(24)
        # The session's name in its route row (relay/routes): not the secret, which admits data connections.
        self.session_id = secrets.token_hex(8)
        self.routed = False
        # Who may visit: the tunnel's access policy, replaced when it changes, and narrowed by the
        # session's own rules from its hello (``narrow``: intunnel.session_access), if any (relay/access).
        self.gate = gate_for(tunnel, narrow)
        shown = session_access.view(narrow)   # for the dashboard (the tunnel row): no password
        self.narrowed = None if shown is None else json.dumps(shown, separators=(",", ":"))
        self.traffic_view = tunnel.traffic_view   # the dashboard's traffic view (relay/traffic); reloaded on a change
        self.started_at = datetime.now(timezone.utc).replace(tzinfo=None)
        # Lists, not deques: at most MAX_POOL_SIZE entries each, and an empty deque holds a
        # 64-slot block (three per agent: 2 KiB of every idle agent's relay memory).
        self.idle: list[Conn] = []
        self.active: set[Conn] = set()   # data connections carrying a visitor right now
        # Data connections a finished visitor left, still spliced to a keep-alive connection to
        # the local app at the agent: (conn, parked at), newest last (upstream keep-alive).
        self.parked: list[tuple[Conn, float]] = []
        self.waiters: list[asyncio.Future] = []
        self.visitors = 0                # slots held: one per attached Upstream (relay/upstream.py)
        self.holders: set = set()        # the Links holding them (a full tunnel evicts the idlest)
        self.closed = False
        self.last_ping = time.monotonic()
        # Placement with several relays (relay/placement): upstreams attached for visitors that
        # came here directly / forwarded by another relay, since the last heartbeat tick.
        self.named = False           # the agent named its tunnel on connecting (nginx could place it)
        self.direct = self.hops = 0
        self.misplaced_since: float | None = None
        self.moving = False          # asked to Move: its visitors in flight may finish
        # Control-channel backpressure: what the agent has not read yet stays below this.
        self.write_limit = relay.settings.relay_control_write_limit
        self.cut = False                          # dropped for not reading: write nothing more
        self.stalled_since: float | None = None   # writes above the high-water mark since then
        self._backlog: asyncio.Handle | None = None  # frames left for the next loop turn
        conn.on_write_pressure = self._write_pressure

    @property
    def live(self) -> LiveSession:
        return LiveSession(self.tunnel.id, self.tunnel.token, self.started_at, self.session_id, self.routed)

    # --- control channel ---
    # Backpressure, both ways.  While the transport holds more than its high-water mark
    # unsent (netio: Conn.pause_writing), the agent is not reading what we write: stop
    # reading it too, so its pings wait in its own socket (TCP flow control) instead of
    # being answered into a buffer here; read again once it drains.  An agent whose unsent
    # output passes relay_control_write_limit, or that stays above the mark for the
    # dead-peer timeout, is dropped.  And a burst that arrived in one read is handled
    # CONTROL_FRAMES_PER_TURN frames per loop turn (reading paused until it is worked off),
    # so one agent cannot hold the loop that serves every other tunnel.  Every Ping still
    # gets its own Pong, as the protocol says: a turn's Pongs go out as one write.
    def on_control_bytes(self, data: bytes) -> None:
        if data and self.control.state != p.CLOSED:
            self.control.last_seen = time.monotonic()  # any frame is proof of life
        if self._backlog is not None:  # reading is paused; bytes read before that join the queue
            self.control.decoder.feed(data, 0)
            return
        self._handle(data)

    def _handle(self, data: bytes = b"") -> None:
        self._backlog = None
        if self.closed or self.cut or self.control.state == p.CLOSED:
            return
        try:
            frames = self.control.decoder.feed(data, CONTROL_FRAMES_PER_TURN)
            messages = self.control.receive_messages(frames)
        except p.ProtocolError as e:
            log.warning("agent %s: %s", self.subdomain, e)
            self.end(p.Error(str(e)))
            return
        out = []
        for message in messages:
            if isinstance(message, p.Ping):
                out.append(self.control.send(p.Pong(message.seq)))
            elif isinstance(message, p.Error):
                log.info("agent %s reported: %s", self.subdomain, message.message[:200])
                self.conn.close()
        if out:
            self._write(b"".join(out))
        if len(frames) == CONTROL_FRAMES_PER_TURN and not self.cut and self.control.state != p.CLOSED:
            self.conn.pause()  # more may be waiting in the decoder: the next turn, after the others
            self._backlog = asyncio.get_running_loop().call_soon(self._handle)
        else:
            self._read_again()

    def send(self, message: p.Message) -> None:
        if not self.closed and not self.cut:
            try:
                data = self.control.send(message)
            except p.ProtocolError as e:
                log.error("relay bug: %s", e)
                return
            self._write(data)

    def _write(self, data: bytes) -> None:
        self.conn.write(data)
        unsent = self.conn.unsent()
        if unsent > self.write_limit:
            log.warning("agent %s: %d bytes of control output unsent (limit %d): it is not reading; "
                        "disconnecting it", self.subdomain, unsent, self.write_limit)
            self._drop()

    def _drop(self) -> None:
        """Cut a control channel the agent is not reading; on_closed frees the tunnel."""
        self.cut = True
        if self._backlog is not None:
            self._backlog.cancel()
            self._backlog = None
        self.conn.abort()  # close() would wait for the agent to read what it never will

    def _write_pressure(self, paused: bool) -> None:
        if paused:
            self.stalled_since = time.monotonic()
            self.conn.pause()
        else:
            self.stalled_since = None
            self._read_again()

    def _read_again(self) -> None:
        if not self.closed and not self.cut and self._backlog is None and not self.conn.writing_paused:
            self.conn.resume()

    def heartbeat(self, now: float) -> None:
        """Called by the relay's single heartbeat timer."""
        self.expire_parked(now)
        if self.closed or self.cut:
            return
        if self.control.is_dead(now):
            if self.stalled_since is not None:  # we stopped reading it: it stopped reading us first
                log.info("agent %s: not reading its control channel (%d bytes unsent for %.0fs), "
                         "dropping it", self.subdomain, self.conn.unsent(), now - self.stalled_since)
                self._drop()
            else:
                log.info("agent %s: no heartbeat for %.0fs, dropping it", self.subdomain,
                         now - self.control.last_seen)
                self.conn.abort()
        elif self.stalled_since is None and now - self.last_ping >= self.relay.settings.relay_heartbeat_interval:
            self.last_ping = now
            self.send(self.control.next_ping())

    def end(self, final: p.Message | None = None) -> None:
        """Say why (GoAway/Revoked/Error) and close the control channel."""
        if final is not None:
            self.send(final)
        self.conn.close()

    def on_closed(self) -> None:
        """The control channel is gone: drop the pool and fail waiting visitors."""
        if self.closed:
            return
        self.closed = True
        while self.idle:
            self.idle.pop(0).close()
        while self.parked:
            self.parked.pop(0)[0].close()
        if not self.relay.stopping and not self.moving:  # a graceful stop or a move lets visitors finish
            # The agent is gone: its in-flight data connections would otherwise hang forever.
            for conn in list(self.active):
                conn.abort()
        while self.waiters:
            w = self.waiters.pop(0)
            if not w.done():
                w.set_result(None)
        self.relay.session_ended(self)

    # --- data connections ---
    def add_data(self, conn: Conn) -> None:
        while self.waiters:
            w = self.waiters.pop(0)
            if not w.done():
                w.set_result(conn)
                return
        if len(self.idle) >= p.MAX_POOL_SIZE:
            conn.close()
            return
        self.idle.append(conn)
        conn.on_close = self._forget_closed   # one bound method, not a closure per warm connection

    def _forget_closed(self) -> None:
        """A warm connection closed (Conn.closed is set before on_close runs): out of the pool."""
        self.idle = [conn for conn in self.idle if not conn.closed]

    async def acquire_data(self, timeout: float) -> Conn | None:
        while self.idle:
            conn = self.idle.pop(0)
            if not conn.closed and not conn.eof:
                conn.on_close = None
                self.active.add(conn)
                return conn
        if self.closed:
            return None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.send(p.OpenData(1))
        try:
            async with asyncio.timeout(timeout):
                conn = await waiter
        except TimeoutError:
            return None
        if conn is not None:
            conn.on_close = None
            self.active.add(conn)
        return conn

    # --- upstream keep-alive: reuse a finished visitor's data connection ---
    def park(self, conn: Conn) -> None:
        """Keep ``conn`` (idle: every response complete) for this tunnel's next visitor."""
        self.active.discard(conn)
        keep = self.relay.settings.relay_upstream_keepalive
        if self.closed or keep <= 0 or conn.closed or conn.eof or len(self.parked) >= p.MAX_POOL_SIZE:
            conn.close()
            return
        conn.on_data = lambda data: conn.close()  # the app spoke out of turn: not clean any more
        conn.on_eof = None                          # the app closed its side: let it close
        conn.on_close = lambda: self._unpark(conn)
        self.parked.append((conn, time.monotonic()))
        conn.resume()

    def take_parked(self) -> Conn | None:
        """The most recently parked live connection (the least likely to be closed by the app)."""
        oldest_ok = time.monotonic() - self.relay.settings.relay_upstream_keepalive
        while self.parked:
            conn, since = self.parked.pop()
            if conn.closed or conn.eof:
                continue
            if since < oldest_ok:  # the rest are older still
                conn.close()
                continue
            conn.on_data = conn.on_close = None
            self.active.add(conn)
            return conn
        return None

    def expire_parked(self, now: float) -> None:
        """Close parked connections before an app's own keep-alive timeout can race a visitor."""
        oldest_ok = now - self.relay.settings.relay_upstream_keepalive
        while self.parked and self.parked[0][1] < oldest_ok:
            self.parked.pop(0)[0].close()

    def _unpark(self, conn: Conn) -> None:
        for i, (c, _) in enumerate(self.parked):
            if c is conn:
                del self.parked[i]
                return
