"""The relay: one listening socket, dispatch by Host, agents, visitors, live state, shutdown.

Host = the main domain (any port): the relay's own endpoints (agent control
channel, data connections, health).  Host = ``<sub>.<domain>``: a visitor for
that tunnel; Host = an ``active`` custom domain of a tunnel (``custom_hosts``, reloaded
every relay_custom_domain_refresh seconds): a visitor for that tunnel.  Anything else: 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from ..wire import protocol as p
from ..wire.http1 import HttpError, parse_request_head
from ..wire.netio import Conn, ConnClosed
from ..logsafe import redact
from ..metrics import instrument_queries, new_registry
from . import pages
from .access import Checker
from .agents import AgentSession
from .revocations import Revocations
from .routes import Routes
from .store import Store
from .traffic import Traffic
from .link import Link, limits_for
from .metrics import RelayCollector, RelayStats
from .peers import Peers, read_secret
from .placement import Placement
from .tcp_listeners import FORWARD_PREFIX, TcpListeners
from ..errors import ConfigError, ValidationError
from .. import access as access_rules, session_access
from ..settings import relay_identity

log = logging.getLogger("intunnel.relay")
# Connections the kernel completes before the relay accepts them: after a restart under
# intunnel-relay.socket every agent's control channel waits there at once (1,000 agents: 1,000),
# and the socket keeps the last value a relay gave it (the kernel caps it at net.core.somaxconn).
ACCEPT_BACKLOG = 4096

SWITCHING = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + p.UPGRADE_TOKEN +
             "\r\nConnection: Upgrade\r\n\r\n").encode()


class Tunables:
    """The settings read for every visitor connection, as plain attributes (a ``Settings``
    lookup goes through ``__getattr__``: a few µs per new connection in all)."""

    __slots__ = ("relay_max_header_size", "relay_handshake_timeout", "relay_upstream_timeout",
                 "relay_upstream_keepalive", "relay_max_visitors_per_tunnel", "relay_trust_proxy",
                 "public_scheme")

    def __init__(self, settings):
        for name in self.__slots__:
            setattr(self, name, getattr(settings, name))


class Relay:
    def __init__(self, settings, store: Store | None = None, registry=None):
        self.settings = settings
        self.relay_id = relay_identity(settings)  # final once listening (the default names the port)
        self.tunables = Tunables(settings)
        # Metrics: counted in plain ints (relay/metrics.py), collected into ``registry`` at scrape time.
        self.stats = RelayStats()
        self.registry = registry if registry is not None else new_registry()
        self.registry.register(RelayCollector(self))
        self.limits = replace(limits_for(settings), stats=self.stats)
        self.domain = settings.domain.lower().rstrip(".")
        self.store = store or Store(settings)
        self.traffic = Traffic(self)      # the dashboard's traffic view: recent requests per tunnel (relay/traffic)
        self.access = Checker(settings)   # tunnels' access policies: verified credentials, hashing (relay/access)
        self.routes = Routes(self)   # PostgreSQL: route rows (relay/routes); SQLite: nothing
        # Forwarding to and from the other relays (relay/peers), only with relay_peer_listen.
        self.peers: Peers | None = Peers(self, read_secret(settings)) if settings.relay_peer_listen else None
        self.hop_limits = replace(self.limits, hop=True, trust_proxy=False)
        self.placement = Placement()   # several relays: agents where their visitors arrive (relay/placement)
        self.tcp = TcpListeners(self)  # TCP tunnels: a listener per reserved port (relay/tcp_listeners)
        self.sessions: dict[str, AgentSession] = {}      # subdomain -> live session
        self.custom_hosts: dict[str, str] = {}           # active custom hostname -> subdomain (intunnel.domains)
        self.by_secret: dict[str, AgentSession] = {}
        self.visitors: set[Link] = set()
        self.conns: set[Conn] = set()
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False

    # --- lifecycle ---
    async def start(self, sock=None) -> tuple[str, int]:
        await self.store.open()
        if getattr(self.store, "_db", None) is not None:
            instrument_queries(self.store._db, self.registry)
        self.loop = loop = asyncio.get_running_loop()
        await self.tcp.start()   # every reserved TCP port before the agent endpoint: agents find them listened
        visitor = lambda: self.make_conn(self._dispatch)  # noqa: E731
        if sock is not None:
            self.server = await loop.create_server(visitor, sock=sock, backlog=ACCEPT_BACKLOG)
        else:
            host, port = self.settings.relay_address
            self.server = await loop.create_server(visitor, host, port, backlog=ACCEPT_BACKLOG, reuse_address=True)
        self.address = self.server.sockets[0].getsockname()[:2]
        if self.settings.relay_address[1] == 0 or sock is not None:
            # Public URLs must name the port we really got.
            self.settings = self.settings.replace(relay_listen=f"{self.address[0]}:{self.address[1]}")
            self.tunables = Tunables(self.settings)
            self.limits = replace(limits_for(self.settings), stats=self.stats)
            self.hop_limits = replace(self.limits, hop=True, trust_proxy=False)
        self.relay_id = relay_identity(self.settings, self.address[1])
        if self.peers is not None:
            if not self.routes.enabled:
                raise ConfigError("setting 'relay_peer_listen': forwarding between relays needs PostgreSQL")
            await self.peers.start()
        await self.routes.start()
        self.spawn(self._heartbeats())
        self.spawn(self._reaper())
        if self.settings.custom_domains_per_tunnel > 0 and hasattr(self.store, "custom_routes"):
            self.custom_hosts = await self.store.custom_routes()
            self.spawn(self._custom_hosts())
        self.spawn(self.traffic.run())
        self.revocations = Revocations(self)  # pushed on PostgreSQL, polled on SQLite
        self.revocations.start()
        log.info("relay listening on http://%s:%d (tunnels at %s; relay id %s%s%s)", *self.address,
                 self.settings.tunnel_url("<subdomain>"), self.relay_id,
                 ", routes in PostgreSQL" if self.routes.enabled else "",
                 f", peers at {self.peers.dial_address}" if self.peers else "")
        return self.address

    async def stop(self, grace: float = p.SHUTDOWN_GRACE, reason: str = "the relay is stopping") -> None:
        """Stop accepting, tell agents to go away (``reason``: a caller that knows the relay comes
        back says "the relay is restarting"), give visitors ``grace`` seconds, close."""
        if self.stopping:
            return
        self.stopping = True
        if self.server is not None:
            self.server.close()
        self.tcp.close()
        if self.peers is not None:
            self.peers.close()
        sessions = list(self.sessions.values())
        for session in sessions:
            session.end(p.GoAway(reason))
            session.on_closed()
        if self.routes.enabled:
            try:
                await self.routes.stop()   # this relay's routes and relay row go
            except Exception:
                log.exception("could not delete this relay's routes (their leases will expire)")
        else:   # together: the store writes them in one transaction
            await asyncio.gather(*(self.store.set_status(session.tunnel.id, False) for session in sessions))
        deadline = time.monotonic() + grace
        while self.visitors and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.traffic.flush()   # what the last second recorded
        except Exception:
            log.exception("could not write the traffic view's last entries")
        await self.store.close()
        self.access.close()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def make_conn(self, dispatch) -> Conn:
        """A connection whose first request head goes to ``dispatch(conn, raw head)``."""
        conn = Conn()
        conn.registry = self.conns  # Conn leaves it by itself when closed, whoever owns on_close
        conn.on_made = lambda: self.accept_heads(conn, dispatch)
        return conn

    def accept_heads(self, conn: Conn, dispatch) -> None:
        """Wait for the next request head with callbacks, not a task: a new connection per
        request is the relay's most expensive case, and most of them are served without awaiting."""
        self.conns.add(conn)
        timer = self.loop.call_later(self.tunables.relay_handshake_timeout, conn.abort)
        conn.on_close = timer.cancel
        conn.on_data = lambda data: self._head_bytes(conn, timer, data, dispatch)
        if conn.buffer:   # what came right behind a peer's opening request
            data = bytes(conn.buffer)
            conn.buffer.clear()
            self._head_bytes(conn, timer, data, dispatch)

    # --- dispatch ---
    def subdomain_of(self, host: str) -> str | None:
        suffix = "." + self.domain
        if host.endswith(suffix):
            label = host[: -len(suffix)]
            if label and "." not in label:
                return label
        return None

    def tunnel_label(self, host: str) -> str | None:
        """The subdomain of the tunnel ``host`` names: ``<sub>.<domain>``, or an active custom domain."""
        label = self.subdomain_of(host)
        return label if label is not None else self.custom_hosts.get(host)

    def _head_bytes(self, conn: Conn, timer: asyncio.TimerHandle, data: bytes, dispatch) -> None:
        buf = conn.buffer
        start = max(0, len(buf) - 3)
        buf += data
        if buf[:1] == b"\x16":   # a TLS hello on this plain-HTTP port (an https:// client URL): at once,
            timer.cancel()       # not after the head timeout (the client then asks in plain HTTP)
            conn.on_close = conn.on_data = None
            self._refuse(conn, pages.response(400, "This port speaks plain HTTP, not TLS: use http://."))
            return
        limit = self.tunables.relay_max_header_size
        end = buf.find(b"\r\n\r\n", start)
        if end < 0 and len(buf) <= limit:
            return
        timer.cancel()
        conn.on_close = conn.on_data = None  # back to buffering: what follows the head waits there
        if end < 0 or end + 4 > limit:
            self._refuse(conn, pages.response(431, "Request head too large."))
            return
        raw = bytes(buf[:end])
        del buf[:end + 4]
        try:
            dispatch(conn, raw)
        except Exception:  # never let one connection take the relay down
            log.exception("connection from %s: dispatch failed", conn.peername)
            conn.abort()

    def _dispatch(self, conn: Conn, raw: bytes, hop: bool = False) -> None:
        try:
            head = parse_request_head(raw)
        except HttpError as e:
            self._refuse(conn, pages.response(e.status, e.message))
            return
        head.size = len(raw) + 4
        host = head.host
        if host == self.domain and not hop:
            if head.method == "GET" and head.target.split("?", 1)[0] == p.DATA_PATH:
                self._data(conn, head)   # an agent's pool connection (eight per agent): no task for it
            else:
                self.spawn(self._relay_endpoint(conn, head))
            return
        conn.meter = self.stats   # a visitor: its bytes are counted from here on (and its head)
        self.stats.rx += head.size + len(conn.buffer)
        if self.tunnel_label(host) is not None:
            rest = bytes(conn.buffer)
            conn.buffer.clear()
            Link(self, conn, head, rest, hop)
        else:
            self._refuse(conn, pages.unknown_tunnel(host, head.get("accept"), head.method == "HEAD"))

    def dispatch_forwarded(self, conn: Conn, raw: bytes) -> None:
        """A visitor's request forwarded by a peer relay (relay/peers): tunnels only, never on."""
        if raw.startswith(FORWARD_PREFIX):   # a TCP tunnel's visitor (relay/tcp_listeners)
            self.tcp.forwarded(conn, raw)
            return
        self._dispatch(conn, raw, hop=True)

    def _refuse(self, conn: Conn, page: pages.Page) -> None:
        self.stats.refused(page)
        self._reply(conn, page)

    def _reply(self, conn: Conn, data: bytes) -> None:
        conn.write(data)
        conn.close()

    async def _relay_endpoint(self, conn: Conn, head) -> None:
        path = head.target.split("?", 1)[0]
        if path == p.HEALTH_PATH and head.method in ("GET", "HEAD"):
            self._reply(conn, pages.json_response(200, {"status": "ok", "agents": len(self.sessions)}))
        elif path == p.AGENT_PATH and head.method == "GET":
            await self._agent(conn, head)
        elif path.startswith("/api/") or path == "/device":
            # `intunnel login --server <this relay's URL>` (what `intunnel http --server` takes): say
            # where the web app is, the way the web app tells a client on its port where the relay is.
            self._reply(conn, pages.json_response(421, {
                "error": True, "code": "NOT_THE_WEB_APP", "web_url": self.settings.web_url,
                "message": f"this is the InTunnel relay, not the web app; the web app is at {self.settings.web_url}"}))
        else:
            self._reply(conn, pages.response(404, "Not found. The relay serves tunnels at "
                                             f"<name>.{self.domain}; the web app is elsewhere.",
                                             head.get("accept")))

    def _error(self, conn: Conn, status: int, message: str, code: str) -> None:
        self._reply(conn, pages.response(status, message, "application/json", code=code))

    async def _agent(self, conn: Conn, head) -> None:
        if (head.get("upgrade") or "").lower() != p.UPGRADE_TOKEN:
            self._error(conn, 400, "expected Upgrade: intunnel", "BAD_REQUEST")
            return
        if self.stopping:
            self._error(conn, 503, "the relay is stopping", "GOING_AWAY")
            return
        auth = head.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            self._error(conn, 401, "missing tunnel token", "UNAUTHORIZED")
            return
        if len(self.sessions) >= self.settings.relay_max_agents:
            self._error(conn, 503, "the relay has too many connected agents", "TOO_MANY_AGENTS")
            return
        authenticated_at = time.monotonic()
        tunnel = await self.store.find_by_token(token)
        if tunnel is None:
            log.info("agent from %s refused: unknown token %s", conn.peername, redact(token))
            self._error(conn, 401, "invalid or revoked tunnel token", "UNAUTHORIZED")
            return
        if tunnel.owner_disabled:
            log.info("agent for %s refused: the owner's account is disabled", tunnel.subdomain)
            self._error(conn, 403, "the account that owns this tunnel is disabled", p.REVOKED_DISABLED)
            return
        conn.write(SWITCHING)
        control = p.ControlSession(p.RELAY, time.monotonic(), self.settings.relay_dead_peer_timeout)
        try:
            async with asyncio.timeout(self.settings.relay_handshake_timeout):
                data = await conn.read_messages(control.decoder, limit=1)
            hello = control.receive_messages(data)[0]
            if not isinstance(hello, p.Hello):
                raise p.ProtocolError("expected hello")
        except (asyncio.TimeoutError, ConnClosed, p.ProtocolError) as e:
            log.info("agent for %s failed its handshake: %s", tunnel.subdomain, e)
            conn.abort()
            return
        try:   # the session's own rules (client --basic-auth/--allow-ip/--deny-ip): only narrow
            narrow = session_access.parse(hello.access, access_rules.limits_of(self.settings))
        except ValidationError as e:   # its message names the field, never a password
            log.info("agent for %s refused: its session access rules are invalid (%s)", tunnel.subdomain, e.message)
            conn.write(control.send(p.Error(f"the relay refused this session's access rules: {e.message}",
                                             p.ACCESS_INVALID)))
            conn.close()
            return
        # What the Welcome announces (the client checks it is the kind of tunnel it serves).
        url = self.settings.tcp_url(tunnel.remote_port) if tunnel.remote_port else self.settings.tunnel_url(tunnel.subdomain)
        if self.peers is not None and self.placement.bounce(head, tunnel.subdomain, time.monotonic()):
            # Its session named no tunnel, so nginx placed it by the main domain, not with its
            # visitors: welcome it (it learns its subdomain), have it reconnect naming it.
            log.info("tunnel %s: the agent named no tunnel; asking it to reconnect naming it, to be "
                     "placed with its visitors", tunnel.subdomain)
            conn.write(control.send(p.Welcome(url=url, subdomain=tunnel.subdomain, session="",
                                              heartbeat_interval=self.settings.relay_heartbeat_interval,
                                              dead_peer_timeout=self.settings.relay_dead_peer_timeout,
                                              pool_size=0,
                                              access=session_access.summary(session_access.view(narrow)),
                                              local_port=tunnel.local_port)))
            conn.write(control.send(p.GoAway("reconnecting to be placed with this tunnel's visitors")))
            conn.close()
            return
        session = AgentSession(self, conn, tunnel, hello, control, narrow)
        session.named = bool(head.get(p.PLACEMENT_HEADER))
        old = self.sessions.get(tunnel.subdomain)
        if old is not None:
            log.info("tunnel %s: a new agent connected with the same token; closing the old one",
                     tunnel.subdomain)
            old.end(p.Revoked("replaced: another client connected with this tunnel's token",
                              p.REVOKED_REPLACED))
            old.on_closed()
        self.sessions[tunnel.subdomain] = session
        self.by_secret[session.secret] = session
        self.revocations.joined(session, authenticated_at)
        conn.on_close = session.on_closed
        self.tcp.joined(session)
        session.send(p.Welcome(url=url, subdomain=tunnel.subdomain,
                               session=session.secret,
                               heartbeat_interval=self.settings.relay_heartbeat_interval,
                               dead_peer_timeout=self.settings.relay_dead_peer_timeout,
                               pool_size=self.settings.relay_agent_pool,
                               access=session_access.summary(session_access.view(narrow)),
                               local_port=tunnel.local_port))  # a client given no PORT forwards there
        log.info("tunnel %s: agent connected from %s (token %s)", tunnel.subdomain, conn.peername,
                 redact(token))
        conn.forward_to(session.on_control_bytes)
        session.on_control_bytes(b"")  # frames that came right behind the hello
        if self.routes.enabled:
            await self.routes.claim(session)  # a session that ended meanwhile: its release is queued behind
            return
        await self.store.set_status(tunnel.id, True, session.narrowed)
        if session.closed and self.sessions.get(tunnel.subdomain) is None:
            await self.store.set_status(tunnel.id, False)

    def _data(self, conn: Conn, head) -> None:
        session = self.by_secret.get(head.get(p.SESSION_HEADER) or "")
        if session is None or session.closed or (head.get("upgrade") or "").lower() != p.UPGRADE_TOKEN:
            self._error(conn, 401, "unknown session", "UNAUTHORIZED")
            return
        conn.write(SWITCHING)
        session.add_data(conn)

    def session_ended(self, session: AgentSession) -> None:
        self.by_secret.pop(session.secret, None)
        if self.sessions.get(session.subdomain) is session:
            del self.sessions[session.subdomain]
            log.info("tunnel %s: agent disconnected", session.subdomain)
            if not self.stopping:
                self.spawn(self._mark_inactive(session))

    async def _mark_inactive(self, session: AgentSession) -> None:
        try:
            if self.routes.enabled:
                await self.routes.release(session, mark_inactive=session.subdomain not in self.sessions)
            elif session.subdomain not in self.sessions:
                await self.store.set_status(session.tunnel.id, False)
        except Exception:
            log.exception("could not record tunnel %s as inactive", session.subdomain)

    # --- timers ---
    async def _reaper(self) -> None:
        """Ephemeral tunnels whose client was killed (intunnel.ephemeral): a few checks per grace period."""
        grace = self.settings.relay_ephemeral_grace
        while True:
            await asyncio.sleep(min(10.0, max(0.2, grace / 4)))
            try:
                gone = await self.store.reap()
            except Exception:
                log.exception("could not delete abandoned ephemeral tunnels (will try again)")
                continue
            if gone:
                log.info("deleted %d ephemeral tunnel(s) whose client left without deleting them", gone)

    async def _custom_hosts(self) -> None:
        """Reload the active custom hostnames: one removed or failed stops routing within a period."""
        failing = False
        while True:
            await asyncio.sleep(self.settings.relay_custom_domain_refresh)
            try:
                routes = await self.store.custom_routes()
                failing = False
            except Exception:
                if not failing:   # once per outage, not every period
                    log.exception("could not reload the custom domains (keeping the last known)")
                failing = True
                continue
            gone = {host for host, label in self.custom_hosts.items() if routes.get(host) != label}
            self.custom_hosts = routes
            if gone:
                self._unroute(gone)

    def _unroute(self, hosts: set[str]) -> None:
        """Custom names that stopped routing (removed, failed, or given to another tunnel): their
        visitors' connections close, so a kept-alive one (nginx's pool) can't go on reaching the
        tunnel through the upstream still attached for that Host."""
        for link in list(self.visitors):
            if link.state.host in hosts and not link.done and not link.evict():
                link.conn.abort()   # mid-exchange: cut, as removing a name stops serving it

    async def _heartbeats(self) -> None:
        tick = min(1.0, self.settings.relay_heartbeat_interval / 2, self.settings.relay_dead_peer_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                session.heartbeat(now)
                if self.peers is not None:
                    self.placement.rebalance(session, now)
            if self.peers is not None:
                self.peers.sweep(now)
            self.routes.tick()

