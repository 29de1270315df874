"""One connected agent on the relay: its control channel and its pool of data connections."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from datetime import datetime, timezone

from ..wire import protocol as p
from ..wire.netio import Conn
from .store import LiveSession, TunnelInfo

log = logging.getLogger("intunnel.relay")


class AgentSession:
    def __init__(self, relay, conn: Conn, tunnel: TunnelInfo, hello: p.Hello, control: p.ControlSession):
        self.relay = relay
        self.conn = conn
        self.tunnel = tunnel
        self.subdomain = tunnel.subdomain
        self.local_port = hello.local_port or tunnel.local_port
        self.host_header = hello.host_header
        self.control = control
        self.secret = secrets.token_urlsafe(24)
        self.started_at = datetime.now(timezone.utc).replace(tzinfo=None)
        self.idle: deque[Conn] = deque()
        self.active: set[Conn] = set()   # data connections carrying a visitor right now
        # Data connections a finished visitor left, still spliced to a keep-alive connection to
        # the local app at the agent: (conn, parked at), newest last (upstream keep-alive).
        self.parked: deque[tuple[Conn, float]] = deque()
        self.waiters: deque[asyncio.Future] = deque()
        self.visitors = 0                # slots held: one per attached Upstream (relay/upstream.py)
        self.holders: set = set()        # the Links holding them (a full tunnel evicts the idlest)
        self.closed = False
        self.last_ping = time.monotonic()

    @property
    def live(self) -> LiveSession:
        return LiveSession(self.tunnel.id, self.tunnel.token, self.started_at)

    # --- control channel ---
    def on_control_bytes(self, data: bytes) -> None:
        try:
            messages = self.control.receive_data(data, time.monotonic())
        except p.ProtocolError as e:
            log.warning("agent %s: %s", self.subdomain, e)
            self.end(p.Error(str(e)))
            return
        for message in messages:
            if isinstance(message, p.Ping):
                self.send(p.Pong(message.seq))
            elif isinstance(message, p.Error):
                log.info("agent %s reported: %s", self.subdomain, message.message[:200])
                self.conn.close()

    def send(self, message: p.Message) -> None:
        if not self.closed:
            try:
                self.conn.write(self.control.send(message))
            except p.ProtocolError as e:
                log.error("relay bug: %s", e)

    def heartbeat(self, now: float) -> None:
        """Called by the relay's single heartbeat timer."""
        self.expire_parked(now)
        if self.control.is_dead(now):
            log.info("agent %s: no heartbeat for %.0fs, dropping it", self.subdomain, now - self.control.last_seen)
            self.conn.abort()
        elif now - self.last_ping >= self.relay.settings.relay_heartbeat_interval:
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
            self.idle.popleft().close()
        while self.parked:
            self.parked.popleft()[0].close()
        if not self.relay.stopping:  # a graceful stop lets visitors finish first
            # The agent is gone: its in-flight data connections would otherwise hang forever.
            for conn in list(self.active):
                conn.abort()
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
        self.relay.session_ended(self)

    # --- data connections ---
    def add_data(self, conn: Conn) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        if len(self.idle) >= p.MAX_POOL_SIZE:
            conn.close()
            return
        self.idle.append(conn)
        conn.on_close = lambda: self._forget(conn)

    def _forget(self, conn: Conn) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def acquire_data(self, timeout: float) -> Conn | None:
        while self.idle:
            conn = self.idle.popleft()
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
            self.parked.popleft()[0].close()

    def _unpark(self, conn: Conn) -> None:
        for i, (c, _) in enumerate(self.parked):
            if c is conn:
                del self.parked[i]
                return
